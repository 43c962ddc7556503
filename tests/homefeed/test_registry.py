"""Promotion, rollback, forced promotion and holdout refusal against a real MLflow server on SQLite."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from homefeed import registry
from homefeed.data import read_instances
from homefeed.processes import free_port


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    process = subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--default-artifact-root", (root / "artifacts").as_uri(),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield url
    os.killpg(process.pid, 15)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def trained_model(instances_dir, tmp_path_factory, base_config):
    from homefeed import train as trainer

    out = tmp_path_factory.mktemp("registry-model")
    return trainer.train(str(instances_dir), str(out), base_config.with_overrides({"train": {"model": "lr"}})).model_dir


@pytest.fixture()
def cfg(base_config, mlflow_server, monkeypatch, tmp_path, request):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return base_config.with_overrides({"storage": {"root": str(tmp_path)}, "registry": {"model_name": f"ranker-{request.node.name[:40]}"}})


def register(cfg, trained_model, instances_dir, gated: bool = True):
    """A version as the pipeline registers it: gated against today's champion (or created by hand)."""
    client = registry.client(cfg)
    run = client.create_run(registry.experiment_id(cfg))
    example = registry.input_example(read_instances(str(instances_dir), "test"))
    tags = {"gate": "test", **registry.gate_tags(registry.alias_version(cfg, registry.CHAMPION))} if gated else {}
    return registry.log_and_register(cfg, run.info.run_id, trained_model, example, tags)


def test_promote_then_rollback_moves_aliases_and_audits(cfg, trained_model, instances_dir):
    v1 = register(cfg, trained_model, instances_dir)
    assert registry.state(cfg).challenger == v1
    registry.promote(cfg, v1, reason="first")
    v2 = register(cfg, trained_model, instances_dir)
    registry.promote(cfg, v2, reason="better")
    state = registry.state(cfg)
    assert (state.champion, state.previous) == (v2, v1)
    assert state.holdout == {"holdout.fraction": str(cfg.holdout.fraction), "holdout.salt": cfg.holdout.salt}

    registry.rollback(cfg, reason="regression in prod")
    state = registry.state(cfg)
    assert (state.champion, state.previous) == (v1, v2)
    events = [(r["event"], r["version"], r["from_version"]) for r in registry.history(cfg)]
    assert events == [("promote", v1, None), ("promote", v2, v1), ("rollback", v1, v2)]
    tags = registry.client(cfg).get_model_version(cfg.registry.model_name, v1).tags
    assert tags["audit.rollback.reason"] == "regression in prod"


def test_champion_loads_and_scores_through_the_registry(cfg, trained_model, instances_dir):
    version = register(cfg, trained_model, instances_dir)
    registry.promote(cfg, version, reason="serve it")
    loaded_version, model = registry.load_model_for(cfg, registry.CHAMPION)
    scorer = model.scorer
    assert loaded_version == version
    test = read_instances(str(instances_dir), "test")
    assert scorer.predict(test).shape == (test.num_rows, 4)
    import mlflow.pyfunc

    frame = mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}@champion").predict(registry.input_example(test, rows=5))
    assert list(frame.columns) == ["p_repin", "p_click", "p_closeup", "p_hide", "score"]


def test_holdout_change_is_refused_unless_asked_for(cfg, trained_model, instances_dir):
    v1 = register(cfg, trained_model, instances_dir)
    registry.promote(cfg, v1, reason="first")
    other = cfg.with_overrides({"holdout": {"salt": "new-salt"}})
    v2 = register(other, trained_model, instances_dir)
    with pytest.raises(registry.PromotionRefused, match="holdout"):
        registry.promote(other, v2, reason="")
    assert registry.state(cfg).champion == v1
    record = registry.promote(other, v2, reason="new experiment population", change_holdout=True)
    assert record["holdout_changed"] and registry.state(cfg).champion == v2


def test_forced_promotion_needs_and_records_a_reason(cfg, trained_model, instances_dir):
    version = register(cfg, trained_model, instances_dir)
    with pytest.raises(registry.PromotionRefused, match="reason"):
        registry.promote(cfg, version, reason="", force=True)
    record = registry.promote(cfg, version, reason="hotfix", force=True)
    assert record["forced"] is True


def test_missing_version_and_empty_rollback_are_refused(cfg):
    with pytest.raises(registry.PromotionRefused, match="no version 99"):
        registry.promote(cfg, "99", reason="x")
    with pytest.raises(registry.PromotionRefused, match="previous"):
        registry.rollback(cfg, reason="nothing to roll back to")


def test_a_version_without_a_passed_gate_needs_force(cfg, trained_model, instances_dir):
    # Before: a version made directly in MLflow became champion without --force (issue 21, item 3).
    version = register(cfg, trained_model, instances_dir, gated=False)
    with pytest.raises(registry.PromotionRefused, match="no passed gate recorded.*--force"):
        registry.promote(cfg, version, reason="x")
    assert registry.state(cfg).champion is None
    assert registry.promote(cfg, version, reason="hand-made, reviewed", force=True)["forced"] is True


def test_a_verdict_against_a_replaced_champion_is_refused(cfg, trained_model, instances_dir):
    # Before: two runs gated against no champion; the second promoted over the first on that
    # stale verdict (issue 21, item 4). Compare-and-set: the gate's champion must still be champion.
    first, second = register(cfg, trained_model, instances_dir), register(cfg, trained_model, instances_dir)
    registry.promote(cfg, first, reason="run 1")
    with pytest.raises(registry.PromotionRefused, match=f"gated against no champion, but it is now v{first}: re-gate"):
        registry.promote(cfg, second, reason="run 2")
    assert registry.state(cfg).champion == first
    third = register(cfg, trained_model, instances_dir)  # gated against the champion of now
    registry.promote(cfg, third, reason="run 3")
    assert registry.state(cfg).champion == third


def test_an_unwritable_audit_log_changes_nothing(cfg, trained_model, instances_dir):
    # Before: promote raised FileExistsError after the aliases had moved (issue 21, item 2).
    from pathlib import Path

    first = register(cfg, trained_model, instances_dir)
    registry.promote(cfg, first, reason="first")
    second = register(cfg, trained_model, instances_dir)
    audit = Path(cfg.storage.root) / registry.AUDIT_LOG
    audit.unlink()
    audit.parent.rmdir()
    audit.parent.write_text("a file where the audit directory should be")
    with pytest.raises(registry.PromotionRefused, match="audit log .* cannot be written.*nothing was changed"):
        registry.promote(cfg, second, reason="second")
    state = registry.state(cfg)
    assert (state.champion, state.previous) == (first, None)
    assert not any(k.startswith("audit.") for k in registry.client(cfg).get_model_version(cfg.registry.model_name, second).tags)
    with pytest.raises(registry.PromotionRefused, match="cannot be written"):
        registry.rollback(cfg, reason="x")


@pytest.mark.parametrize("command", [["registry", "show"], ["promote", "--version", "1", "--reason", "x"], ["rollback"], ["serve"]])
def test_an_unreachable_mlflow_is_one_clear_error_within_seconds(command, monkeypatch, tmp_path):
    # Before: 264-782 s of retries, then exit 0 with "champion: null", a traceback, or "no
    # champion" / "no previous version" (wrong causes) (issue 21, item 1).
    from typer.testing import CliRunner

    from homefeed.cli import app

    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HOMEFEED__STORAGE__ROOT", str(tmp_path))
    started = time.monotonic()
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert f"MLflow at http://127.0.0.1:{port} is unreachable" in result.output
    assert "champion" not in result.output and "previous" not in result.output
    assert time.monotonic() - started < 30


def test_processes_opening_a_fresh_sqlite_store_at_once_all_succeed(tmp_path):
    """Before: one of two `homefeed train` on a fresh store crashed in MLflow's table creation."""
    probe = ("import sys\nfrom homefeed import registry\nfrom homefeed.config import load_config\n"
             "cfg = load_config(environ={}, overrides={'storage': {'root': sys.argv[1]}})\n"
             "print(registry.experiment_id(cfg))\n")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    for attempt in range(2):
        root = tmp_path / f"fresh-{attempt}"
        processes = [subprocess.Popen([sys.executable, "-c", probe, str(root)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(3)]
        results = [(p.wait(timeout=180), p.stdout.read(), p.stderr.read()) for p in processes]
        assert [code for code, _, _ in results] == [0, 0, 0], [err[-500:] for _, _, err in results]
        assert len({out.strip() for _, out, _ in results}) == 1  # one experiment, not one each


def test_a_version_whose_model_files_are_gone_is_refused_and_fails_to_load_in_one_line(cfg, trained_model, instances_dir):
    import shutil
    from urllib.parse import urlparse

    version = register(cfg, trained_model, instances_dir)
    location = registry.client(cfg).get_model_version_download_uri(cfg.registry.model_name, version)
    shutil.rmtree(urlparse(location).path)
    with pytest.raises(registry.PromotionRefused, match="model cannot be loaded: no MLmodel under"):
        registry.promote(cfg, version, reason="files gone", force=True)
    assert registry.alias_version(cfg, registry.CHAMPION) is None
    with pytest.raises(registry.NoServableModel, match=f"v{version}: its model cannot be loaded") as failed:
        registry.load_served_version(cfg, version)
    assert "\n" not in str(failed.value)


def test_the_challenger_never_trails_a_champion_promoted_by_hand(cfg, trained_model, instances_dir):
    v1 = register(cfg, trained_model, instances_dir)
    registry.promote(cfg, v1, reason="first")
    v2 = register(cfg, trained_model, instances_dir)
    v3 = register(cfg, trained_model, instances_dir, gated=False)
    registry.stage_challenger(cfg, v2, reason="compare v2")
    registry.promote(cfg, v3, reason="hand-made fix", force=True)
    assert (registry.alias_version(cfg, registry.CHAMPION), registry.alias_version(cfg, registry.CHALLENGER)) == (v3, v3)
    registry.rollback(cfg, reason="back")
    assert registry.alias_version(cfg, registry.CHALLENGER) == v3  # the newest candidate is still v3


def test_the_printed_mlflow_ui_lands_a_fresh_browser_on_the_runs_table_without_the_job_runner(base_config, tmp_path, browser_page):
    """Before: MLflow 3.17 opened the experiment on its GenAI overview (traces, tokens, cost), and
    the printed `mlflow ui` started MLflow's GenAI job runner too (issue 33, item 2)."""
    from homefeed.processes import descendants, stop_tree

    cfg = base_config.with_overrides({"storage": {"root": str(tmp_path)}})
    run_id = registry.start_run(cfg, "run-first")
    registry.log_metrics(cfg, run_id, {"test_auc_repin": 0.7123, f"test_hit{cfg.evaluation.hit_k}_repin": 0.4})
    registry.end_run(cfg, run_id)
    port = free_port()
    command, env, page = registry.ui_command(cfg, port)
    command[0] = str(Path(sys.executable).with_name("mlflow"))  # .venv/bin/mlflow, as printed from the repository root
    server = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(0.5)
        processes = len(descendants(server.pid))
        text, outside = browser_page(page, "test_auc_repin", tmp_path / "mlflow.png")
    finally:
        stop_tree(server.pid)
    assert "run-first" in text and "0.7123" in text and "Token Usage" not in text
    assert outside == [], outside  # nothing asked beyond the machine
    assert processes <= 3, f"{processes} processes under `mlflow ui`: the job runner started"


def test_a_version_trained_on_learned_pin_vectors_carries_them_and_one_on_content_vectors_does_not(cfg, trained_model, instances_dir, tmp_path):
    import numpy as np

    from homefeed import embeddings, storage

    with storage.publish_dataset(tmp_path / "emb") as staging:
        embeddings.write(staging, [5, 7], [np.ones(4), np.zeros(4)], ["learned", "content"],
                         {"method": "als", "window": {"end": "2026-01-07"}, "projection": np.ones((17, 4)).tolist()})
    client = registry.client(cfg)
    example = registry.input_example(read_instances(str(instances_dir), "test"))
    content = registry.serving_features(storage.read_manifest(instances_dir))
    assert content["pin_embeddings"] == {"method": "none"}
    plain = registry.log_and_register(cfg, client.create_run(registry.experiment_id(cfg)).info.run_id, trained_model, example, {},
                                      features=content)
    learned_features = {**content, "pin_embeddings": {"method": "als", "path": str(tmp_path / "emb"), "end": "2026-01-07"}}
    learned = registry.log_and_register(cfg, client.create_run(registry.experiment_id(cfg)).info.run_id, trained_model, example, {},
                                        features=learned_features)
    shutil.rmtree(tmp_path / "emb")
    assert registry.load_served_version(cfg, plain).pin_vectors is None
    served = registry.load_served_version(cfg, learned).pin_vectors  # from the model's own artifacts, not the run's directory
    assert served.ids.tolist() == [5, 7] and served.vectors[0].tolist() == [1, 1, 1, 1] and served.end.isoformat() == "2026-01-07"
    assert embeddings.PinVectors.read(served.directory).ids.tolist() == [5, 7]  # what the monitor's instance job reads
