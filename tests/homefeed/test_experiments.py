"""Experiments as registry state: start, status, stop and promote on the readout; refusals change nothing."""

import json

import pytest

from homefeed import experiments, registry, storage
from tests.conftest import register_and_promote


@pytest.fixture(scope="module")
def cfg(base_config, tmp_path_factory):
    # Its own SQLite store under its own root (registry.tracking_uri: the config wins over the environment).
    root = tmp_path_factory.mktemp("experiments-root")
    return base_config.with_overrides({"storage": {"root": str(root)}, "registry": {"tracking_uri": f"sqlite:///{root}/mlflow.db"}})


@pytest.fixture(scope="module")
def registered(cfg, lr_model, instances_dir):
    """Champion v1 and a challenger v2 gated against it, registered once for the module."""
    from homefeed.data import read_instances

    champion = register_and_promote(cfg, lr_model, instances_dir)
    run = registry.start_run(cfg, "challenger")
    example = registry.input_example(read_instances(str(instances_dir), "test"))
    challenger = registry.log_and_register(cfg, run, str(lr_model), example, registry.gate_tags(champion),
                                           features=registry.serving_features(storage.read_manifest(instances_dir)))
    return champion, challenger


@pytest.fixture()
def versions(cfg, registered):
    """Each test starts with v1 champion, v2 challenger and no experiment running."""
    yield registered
    running = experiments.running(cfg)
    if running is not None:
        experiments.stop(cfg, running.name)
    if registry.alias_version(cfg, registry.CHAMPION) != registered[0]:
        registry.promote(cfg, registered[0], reason="test reset", force=True)


def _tags(cfg):
    return {k: v for k, v in registry.model_tags(cfg).items() if k.startswith("experiment.")}


def test_start_records_the_experiment_for_every_reader_and_audits_it(cfg, versions):
    champion, challenger = versions
    started = experiments.start(cfg, challenger, "exp-1", traffic=0.3, reason="v2 online", actor="tester")
    assert experiments.running(cfg) == started == experiments.get(cfg, "exp-1")
    assert (started.champion_version, started.challenger_version, started.traffic) == (champion, challenger, 0.3)
    assert started.holdout_salt == cfg.holdout.salt and started.salt != cfg.holdout.salt
    audit = registry.history(cfg)[-1]
    assert audit["event"] == "experiment_start" and audit["experiment"] == "exp-1" and audit["actor"] == "tester"
    assert experiments.status(cfg)["allocation"]["treatment"] == pytest.approx((1 - cfg.holdout.fraction) * 0.15)


@pytest.mark.parametrize("case", ["unknown version", "second experiment", "traffic 0", "traffic 1.5", "holdout differs"])
def test_bad_starts_are_refused_and_change_nothing(cfg, versions, lr_model, instances_dir, case):
    champion, challenger = versions
    if case == "second experiment":
        experiments.start(cfg, challenger, "first-of-two")
    if case == "holdout differs":
        other = cfg.with_overrides({"holdout": {"salt": "another-salt"}})
        run = registry.start_run(other, "other-holdout")
        from homefeed.data import read_instances

        challenger = registry.log_and_register(other, run, str(lr_model), registry.input_example(read_instances(str(instances_dir), "test")),
                                               {}, features=registry.serving_features(storage.read_manifest(instances_dir)))
    before = _tags(cfg)
    version = "99" if case == "unknown version" else challenger
    traffic = {"traffic 0": 0.0, "traffic 1.5": 1.5}.get(case, 0.2)
    with pytest.raises(experiments.ExperimentRefused) as refused:
        experiments.start(cfg, version, "exp-2", traffic=traffic)
    assert "\n" not in str(refused.value)
    expected = {"unknown version": "no version 99", "second experiment": "'first-of-two' is running", "traffic 0": "(0, 1]",
                "traffic 1.5": "(0, 1]", "holdout differs": "holdout configuration"}[case]
    assert expected in str(refused.value)
    assert _tags(cfg) == before


def test_an_aa_test_is_allowed(cfg, versions):
    champion, _ = versions
    assert experiments.start(cfg, champion, "aa-test").challenger_version == champion


def test_stop_with_promote_needs_a_promote_verdict_or_force_with_a_reason(cfg, versions):
    champion, challenger = versions
    experiments.start(cfg, challenger, "exp-3")
    with pytest.raises(experiments.ExperimentRefused, match="no readout yet"):
        experiments.stop(cfg, "exp-3", promote=True)
    out = experiments.readout_dir(cfg, "exp-3")
    out.mkdir(parents=True)
    (out / "readout.json").write_text(json.dumps({"end": "x", "decision": {"verdict": "continue", "promote": False, "reasons": ["too few users"]}}))
    with pytest.raises(experiments.ExperimentRefused, match="says 'continue': too few users"):
        experiments.stop(cfg, "exp-3", promote=True)
    with pytest.raises(experiments.ExperimentRefused, match="needs --reason"):
        experiments.stop(cfg, "exp-3", promote=True, force=True)
    assert experiments.running(cfg).name == "exp-3" and registry.alias_version(cfg, registry.CHAMPION) == champion
    (out / "readout.json").write_text(json.dumps({"end": "x", "decision": {"verdict": "promote", "promote": True, "reasons": ["wins"]}}))
    result = experiments.stop(cfg, "exp-3", promote=True)
    assert result["promotion"]["version"] == challenger and registry.alias_version(cfg, registry.CHAMPION) == challenger
    assert experiments.running(cfg) is None and experiments.get(cfg, "exp-3").outcome == "promoted"
    assert [r["event"] for r in registry.history(cfg)][-3:] == ["experiment_start", "promote", "experiment_stop"]


def test_a_plain_stop_leaves_the_champion_and_an_unknown_name_is_one_clear_error(cfg, versions):
    champion, challenger = versions
    experiments.start(cfg, challenger, "exp-4")
    assert experiments.stop(cfg, "exp-4")["promotion"] is None
    assert registry.alias_version(cfg, registry.CHAMPION) == champion and experiments.running(cfg) is None
    with pytest.raises(experiments.ExperimentRefused, match="not running"):
        experiments.stop(cfg, "exp-4")
    with pytest.raises(experiments.UnknownExperiment, match="known: .*exp-4"):
        experiments.get(cfg, "nope")
