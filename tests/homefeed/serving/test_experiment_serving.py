"""The service during an online experiment: arms, the challenger beside the champion, the exposure log."""

import pytest
from fastapi.testclient import TestClient

from homefeed import arms, experiments, registry, storage
from homefeed.data import read_instances
from homefeed.event_log import read_served
from homefeed.serving.app import create_app
from homefeed.serving.service import RankingService
from tests.conftest import register_and_promote


@pytest.fixture(scope="module")
def cfg(base_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment-serving-root")
    return base_config.with_overrides({"storage": {"root": str(root)}, "holdout": {"fraction": 0.2},
                                       "serving": {"reload_poll_s": 0, "max_candidates": 50}})


@pytest.fixture(scope="module")
def versions(cfg, lr_model, instances_dir):
    """Champion v1, and v2: the same model serving its ranking utility reversed (so the arms differ visibly)."""
    champion = register_and_promote(cfg, lr_model, instances_dir)
    reverse = cfg.with_overrides({"ranking": {"utility": {h: -w for h, w in cfg.ranking.utility.items()}}})
    challenger = registry.log_and_register(reverse, registry.start_run(cfg, "reversed"), str(lr_model),
                                           registry.input_example(read_instances(str(instances_dir), "test")), {},
                                           features=registry.serving_features(storage.read_manifest(instances_dir)))
    return champion, challenger


@pytest.fixture()
def experiment(cfg, versions):
    started = experiments.start(cfg, versions[1], f"serve-{len(registry.history(cfg))}", traffic=1.0)
    yield started
    if experiments.running(cfg) is not None:
        experiments.stop(cfg, started.name)


@pytest.fixture(scope="module")
def rank_body(instances_dir):
    rows = read_instances(str(instances_dir), "test").to_pylist()[:15]
    ts = max(r["ts"] for r in rows)
    return lambda user: {"user_id": user, "request_ts": ts,
                         "candidates": [{"pin_id": r["pin_id"], "ts": r["ts"] - 1000 * i, "source": r["source"]} for i, r in enumerate(rows)]}


def _users_by_arm(experiment, n=400):
    by_arm = {}
    for user in range(1, n):
        by_arm.setdefault(experiment.arm(user), []).append(user)
    return by_arm


def test_each_arm_is_ranked_by_its_model_and_every_answer_is_logged(cfg, versions, experiment, rank_body):
    champion, challenger = versions
    by_arm = _users_by_arm(experiment)
    with TestClient(create_app(cfg)) as client:
        answers = {arm: client.post("/rank", json=rank_body(users[0])).json() for arm, users in by_arm.items()}
        metrics = client.get("/metrics").text
        assert client.get("/ready").json()["experiment"]["challenger_loaded"] is True
    assert {arm: a["arm"] for arm, a in answers.items()} == {arm: arm for arm in answers} and "none" not in answers
    assert answers["treatment"]["model_version"] == challenger and answers["control"]["model_version"] == champion
    order = lambda a: [p["pin_id"] for p in a["ranked"]]  # noqa: E731
    assert order(answers["treatment"]) == order(answers["control"])[::-1] or order(answers["treatment"]) != order(answers["control"])
    assert 'homefeed_rank_arm_total{arm="treatment"} 1.0' in metrics and 'homefeed_experiment_running{challenger_loaded="true"} 1.0' in metrics
    served = read_served(cfg.storage.root + "/events").to_pandas().set_index("request_id")
    for arm, answer in answers.items():
        row = served.loc[answer["request_id"]]
        assert (row.arm, row.experiment, row.model_version) == (arm, experiment.name, answer["model_version"])
        assert list(row.pin_ids) == order(answer)


def test_arms_agree_across_replicas_and_restarts(cfg, experiment):
    replicas = [RankingService.from_registry(cfg) for _ in range(2)]
    users = range(1, 300)
    seen = [[service.arm(u) for u in users] for service in replicas]
    for service in replicas:
        service.close()
    restarted = RankingService.from_registry(cfg)
    assert seen[0] == seen[1] == [restarted.arm(u) for u in users] == [experiment.arm(u) for u in users]
    restarted.close()


def test_a_stopped_experiment_sends_everyone_back_to_the_champion_at_the_next_poll(cfg, versions, experiment):
    service = RankingService.from_registry(cfg)
    treated = _users_by_arm(experiment)["treatment"][0]
    assert service.arm(treated) == arms.TREATMENT
    experiments.stop(cfg, experiment.name)
    assert service.reload(cfg) is True  # what the alias poll calls
    assert service.arm(treated) == arms.NONE and service.experiment.experiment is None
    service.close()


def test_a_challenger_that_cannot_be_loaded_leaves_everyone_on_the_champion_counted(cfg, versions, experiment, rank_body, monkeypatch):
    load = registry.load_served_version

    def broken(cfg, version):
        if version == versions[1]:
            raise OSError(f"model files of v{version} are missing")
        return load(cfg, version)

    monkeypatch.setattr(registry, "load_served_version", broken)
    with TestClient(create_app(cfg)) as client:
        treated = _users_by_arm(experiment)["treatment"][0]
        answer = client.post("/rank", json=rank_body(treated)).json()
        ready, metrics = client.get("/ready").json(), client.get("/metrics").text
    assert answer["arm"] == "none" and answer["model_version"] == versions[0]
    assert ready["experiment"]["challenger_loaded"] is False and "model files of v2 are missing" in ready["experiment"]["error"]
    assert 'homefeed_experiment_running{challenger_loaded="false"} 1.0' in metrics
    assert "homefeed_experiment_challenger_load_failures 1.0" in metrics


def test_an_answer_the_exposure_log_cannot_record_is_a_503_counted(cfg, versions, rank_body):
    from homefeed.event_log import EventLogError

    class FullDisk:
        def append(self, *args):
            raise EventLogError("served log at /full: [Errno 28] No space left on device")

        def close(self):
            pass

    with TestClient(create_app(cfg)) as client:
        client.app.state.service.exposures = FullDisk()
        answer = client.post("/rank", json=rank_body(5))
        metrics = client.get("/metrics").text
    assert answer.status_code == 503 and "No space left" in answer.json()["detail"]
    assert "homefeed_exposure_log_errors_total 1.0" in metrics


def test_an_event_the_event_log_refuses_is_neither_acknowledged_nor_seen_by_the_model(cfg, versions):
    from homefeed.event_log import EventLogError

    class FullDisk:
        def append(self, *args):
            raise EventLogError("event log at /full: [Errno 28] No space left on device")

        def close(self):
            pass

    user, now = 44_444_444, 1_767_600_000_000
    with TestClient(create_app(cfg)) as client:
        service = client.app.state.service
        service.events = FullDisk()
        answer = client.post("/events", json={"user_id": user, "pin_id": 3, "action": "repin", "ts": now})
        metrics = client.get("/metrics").text
        assert service.store.history(user) is None  # before: in the store (the model used it), yet refused
    assert answer.status_code == 503 and 'homefeed_store_errors_total{operation="event_log"} 1.0' in metrics
