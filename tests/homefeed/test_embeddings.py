"""A published pin embedding table as readers see it: a known pin's vector, a pin it lacks projected
from its content vector, and the serving rows rewritten to the vectors a model was trained with."""

import numpy as np
import pytest

from homefeed import embeddings, features, schema, storage
from homefeed.embeddings import PinVectors


@pytest.fixture()
def table(tmp_path):
    projection = np.vstack([np.eye(2, 3), [[0.0, 0.0, 1.0]]]).astype(np.float32)  # (x, y) → (x, y, 1)
    with storage.publish_dataset(tmp_path / "emb") as staging:
        embeddings.write(staging, [30, 10], [np.array([3, 3, 3]), np.array([1, 1, 1])], ["learned", "learned"],
                         {"method": "word2vec", "window": {"end": "2026-01-07"}, "projection": projection.tolist()})
    return PinVectors.read(tmp_path / "emb")


def test_known_pins_read_their_vector_and_unknown_ones_their_projected_content(table):
    got = table.lookup(np.array([10, 20, 30]), np.array([[9, 9], [5, 6], [9, 9]], np.float32))
    assert got.tolist() == [[1, 1, 1], [5, 6, 1], [3, 3, 3]]
    assert table.end.isoformat() == "2026-01-07"


def test_a_table_without_its_projection_is_not_written(tmp_path):
    with pytest.raises(ValueError, match="projection"):
        embeddings.write(tmp_path, [1], [np.zeros(2)], ["learned"], {"method": "als"})


def test_an_unpublished_table_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(storage.StorageError, match="never fully written"):
        PinVectors.read(tmp_path / "half")


def test_serving_rows_take_the_models_vectors_and_content_rows_stay_as_they_are(table):
    rows = [{"pin_id": 10, schema.PIN_EMBEDDING: [9.0, 9.0]}, {"pin_id": 20, schema.PIN_EMBEDDING: [5.0, 6.0]}]
    untouched = [dict(r) for r in rows]
    features.with_pin_vectors(untouched, None)
    assert untouched == rows
    features.with_pin_vectors(rows, table)
    assert [r[schema.PIN_EMBEDDING] for r in rows] == [[1, 1, 1], [5, 6, 1]]


def test_neighbourhood_agreement_is_full_for_the_same_space_and_near_chance_for_noise():
    rng = np.random.default_rng(1)
    category = rng.integers(0, 8, size=600)
    centres = rng.normal(size=(8, 6))
    truth = centres[category] + 0.3 * rng.normal(size=(600, 6))
    same = embeddings.neighbourhood_agreement(truth * 2.0, truth, category, k=10, queries=200)  # cosine: scale-free
    assert same["overlap_with_content"] == 1.0 and same["same_category_learned"] == same["same_category_content"] > 0.9
    noise = embeddings.neighbourhood_agreement(rng.normal(size=(600, 6)), truth, category, k=10, queries=200)
    assert noise["overlap_with_content"] < 5 * noise["overlap_by_chance"]
    assert abs(noise["same_category_learned"] - noise["same_category_by_chance"]) < 0.05
    assert embeddings.neighbourhood_agreement(truth[:5], truth[:5], category[:5], k=10) == {}


def test_a_snapshots_pins_reach_the_model_with_the_vectors_it_reads(table):
    from types import SimpleNamespace

    seen = []
    scorer = SimpleNamespace(add_pins=lambda ids, vectors: seen.append((ids.tolist(), vectors.tolist())) or len(ids))
    snapshot = features.FeatureSnapshot(pins={10: {"embedding": [9.0, 9.0]}, 20: {"embedding": [5.0, 6.0]}}, users={})
    assert features.add_snapshot_pins(SimpleNamespace(scorer=scorer, pin_vectors=table), snapshot) == 2
    assert seen[-1] == ([10, 20], [[1, 1, 1], [5, 6, 1]])  # learned, and the newer pin projected
    features.add_snapshot_pins(SimpleNamespace(scorer=scorer, pin_vectors=None), snapshot)
    assert seen[-1] == ([10, 20], [[9, 9], [5, 6]])  # content vectors as they are
    assert features.add_snapshot_pins(SimpleNamespace(scorer=object(), pin_vectors=None), snapshot) == 0
