"""Learned pin embeddings (issue 35, first step): Spark MLlib over the engagement up to a day,
leakage-safe, deterministic, every pin of the snapshot covered, bad input refused."""

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest

from homefeed import schema, storage
from homefeed.data import read_pin_features
from jobs import build_instances, embed_pins
from jobs.build_instances import InputDataError

END = date(2026, 1, 7)  # the tiny log covers 2026-01-05 .. 01-09


@pytest.fixture(scope="module")
def cfg(base_config):
    return base_config.with_overrides({"embeddings": {"method": "word2vec", "min_engagements": 2, "dim": 8}})


def _engagements(raw_dir):
    actions = pq.read_table(raw_dir / schema.ACTIONS).to_pandas()
    return actions[actions["action"].isin(schema.POSITIVE_ACTIONS)]


def test_a_pin_engaged_only_after_the_end_day_has_no_learned_vector(spark, raw_dir, cfg, tmp_path):
    manifest = embed_pins.run(spark, str(raw_dir), str(tmp_path / "emb"), cfg, END)
    table = embed_pins.read(tmp_path / "emb").to_pandas().set_index("pin_id")
    end_ms = int(datetime(2026, 1, 8, tzinfo=timezone.utc).timestamp() * 1000)
    engaged = _engagements(raw_dir)
    before = engaged[engaged["ts"] < end_ms]["pin_id"].value_counts()
    after_only = set(engaged[engaged["ts"] >= end_ms]["pin_id"]) - set(before.index)
    assert after_only, "the tiny log should have pins first engaged after the end day"
    assert (table.loc[sorted(after_only & set(table.index)), "source"] == embed_pins.CONTENT).all()
    learned = set(table.index[table["source"] == embed_pins.LEARNED])
    assert learned and learned <= set(before[before >= 2].index)  # only from engagement up to the end day
    # Every pin of the snapshot is covered, at the configured width, finite.
    pins = pq.read_table(raw_dir / schema.PINS).to_pandas()
    assert set(table.index) == set(pins["pin_id"])
    vectors = np.stack(table["embedding"].to_numpy())
    assert vectors.shape[1] == 8 and np.isfinite(vectors).all()
    assert manifest["window"]["end"] == END.isoformat() and manifest["learned"] == len(learned)
    assert 0 < manifest["coverage"]["pins"] < 1 and storage.read_manifest(tmp_path / "emb")["method"] == "word2vec"


def test_the_same_inputs_and_seed_give_the_same_vectors(spark, raw_dir, cfg, tmp_path):
    first = embed_pins.run(spark, str(raw_dir), str(tmp_path / "a"), cfg, END)
    second = embed_pins.run(spark, str(raw_dir), str(tmp_path / "b"), cfg, END)
    assert first == second
    assert embed_pins.read(tmp_path / "a").equals(embed_pins.read(tmp_path / "b"))


def test_als_learns_vectors_too(spark, raw_dir, cfg, tmp_path):
    manifest = embed_pins.run(spark, str(raw_dir), str(tmp_path / "als"), cfg.with_overrides({"embeddings": {"method": "als"}}), END)
    assert manifest["method"] == "als" and manifest["learned"] > 0


def test_no_engagement_up_to_the_end_day_is_refused_and_nothing_is_published(spark, raw_dir, cfg, tmp_path):
    with pytest.raises(InputDataError, match="no positive actions up to 2025-12-31"):
        embed_pins.run(spark, str(raw_dir), str(tmp_path / "none"), cfg, date(2025, 12, 31))
    assert not (tmp_path / "none").exists()
    with pytest.raises(InputDataError, match="embeddings.method is none"):
        embed_pins.run(spark, str(raw_dir), str(tmp_path / "off"), cfg.with_overrides({"embeddings": {"method": "none"}}), END)


def test_the_same_output_is_not_recomputed(spark, raw_dir, cfg, tmp_path):
    first = embed_pins.run(spark, str(raw_dir), str(tmp_path / "e"), cfg, END)
    written = (tmp_path / "e" / "embeddings.parquet").stat().st_mtime_ns
    assert embed_pins.run(spark, str(raw_dir), str(tmp_path / "e"), cfg, END) == first
    assert (tmp_path / "e" / "embeddings.parquet").stat().st_mtime_ns == written
    changed = embed_pins.run(spark, str(raw_dir), str(tmp_path / "e"), cfg.with_overrides({"embeddings": {"seed": 8}}), END)
    assert changed["fingerprint"] != first["fingerprint"]
    table = tmp_path / "e" / "embeddings.parquet"
    table.write_bytes(table.read_bytes()[:-100])  # cut: the same inputs, but the table is damaged
    rebuilt = embed_pins.run(spark, str(raw_dir), str(tmp_path / "e"), cfg.with_overrides({"embeddings": {"seed": 8}}), END)
    assert rebuilt == changed and storage.missing_files(tmp_path / "e", rebuilt["files"]) == []


# --------------------------------------------------------------------------- the instance job reads them
@pytest.fixture(scope="module")
def learned(spark, raw_dir, cfg, tmp_path_factory):
    """Embeddings up to the day before the tiny window's first validation day, and instances on them."""
    root = tmp_path_factory.mktemp("learned")
    last_day = storage.landed_days(raw_dir)[-1]
    cutoff = build_instances.last_training_day(last_day, cfg.instances)
    embed_pins.run(spark, str(raw_dir), str(root / "emb"), cfg, cutoff)
    manifest = build_instances.run(spark, str(raw_dir), str(root / "instances"), cfg, pin_embeddings=str(root / "emb"))
    return root, cutoff, manifest


def test_the_pipeline_cutoff_learns_nothing_from_validation_or_test_days(raw_dir, cfg, learned):
    root, cutoff, _ = learned
    assert cutoff == END
    first_evaluated_ms = int(datetime(2026, 1, 8, tzinfo=timezone.utc).timestamp() * 1000)
    engaged = _engagements(raw_dir)
    evaluated_only = set(engaged[engaged["ts"] >= first_evaluated_ms]["pin_id"]) - set(engaged[engaged["ts"] < first_evaluated_ms]["pin_id"])
    table = embed_pins.read(root / "emb").to_pandas().set_index("pin_id")
    assert evaluated_only and (table.loc[sorted(evaluated_only & set(table.index)), "source"] == embed_pins.CONTENT).all()


def test_instances_carry_the_learned_vectors_and_record_their_window(learned):
    root, cutoff, manifest = learned
    ids, vectors = read_pin_features(root / "instances")
    table = embed_pins.read(root / "emb").to_pandas().set_index("pin_id")
    expected = np.stack(table.loc[ids, "embedding"].to_numpy())
    assert vectors.shape == (len(ids), 8) and np.allclose(vectors, expected)
    record = manifest["pin_embeddings"]
    assert record["method"] == "word2vec" and record["end"] == cutoff.isoformat() and record["learned"] > 0


def test_a_champion_is_evaluated_on_the_pin_vectors_it_was_trained_with(learned, instances_dir):
    """Learned instances, a champion trained on content vectors: the evaluate stage scores it on
    the content vectors of the same rows; a champion trained on these very vectors reads them as is."""
    from types import SimpleNamespace

    from homefeed import pipeline
    from homefeed.data import InstanceDataset, read_instances
    from homefeed.embeddings import PinVectors, vector_column

    root, _, _ = learned
    dataset = InstanceDataset.open(root / "instances")
    test, content = dataset.read("test"), read_instances(instances_dir, "test")
    assert test.column("pin_id").equals(content.column("pin_id"))  # the same rows, built with other vectors
    assert vector_column(test, schema.PIN_EMBEDDING).shape[1] == 8 != vector_column(content, schema.PIN_EMBEDDING).shape[1]
    on_content = pipeline.champion_view(test, dataset, SimpleNamespace(pin_vectors=None, scorer=None))
    assert np.allclose(vector_column(on_content, schema.PIN_EMBEDDING), vector_column(content, schema.PIN_EMBEDDING))
    same = PinVectors.read(dataset.manifest["pin_embeddings"]["path"])
    assert pipeline.champion_view(test, dataset, SimpleNamespace(pin_vectors=same, scorer=None)) is test


def test_content_instances_say_so(instances_dir):
    assert storage.read_manifest(instances_dir)["pin_embeddings"] == {"method": "none"}


def test_embeddings_that_read_a_validation_day_are_refused_and_nothing_is_published(spark, raw_dir, cfg, tmp_path):
    embed_pins.run(spark, str(raw_dir), str(tmp_path / "emb"), cfg, END + timedelta(days=1))
    with pytest.raises(InputDataError, match=r"up to 2026-01-08, on or after the first evaluated day 2026-01-08.*--end 2026-01-07"):
        build_instances.run(spark, str(raw_dir), str(tmp_path / "instances"), cfg, pin_embeddings=str(tmp_path / "emb"))
    assert not (tmp_path / "instances").exists()


def test_instances_are_rebuilt_when_their_embeddings_change(spark, raw_dir, cfg, learned, tmp_path):
    root, cutoff, manifest = learned
    other = embed_pins.run(spark, str(raw_dir), str(tmp_path / "emb"), cfg.with_overrides({"embeddings": {"seed": 9}}), cutoff)
    rebuilt = build_instances.run(spark, str(raw_dir), str(root / "instances"), cfg, pin_embeddings=str(tmp_path / "emb"))
    assert rebuilt["fingerprint"] != manifest["fingerprint"] and rebuilt["pin_embeddings"]["fingerprint"] == other["fingerprint"]


def test_engagement_on_served_feeds_counts_as_the_instance_job_counts_it(spark, raw_dir, cfg, tmp_path):
    import pyarrow as pa

    pins = pq.read_table(raw_dir / schema.PINS).to_pandas()
    never = sorted(set(pins["pin_id"]) - set(_engagements(raw_dir)["pin_id"]))[0]  # a pin nobody engaged in the raw log
    day_ms = int(datetime(2026, 1, 6, 12, tzinfo=timezone.utc).timestamp() * 1000)
    served = tmp_path / "events" / schema.ACTIONS / "dt=2026-01-06"
    served.mkdir(parents=True)
    rows = [{"user_id": u, "pin_id": int(p), "ts": day_ms + 1000 * i + u, "action": "repin"}
            for u in range(1, 9) for i, p in enumerate([never, *pins["pin_id"].iloc[:3]])]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("user_id", pa.int64(), False), ("pin_id", pa.int64(), False),
                                                                 ("ts", pa.int64(), False), ("action", pa.string(), False)])),
                   served / "part-0.parquet")
    with_log = embed_pins.run(spark, str(raw_dir), str(tmp_path / "with"), cfg, END, event_logs=(str(tmp_path / "events"),))
    table = embed_pins.read(tmp_path / "with").to_pandas().set_index("pin_id")
    assert table.loc[never, "source"] == embed_pins.LEARNED and with_log["event_logs"] == [str(tmp_path / "events")]
    embed_pins.run(spark, str(raw_dir), str(tmp_path / "without"), cfg, END)
    assert embed_pins.read(tmp_path / "without").to_pandas().set_index("pin_id").loc[never, "source"] == embed_pins.CONTENT
