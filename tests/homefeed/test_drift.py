"""Drift between runs, through the pipeline's validate_instances stage."""

import json
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from homefeed import drift, pipeline, report, schema, storage
from homefeed.validation import ValidationFailed


@pytest.fixture()
def cfg(base_config, tmp_path):
    return base_config.with_overrides({"storage": {"root": str(tmp_path / "store")}})


def stage_run(cfg, label, instances):
    """A run whose build_instances stage produced ``instances``."""
    directory = pipeline.run_dir(cfg, label)
    manifest = storage.read_manifest(instances)
    built = pipeline.InstancesBuilt(str(instances), manifest["output_rows"], manifest["window"], manifest["splits"])
    storage.write_json(directory / "build_instances.json", built.record())
    return pipeline.RunContext(cfg, directory)


def validate_instances(cfg, label, instances):
    return pipeline.run_stage(pipeline.stage("validate_instances"), stage_run(cfg, label, instances))


def shifted_copy(instances, target, column, by):
    shutil.copytree(instances, target)
    for crc in target.rglob(".*.crc"):
        crc.unlink()
    for path in (target / schema.ROWS_DIR).rglob("*.parquet"):
        table = pq.ParquetFile(path).read()  # read_table would add hive partition columns
        index = table.schema.get_field_index(column)
        table = table.set_column(index, column, pc.add(table[column], pa.scalar(by, table.schema.field(column).type)))
        pq.write_table(table, path)
    return target


def test_same_data_passes_and_becomes_the_baseline(cfg, instances_dir):
    first = validate_instances(cfg, "first", instances_dir)
    assert "baseline" in first.drift
    second = validate_instances(cfg, "second", instances_dir)
    assert "passed" in second.drift
    saved = json.loads((pipeline.run_dir(cfg, "second") / "drift.json").read_text())
    assert saved["previous_run"] == "first"
    assert saved["comparison"]["success"] and saved["profile"]["rows"] > 0
    # Validating "second" again compares with "first", not with itself.
    assert drift.previous_profile(cfg.storage.root, "second")[0] == "first"


def test_a_shifted_feature_fails_naming_it_and_keeps_the_old_baseline(cfg, instances_dir, tmp_path):
    validate_instances(cfg, "good", instances_dir)
    # +3 on a standardised column is a shift of three training standard deviations.
    shifted = shifted_copy(instances_dir, tmp_path / "shifted", "pin_spam_score", 3.0)
    with pytest.raises(ValidationFailed) as failure:
        validate_instances(cfg, "shifted", shifted)
    message = str(failure.value)
    assert "instances_drift" in message and "drift:mean/pin_spam_score" in message and "previous_run" in message
    assert "drift:mean/pin_repin_count" not in message
    assert not (pipeline.run_dir(cfg, "shifted") / "validate_instances.json").exists()
    assert pipeline.failure_record(pipeline.run_dir(cfg, "shifted"), "validate_instances").exists()
    assert drift.previous_profile(cfg.storage.root, "next")[0] == "good"
    # The run report shows the comparison, the shifted statistic on top.
    html = report.write(cfg, pipeline.run_dir(cfg, "shifted"), {}, pipeline.STAGE_NAMES).read_text()
    assert "Drift vs run good: FAILED" in html
    assert html.index("mean/pin_spam_score") < html.index("label_rate/repin")


def test_label_rate_change_is_measured_relative_to_the_previous_rate(cfg):
    previous = {"rows": 100, "std": {}, "label_rate/repin": 0.10}
    report = drift.compare({"rows": 100, "label_rate/repin": 0.16}, previous, cfg.validation.drift, "before")
    repin = next(o for o in report.outcomes if o.expectation == "drift:label_rate/repin")
    assert not repin.success and repin.expected["change"] == pytest.approx(0.6)
    report = drift.compare({"rows": 100, "label_rate/repin": 0.12}, previous, cfg.validation.drift, "before")
    assert next(o for o in report.outcomes if o.expectation == "drift:label_rate/repin").success


def test_drift_can_be_switched_off(cfg, instances_dir, tmp_path):
    off = cfg.with_overrides({"validation": {"drift": {"enabled": False}}})
    validate_instances(off, "good", instances_dir)
    shifted = shifted_copy(instances_dir, tmp_path / "shifted", "pin_spam_score", 3.0)
    assert validate_instances(off, "shifted", shifted).drift == "disabled"
