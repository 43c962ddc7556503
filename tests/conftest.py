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


@pytest.fixture(scope="session")
def lr_model(instances_dir, tmp_path_factory, base_config):
    """A logistic-regression model trained once on the tiny instances (fast to train and to load)."""
    from homefeed import train as trainer

    out = tmp_path_factory.mktemp("lr-model")
    return trainer.train(str(instances_dir), str(out), base_config.with_overrides({"train": {"model": "lr"}})).model_dir


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


@pytest.fixture()
def browser_page():
    """``open(url, wait_for_text) -> (page text, urls it asked for beyond file:// and loopback)``
    in headless Debian Chromium (installed by `make test`). The machine has no route out, so a
    page that needs a CDN shows it in the second value. Per test: Playwright's sync API keeps an
    event loop running while it is open, which breaks every later test that runs one."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian chromium is not installed (scripts/install_test_servers.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-background-networking"])

        def open_page(url: str, wait_for_text: str, screenshot: Path | None = None) -> tuple[str, list[str]]:
            page = browser.new_page()
            outside: list[str] = []
            local = ("file://", "data:", "http://127.0.0.1", "about:")
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(local) else None)
            page.goto(url)
            page.wait_for_selector(f"text={wait_for_text}", timeout=30_000)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            text = page.inner_text("body")
            page.close()
            return text, outside

        yield open_page
        browser.close()
