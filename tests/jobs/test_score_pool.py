"""Pool insertion: the Spark job scores pins against users exactly as the ranking service would."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from homefeed import features, holdout, storage
from jobs.build_instances import InputDataError
from homefeed.sequence_store import load_actions
from homefeed.serving.service import NoServableModel, RankingService
from jobs import score_pool
from tests.conftest import register_and_promote


def _read(directory):
    return pa.concat_tables(pq.ParquetFile(f).read() for f in storage.list_files(directory))


@pytest.fixture(scope="module")
def cfg(base_config, tmp_path_factory, instances_dir):
    from homefeed import train as trainer

    root = tmp_path_factory.mktemp("pool-root")
    cfg = base_config.with_overrides({"storage": {"root": str(root)}, "holdout": {"fraction": 0.3}, "serving": {"reload_poll_s": 0}})
    model_dir = trainer.train(str(instances_dir), str(root / "train"), cfg.with_overrides({"train": {"model": "avgpool"}})).model_dir
    register_and_promote(cfg, model_dir, instances_dir)
    return cfg


def test_pool_scores_equal_the_service_scores(spark, cfg, raw_dir, tmp_path):
    all_users = pq.ParquetFile(next((raw_dir / "users").rglob("*.parquet"))).read().column("user_id").to_pylist()
    users, pins = sorted(all_users)[:40], [3, 17, 42]
    request_ts = 1_768_000_000_000
    out = tmp_path / "pool"
    manifest = score_pool.run(spark, str(raw_dir), pins, str(out), cfg, users, request_ts)
    assert manifest["rows"] == len(users) * len(pins) and storage.is_published(out)
    table = _read(out).to_pylist()
    # The service's store loaded from the same log, up to the same time (`homefeed sequences load --until`).
    service = RankingService.from_registry(cfg.with_overrides({"serving": {"bootstrap": False}}))
    load_actions(service.store, raw_dir, until=request_ts)
    for user in users[:8]:
        _, expected = service.score(user, request_ts, [features.Candidate(p, request_ts, "pfy") for p in pins])
        got = {r["pin_id"]: r for r in table if r["user_id"] == user}
        assert [got[p]["score"] for p in pins] == pytest.approx(list(expected), rel=1e-5)
        assert got[pins[0]]["holdout"] == holdout.is_holdout(user, 0.3, cfg.holdout.salt)
        assert got[pins[0]]["model_version"] == service.model.version
    assert 0 < manifest["holdout_rows"] < manifest["rows"]


def test_no_pins_or_no_champion_is_a_clear_error(spark, cfg, base_config, raw_dir, tmp_path):
    with pytest.raises(InputDataError, match="no pins"):
        score_pool.run(spark, str(raw_dir), [], str(tmp_path / "a"), cfg)
    empty = base_config.with_overrides({"storage": {"root": str(tmp_path / "empty")}})
    with pytest.raises(NoServableModel, match="homefeed promote"):
        score_pool.run(spark, str(raw_dir), [1], str(tmp_path / "b"), empty)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
