"""The pipeline is defined once (homefeed.pipeline.STAGES): what runs it follows that list."""

import json
from datetime import date

import pytest

from homefeed import pipeline


def _fake_stages(monkeypatch, calls, gate_passes=True, failing=None):
    def make(name):
        def call(inputs):
            calls.append(name)
            if name == failing:
                raise RuntimeError(f"{name} broke")
            return {"passed": gate_passes, "summary": "gate says no"} if name == "gate" else {}
        return call

    stages = tuple(pipeline.Stage(s.name, make(s.name), s.reads, s.writes, s.stops_run) for s in pipeline.STAGES)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr(pipeline, "REPORT", pipeline.Stage("report", make("report"), (), ()))


def test_retrain_in_process_runs_the_stage_list_in_order_then_the_report(monkeypatch, tmp_path, base_config):
    calls = []
    _fake_stages(monkeypatch, calls)
    decision = pipeline.retrain_in_process(base_config, "raw", tmp_path, date(2026, 1, 1), date(2026, 1, 5))
    assert calls == [*pipeline.STAGE_NAMES, "report"] and decision["passed"]


def test_a_failed_gate_stops_the_run_and_a_failed_stage_is_recorded_and_reported(monkeypatch, tmp_path, base_config):
    calls = []
    _fake_stages(monkeypatch, calls, gate_passes=False)
    assert not pipeline.retrain_in_process(base_config, "raw", tmp_path, date(2026, 1, 1), date(2026, 1, 5))["passed"]
    assert calls == [*pipeline.STAGE_NAMES[: pipeline.STAGE_NAMES.index("gate") + 1], "report"]

    calls.clear()
    _fake_stages(monkeypatch, calls, failing="build_instances")
    with pytest.raises(RuntimeError, match="build_instances broke"):
        pipeline.retrain_in_process(base_config, "raw", tmp_path, date(2026, 1, 1), date(2026, 1, 5))
    assert calls == ["check_raw", "validate_raw", "build_instances", "report"]
    assert json.loads((tmp_path / "build_instances.failed.json").read_text())["error"] == "build_instances broke"


def test_every_stage_says_what_it_reads_and_writes():
    for step in (*pipeline.STAGES, pipeline.REPORT):
        assert step.reads and step.writes, step.name
        assert pipeline.stage(step.name) is step
