"""Shared fixtures: one local SparkSession, one tiny simulated raw dataset and its instances."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

KUAIRAND_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kuairand_pure"
TINY_IMPRESSIONS = 6_000


@pytest.fixture(scope="session")
def base_config(tmp_path_factory):
    from homefeed.config import load_config

    root = tmp_path_factory.mktemp("homefeed-root")
    return load_config(
        environ={},
        overrides={
            "storage": {"root": str(root)},
            "simulator": {"impressions": TINY_IMPRESSIONS, "days": 5},
            "instances": {"shuffle_partitions": 2},
            "train": {"epochs": 1, "batch_size": 256, "d_model": 16, "num_heads": 2, "dim_feedforward": 16, "embedding_dim": 8},
            "evaluation": {"bootstrap_samples": 20},
        },
    )


@pytest.fixture(scope="session")
def spark(base_config):
    from homefeed.spark import get_spark

    session = get_spark(base_config.spark, "homefeed-tests", shuffle_partitions=2)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory, base_config) -> Path:
    from homefeed import simulate

    out = tmp_path_factory.mktemp("raw") / "synthetic"
    simulate.generate(base_config.simulator, out)
    return out


@pytest.fixture(scope="session")
def instances_dir(tmp_path_factory, spark, raw_dir, base_config) -> Path:
    from jobs import build_instances

    out = tmp_path_factory.mktemp("instances") / "instances"
    build_instances.run(spark, str(raw_dir), str(out), base_config)
    return out


def register_and_promote(cfg, model_dir, instances_dir, tags: dict | None = None) -> str:
    """Register a trained model with its serving feature spec and make it the champion."""
    from homefeed import registry, storage
    from homefeed.data import read_instances

    run = registry.client(cfg).create_run(registry.experiment_id(cfg))
    example = registry.input_example(read_instances(str(instances_dir), "test"))
    features = registry.serving_features(storage.read_manifest(instances_dir))
    version = registry.log_and_register(cfg, run.info.run_id, str(model_dir), example, tags or {}, features=features)
    registry.promote(cfg, version, reason="test champion", force=True)
    return version


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port for the session (Debian's, installed by `make test`)."""
    from homefeed.local_redis import RedisServer, redis_server_binary

    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (scripts/install_test_servers.sh, which `make test` runs)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()
