"""The retraining stages with S3 as the storage of record (a real S3 server over HTTP)."""

import pytest

from homefeed import orchestration, pipeline, registry, s3, storage
from homefeed.local_s3 import SeaweedServer

pytestmark = pytest.mark.slow  # a whole retraining run
BUCKET = "homefeed"


@pytest.fixture()
def server(tmp_path, monkeypatch):
    seaweed = SeaweedServer(tmp_path / "seaweed", "pipeline-test", "pipeline-secret", BUCKET).start()
    for key, value in seaweed.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield seaweed
    seaweed.stop()


def test_a_run_reads_raw_data_from_s3_and_publishes_every_stage_there(server, base_config, raw_dir, tmp_path):
    client = s3.client()
    raw_uri = f"s3://{BUCKET}/raw/tiny"
    s3.publish_directory(client, raw_dir, raw_uri)
    cfg = base_config.with_overrides({
        "storage": {"root": str(tmp_path / "work"), "s3_uri": f"s3://{BUCKET}"}, "train": {"model": "lr"},
    })
    directory = pipeline.run_dir(cfg, "on-s3")
    local_raw = orchestration.raw_root(cfg, {"raw": raw_uri})
    assert local_raw.startswith(str(tmp_path / "work" / "s3-cache")) and storage.is_published(local_raw)
    from datetime import date

    decision = pipeline.retrain_in_process(cfg, local_raw, directory, date(2026, 1, 5), date(2026, 1, 9))
    assert decision.passed, decision.summary
    run_uri = f"s3://{BUCKET}/runs/on-s3"
    # The instances: their own dataset, marker last, manifest equal to the local one.
    assert s3.read_manifest(client, f"{run_uri}/instances") == storage.read_manifest(directory / "instances")
    records = {k.split("/records/", 1)[1] for k in s3.list_keys(client, f"{run_uri}/records")}
    assert {"_SUCCESS", "gate.json", "register.json", "promote.json", "report.json", "report.html", "train/model/model_info.json"} <= records
    assert not any(k.startswith("instances/") for k in records)
    # MLflow's artifacts live on S3, and the champion loads from there.
    mlflow_keys = s3.list_keys(client, f"s3://{BUCKET}/mlflow")
    assert any(k.endswith("/MLmodel") for k in mlflow_keys)
    version, model = registry.load_model_for(cfg, registry.CHAMPION)
    assert version == "1" and model.scorer.name == "lr"
    # A second read of the same raw data is served from the cache.
    assert orchestration.raw_root(cfg, {"raw": raw_uri}) == local_raw


def test_raw_data_that_was_never_fully_published_is_refused(server, base_config, tmp_path):
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="raw/half/impressions/dt=2026-01-05/part-0.parquet", Body=b"x")
    cfg = base_config.with_overrides({"storage": {"root": str(tmp_path), "s3_uri": f"s3://{BUCKET}"}})
    with pytest.raises(s3.NotPublished, match="never fully published"):
        orchestration.raw_root(cfg, {"raw": f"s3://{BUCKET}/raw/half"})
