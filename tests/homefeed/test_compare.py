"""`homefeed compare`: several models, one instance build, one table, one MLflow experiment."""

import csv
from datetime import date

import pytest
from typer.testing import CliRunner

from homefeed import compare, registry
from homefeed.cli import app


@pytest.fixture()
def cfg(base_config, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return base_config.with_overrides({"storage": {"root": str(tmp_path / "store")}})


def test_models_share_instances_and_test_days_and_land_in_one_table(cfg, raw_dir, tmp_path):
    out = tmp_path / "cmp"
    rows = compare.compare(str(raw_dir), ["lr", "none"], date(2026, 1, 9), out, cfg, seeds=2, paired_against=["none", "lr"])
    with (out / "comparison.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["model"] for r in table] == ["lr", "none"]
    for column in ("auc_repin", "auc_repin_lo", "auc_repin_hi", "hit3_repin", "hit3_hide", "logloss_click"):
        assert column in table[0]
    for r in rows:
        assert r["auc_repin_lo"] <= r["auc_repin"] <= r["auc_repin_hi"]
    # Every model is also paired against the no-sequence control on the same replicates.
    control, lr = table[1], table[0]
    assert float(control["d_auc_repin"]) == 0.0
    assert float(lr["d_auc_repin_lo"]) <= float(lr["d_auc_repin"]) <= float(lr["d_auc_repin_hi"])
    assert float(lr["d_auc_repin"]) == pytest.approx(float(lr["auc_repin"]) - float(control["auc_repin"]))
    assert "Paired difference against `none`" in (out / "comparison.md").read_text()
    # Paired against a second reference too: the same difference, the other way round.
    assert float(control["d_vs_lr_auc_repin"]) == pytest.approx(-float(lr["d_auc_repin"]))
    assert float(lr["d_vs_lr_auc_repin"]) == 0.0
    assert "Paired difference against `lr`" in (out / "comparison.md").read_text()
    assert "| lr |" in (out / "comparison.md").read_text()
    assert (out / "comparison.png").stat().st_size > 1000
    # HIT@3 says over how many requests; the neural model ran with two seeds, the baseline once.
    assert "n=" in (out / "comparison.md").read_text() and "hit3_requests_repin" in table[0]
    assert {"gauc_repin", "gauc_requests_repin", "d_gauc_repin"} <= set(table[0])  # the AUC within requests too
    with (out / "seeds.csv").open() as handle:
        seeds = list(csv.DictReader(handle))
    assert [(r["model"], r["seed"]) for r in seeds] == [("lr", "0"), ("none", "0"), ("none", "1")]
    assert seeds[1]["auc_repin"] != seeds[2]["auc_repin"]  # another seed, another model
    assert "## Across seeds" in (out / "comparison.md").read_text()
    # The test split is exactly the days from --test-from.
    from homefeed import storage

    assert storage.read_manifest(out / "instances")["config"]["test_days"] == 1
    tracking = cfg.with_overrides({"registry": {"experiment": "homefeed-compare"}})
    runs = registry.client(tracking).search_runs([registry.experiment_id(tracking)])
    # Issue 33: one parent run per comparison, each model's run nested under it, lasting its training
    # (before: flat runs of 0.07-0.55 s, logged after the fact).
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED" and parent[0].info.run_name == out.name
    assert sorted(r.data.params["train.model"] for r in children) == ["lr", "none"] and len(runs) == 3
    trained = {r["model"]: float(r["train_seconds"]) for r in table if "train_seconds" in r}
    for child in children:
        took = (child.info.end_time - child.info.start_time) / 1000
        assert parent[0].info.start_time <= child.info.start_time and child.info.end_time <= parent[0].info.end_time
        assert took >= trained.get(child.data.params["train.model"], 0) - 0.05  # train_seconds is rounded to 0.1


def test_bad_arguments_exit_2_naming_the_problem(raw_dir, tmp_path):
    runner = CliRunner()
    args = ["compare", "--raw", str(raw_dir), "--out", str(tmp_path / "x")]
    unknown = runner.invoke(app, [*args, "--models", "lr,deepfm", "--test-from", "2026-01-09"])
    assert unknown.exit_code == 2 and "deepfm" in unknown.output
    too_early = runner.invoke(app, [*args, "--models", "lr", "--test-from", "2026-01-06"])
    assert too_early.exit_code == 2 and "training days" in too_early.output
    bad_date = runner.invoke(app, [*args, "--models", "lr", "--test-from", "Jan 9"])
    assert bad_date.exit_code == 2
    bad_split = runner.invoke(app, [*args, "--models", "lr", "--test-from", "2026-01-09", "--split", "train"])
    assert bad_split.exit_code == 2 and "--split must be test or validation" in bad_split.output
    bad_sequence = runner.invoke(app, [*args, "--models", "lr", "--test-from", "2026-01-09", "--sequence-at", "day"])
    assert bad_sequence.exit_code == 2 and "--sequence-at must be one of impression, request" in bad_sequence.output
    absent = runner.invoke(app, [*args, "--models", "lr,none", "--test-from", "2026-01-09", "--paired-against", "gbdt"])
    assert absent.exit_code == 2 and "--paired-against ['gbdt'] must be among --models" in absent.output


def test_seed_spread_gives_mean_and_range():
    rows = {"none": [{"auc_repin": 0.70, "hit3_repin": 0.5}, {"auc_repin": 0.72, "hit3_repin": float("nan")}]}
    for head in ("click", "closeup", "hide"):
        for r in rows["none"]:
            r[f"auc_{head}"] = 0.6
    for r in rows["none"]:
        r["hit3_hide"], r["gauc_repin"] = 0.1, 0.55
    spread = compare.seed_spread(rows, 3)[0]
    assert spread["seeds"] == 2 and spread["auc_repin"] == pytest.approx(0.71)
    assert (spread["auc_repin_min"], spread["auc_repin_max"]) == (0.70, 0.72)
    assert spread["hit3_repin"] == 0.5  # a NaN seed (no counted request) is left out, not averaged in


def test_knobs_can_be_chosen_on_the_validation_day_without_touching_the_test_days(cfg, raw_dir, tmp_path):
    from homefeed import storage
    from homefeed.data import read_rows

    out = tmp_path / "tuning"
    rows = compare.compare(str(raw_dir), ["lr"], date(2026, 1, 9), out, cfg, split="validation")
    assert "scored on the validation split" in (out / "comparison.md").read_text()
    validation_requests = len(set(read_rows(out / "instances", "validation", ("request_id",)).column("request_id").to_pylist()))
    assert storage.read_manifest(out / "instances")["splits"]["validation"]["rows"] > 0 and validation_requests > 0
    assert rows[0]["auc_repin"] == rows[0]["auc_repin"]  # scored: a number, not NaN


def test_with_an_embedding_method_the_models_read_vectors_learned_before_the_validation_day(cfg, raw_dir, tmp_path):
    from homefeed import storage

    learned = cfg.with_overrides({"embeddings": {"method": "als", "min_engagements": 2, "dim": 8}})
    out = tmp_path / "learned"
    rows = compare.compare(str(raw_dir), ["lr"], date(2026, 1, 9), out, learned, split="validation")
    record = storage.read_manifest(out / "instances")["pin_embeddings"]
    assert record["method"] == "als" and record["end"] == "2026-01-07" and record["path"] == str(out / "pin_embeddings")
    assert rows[0]["auc_repin"] == rows[0]["auc_repin"]
