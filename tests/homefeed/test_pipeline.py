"""The pipeline is defined once (homefeed.pipeline.STAGES) and its runner records every stage:
what runs it follows that list, and a new stage is one function and one entry."""

import dataclasses
import json
from datetime import date

import pytest

from homefeed import pipeline


def _fake_result(step, gate_passes):
    """A typed result of ``step``'s type, each field a placeholder of its kind."""
    if step.result is pipeline.Gated:
        return pipeline.Gated(gate_passes, "gate says no" if not gate_passes else "gate passed")
    placeholders = {str: "x", int: 1, float: 1.0, bool: True, dict: {}, list: []}
    values = {}
    for f in dataclasses.fields(step.result):
        kind = next((k for k in placeholders if str(f.type).startswith(k.__name__)), str)
        values[f.name] = placeholders[kind]
    return step.result(**values)


def _fake_stages(monkeypatch, calls, gate_passes=True, failing=None):
    def fake(step):
        def run(ctx):
            calls.append(step.name)
            if step.name == failing:
                raise RuntimeError(f"{step.name} broke")
            return _fake_result(step, gate_passes)
        return dataclasses.replace(step, run=run, figure=lambda result: "fake")

    monkeypatch.setattr(pipeline, "STAGES", tuple(fake(s) for s in pipeline.STAGES))
    monkeypatch.setattr(pipeline, "REPORT", fake(pipeline.REPORT))


def test_retrain_in_process_runs_the_stage_list_in_order_then_the_report(monkeypatch, tmp_path, base_config):
    calls = []
    _fake_stages(monkeypatch, calls)
    decision = pipeline.retrain_in_process(base_config, "raw", tmp_path, date(2026, 1, 1), date(2026, 1, 5))
    assert calls == [*pipeline.STAGE_NAMES, "report"] and decision.passed
    # The runner, not the stages, wrote each record and its timings, under the stage's one name.
    for name in calls:
        assert (tmp_path / f"{name}.json").exists() and (tmp_path / pipeline.TIMINGS_DIR / f"{name}.json").exists()
    assert pipeline.recorded(tmp_path, pipeline.Gated) == decision


def test_a_failed_gate_stops_the_run_and_a_failed_stage_is_recorded_and_reported(monkeypatch, tmp_path, base_config):
    calls = []
    _fake_stages(monkeypatch, calls, gate_passes=False)
    assert not pipeline.retrain_in_process(base_config, "raw", tmp_path / "gated", date(2026, 1, 1), date(2026, 1, 5)).passed
    assert calls == [*pipeline.STAGE_NAMES[: pipeline.STAGE_NAMES.index("gate") + 1], "report"]

    calls.clear()
    _fake_stages(monkeypatch, calls, failing="build_instances")
    with pytest.raises(RuntimeError, match="build_instances broke"):
        pipeline.retrain_in_process(base_config, "raw", tmp_path / "failed", date(2026, 1, 1), date(2026, 1, 5))
    assert calls == ["check_raw", "validate_raw", "embed_pins", "build_instances", "report"]
    failure = json.loads((tmp_path / "failed" / "build_instances.failed.json").read_text())
    assert failure == {"stage": "build_instances", "error": "build_instances broke", "type": "RuntimeError"}
    assert (tmp_path / "failed" / pipeline.TIMINGS_DIR / "build_instances.json").exists()
    assert not (tmp_path / "failed" / "build_instances.json").exists()


def test_a_stage_run_once_returns_its_record_without_running_again(tmp_path, base_config):
    runs = []
    step = pipeline.Stage("register", lambda ctx: runs.append(1) or pipeline.Registered(str(len(runs)), "ranker"),
                          pipeline.Registered, ("gate.json",), ("register.json",), once=True)
    ctx = pipeline.RunContext(base_config, tmp_path, stages=(step,))
    assert pipeline.run_stage(step, ctx).version == "1"
    assert pipeline.run_stage(step, ctx).version == "1" and runs == [1]


def test_an_earlier_result_that_is_missing_is_refused_by_name(tmp_path, base_config):
    from homefeed import storage

    with pytest.raises(storage.StorageError, match="stage 'train' has no result"):
        pipeline.RunContext(base_config, tmp_path).earlier(pipeline.Trained)


def test_every_stage_says_what_it_reads_and_writes_and_returns_its_own_type():
    steps = (*pipeline.STAGES, pipeline.REPORT)
    for step in steps:
        assert step.reads and step.writes, step.name
        assert pipeline.stage(step.name) is step
        assert step.run.__name__ == step.name  # one spelling: the function, the task, the record
    assert len({s.result for s in steps}) == len(steps)  # earlier results are found by their type


# --------------------------------------------------------------------------- adding a stage (docs/architecture.md)
@dataclasses.dataclass(frozen=True)
class RowsCounted(pipeline.StageResult):
    rows: int


def count_rows(ctx: pipeline.RunContext) -> RowsCounted:
    return RowsCounted(ctx.earlier(pipeline.InstancesBuilt).rows)


def test_a_new_stage_is_one_function_and_one_entry(monkeypatch, tmp_path, base_config):
    """The worked example of docs/architecture.md: the runner records the new stage, a later
    stage reads its typed result, and the report lists it, with nothing else written for it."""
    calls = []
    _fake_stages(monkeypatch, calls)
    stages = list(pipeline.STAGES)
    built = pipeline.STAGE_NAMES.index("build_instances")
    stages[built] = dataclasses.replace(stages[built], run=lambda ctx: pipeline.InstancesBuilt("instances/", 1234, {}, {}))
    new = pipeline.Stage("count_rows", count_rows, RowsCounted, ("build_instances.json",), ("count_rows.json",),
                         figure=lambda r: f"{r.rows:,} rows")
    stages.insert(built + 1, new)
    seen = []
    train = built + 3  # after validate_instances
    assert stages[train].name == "train"
    stages[train] = dataclasses.replace(
        stages[train], run=lambda ctx: seen.append(ctx.earlier(RowsCounted)) or _fake_result(stages[train], True))
    monkeypatch.setattr(pipeline, "STAGES", tuple(stages))
    reported = []
    monkeypatch.setattr(pipeline, "REPORT", dataclasses.replace(
        pipeline.REPORT, run=lambda ctx: reported.append([s.name for s in ctx.stage_list()]) or pipeline.Reported("r.html")))

    pipeline.retrain_in_process(base_config, "raw", tmp_path, date(2026, 1, 1), date(2026, 1, 5))
    assert json.loads((tmp_path / "count_rows.json").read_text()) == {"rows": 1234}
    assert (tmp_path / pipeline.TIMINGS_DIR / "count_rows.json").exists()
    assert seen == [RowsCounted(1234)]
    assert reported[0].index("count_rows") == reported[0].index("build_instances") + 1


def test_embed_pins_learns_before_the_first_validation_day_and_build_instances_reads_it(tmp_path, base_config, raw_dir):
    from homefeed import storage

    cfg = base_config.with_overrides({"embeddings": {"method": "word2vec", "min_engagements": 2, "dim": 8}})
    ctx = pipeline.RunContext(cfg, tmp_path, str(raw_dir), date(2026, 1, 5), date(2026, 1, 9))
    embedded = pipeline.run_stage(pipeline.stage("embed_pins"), ctx)
    assert embedded.end == "2026-01-07" and embedded.learned > 0  # validation is 01-08, test 01-09
    assert json.loads((tmp_path / "embed_pins.json").read_text())["embeddings"] == str(tmp_path / "pin_embeddings")
    assert "pin_embeddings" in (tmp_path / "data_docs" / "index.html").read_text()  # the GX suite ran
    built = pipeline.run_stage(pipeline.stage("build_instances"), ctx)
    assert storage.read_manifest(built.instances)["pin_embeddings"]["end"] == "2026-01-07"


def test_embed_pins_with_method_none_learns_nothing(tmp_path, base_config):
    ctx = pipeline.RunContext(base_config, tmp_path, "raw", date(2026, 1, 5), date(2026, 1, 9))
    assert pipeline.run_stage(pipeline.stage("embed_pins"), ctx) == pipeline.PinsEmbedded(None, "none")
    assert not (tmp_path / "pin_embeddings").exists()
