import numpy as np
import torch

from homefeed import schema
from models.ranker import Ranker, RankerConfig, pin_content_table, weighted_bce
from models.sequence import SequenceConfig

B, L = 16, 10


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {
        "dense": torch.randn(B, len(schema.DENSE_FEATURES), generator=g),
        "pin_id": torch.randint(1, 50, (B,), generator=g),
        "ts": torch.full((B,), 10**9),
        schema.SEQ_PIN_ID: torch.randint(0, 50, (B, L), generator=g),
        schema.SEQ_ACTION: torch.randint(0, schema.NUM_ACTION_CODES, (B, L), generator=g),
        schema.SEQ_TS: torch.full((B, L), 10**9 - 10**7),
    }
    for name, size in schema.CATEGORICAL_FEATURES.items():
        out[name] = torch.randint(0, size, (B,), generator=g)
    return out


def ranker(module="transact_v11", cross=2):
    content = pin_content_table(np.arange(1, 40), np.random.default_rng(0).normal(size=(39, 4)).astype(np.float32))
    cfg = RankerConfig(module, SequenceConfig(seq_len=L, d_model=8, num_heads=2, dim_feedforward=8, action_dim=4, dropout=0.0), id_dim=4, cross_layers=cross, mlp_dims=(16,), dropout=0.0)
    return Ranker(cfg, content)


def test_forward_gives_one_logit_per_head():
    assert ranker()(batch()).shape == (B, len(schema.HEADS))


def test_unknown_pin_ids_use_a_zero_content_vector():
    model = ranker()
    vec = model.pins(torch.tensor([1000]))  # beyond the content table
    assert torch.all(vec[0, :4] == 0)


def test_content_table_is_standardised_per_dimension_with_a_zero_padding_row():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(200, 4)) / 2.0
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)  # unit-norm, as pin embeddings arrive
    table = pin_content_table(np.arange(3, 203), raw.astype(np.float32)).numpy()
    assert table.shape == (203, 4)
    assert np.all(table[:3] == 0)  # padding id 0 and pins without content
    known = table[3:]
    np.testing.assert_allclose(known.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(known.std(axis=0), 1.0, atol=1e-4)
    # Standardising keeps which pins are alike: the nearest neighbour of every pin is unchanged.
    def nearest(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return d.argmin(1)
    assert (nearest(known) == nearest(raw)).mean() > 0.9
    # A constant dimension does not divide by zero.
    flat = pin_content_table(np.arange(1, 4), np.ones((3, 2), np.float32)).numpy()
    assert np.isfinite(flat).all() and np.all(flat == 0)


def test_head_bias_starts_each_head_at_its_base_rate():
    model = ranker()
    rates = {"repin": 0.1, "click": 0.3, "closeup": 0.18, "hide": 0.0}  # a head with no positives is clamped
    model.init_head_bias(rates)
    bias = torch.sigmoid(model.heads.bias).detach().numpy()
    expected = [max(rates[h], 1e-4) for h in schema.HEADS]
    np.testing.assert_allclose(bias, expected, rtol=1e-4)
    assert np.isfinite(model.heads.bias.detach().numpy()).all()


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = ranker("avgpool", cross=0)
    data = batch()
    labels = (torch.rand(B, len(schema.HEADS)) < 0.5).float()
    weights = torch.ones(B)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    heads = torch.ones(len(schema.HEADS))
    first = None
    for _ in range(200):
        loss = weighted_bce(model(data), labels, weights, heads)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first


def test_sample_weights_change_the_loss():
    logits = torch.tensor([[2.0, 0, 0, 0], [-2.0, 0, 0, 0]])
    labels = torch.tensor([[0.0, 0, 0, 0], [0.0, 0, 0, 0]])
    heads = torch.tensor([1.0, 0, 0, 0])
    equal = weighted_bce(logits, labels, torch.tensor([1.0, 1.0]), heads)
    upweight_wrong = weighted_bce(logits, labels, torch.tensor([10.0, 1.0]), heads)
    assert upweight_wrong > equal  # the confidently wrong example counts more
    expected = (torch.nn.functional.softplus(torch.tensor(2.0)) * 10 + torch.nn.functional.softplus(torch.tensor(-2.0))) / 11
    assert torch.isclose(upweight_wrong, expected)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = ranker().eval()
    data = batch()
    model.save(tmp_path)
    loaded = Ranker.load(tmp_path)
    with torch.inference_mode():
        assert torch.equal(model(data), loaded(data))


def test_a_batch_with_shared_sequences_scores_as_its_per_row_expansion():
    # Four requests, sixteen candidates: the request-level batch against one sequence per row.
    from models import SEQUENCE_MODULE_NAMES

    per_row = batch(seed=3)
    index = torch.arange(B) % 4
    for name in ("seq_pin_id", "seq_action", "seq_ts"):
        per_row[name] = per_row[name][:4][index]
    per_row["ts"] = torch.full((B,), 10**9)
    shared = {**per_row, **{n: per_row[n][:4] for n in ("seq_pin_id", "seq_action", "seq_ts")}, schema.SEQ_INDEX: index}
    for name in SEQUENCE_MODULE_NAMES:
        model = ranker(name, cross=2 if name == "transact_v11" else 0).eval()
        with torch.no_grad():
            assert torch.allclose(model(shared), model(per_row), atol=1e-5), name


def test_id_tokens_put_the_learned_id_into_the_sequence_and_survive_a_round_trip(tmp_path):
    """train.id_tokens (issue 20's experiment): the sequence's tokens carry the learned id beside
    the content vector, so the sequence's output depends on the id embedding; off, it does not."""
    import dataclasses

    from models import SEQUENCE_MODULE_NAMES

    base = ranker()
    data = batch(seed=5)
    data["pin_id"] = torch.full((B,), 1)  # every candidate is pin 1: other pins occur only in sequences
    data[schema.SEQ_PIN_ID] = torch.randint(2, 40, (B, L), generator=torch.Generator().manual_seed(1))
    sequence_only = 1 + data[schema.SEQ_PIN_ID].unique() % (base.pins.id_emb.num_embeddings - 1)  # their id buckets
    for id_tokens in (False, True):
        model = Ranker(dataclasses.replace(base.cfg, id_tokens=id_tokens), base.pins.content)
        model(data).sum().backward()
        learned = model.pins.id_emb.weight.grad[sequence_only].abs().sum() > 0
        assert bool(learned) == id_tokens  # only id tokens teach the ids of pins seen in sequences
    for name in SEQUENCE_MODULE_NAMES:  # every sequence module takes the wider tokens
        model = ranker(name, cross=0)
        model = Ranker(dataclasses.replace(model.cfg, id_tokens=True), model.pins.content).eval()
        with torch.inference_mode():
            assert model(data).shape == (B, len(schema.HEADS)), name
    model = Ranker(dataclasses.replace(base.cfg, id_tokens=True), base.pins.content).eval()
    model.save(tmp_path)
    loaded = Ranker.load(tmp_path)
    assert loaded.cfg.id_tokens
    with torch.inference_mode():
        assert torch.equal(model(data), loaded(data))


def test_sequence_counts_let_the_control_read_how_often_each_action_occurs(tmp_path):
    """train.sequence_counts (issue 20's experiment): the action counts of the request's sequence join
    the flat features, so even `none` scores by them; without it, `none` ignores the sequence."""
    import dataclasses

    from models.ranker import action_counts

    codes = torch.tensor([[2, 2, 1, 0, 0], [0, 0, 0, 0, 0]])
    counts = action_counts(codes)
    assert counts.shape == (2, schema.NUM_ACTION_CODES - 1)  # padding is not an action
    assert torch.allclose(counts[0, :2], torch.log1p(torch.tensor([1.0, 2.0]))) and counts[1].sum() == 0
    data = batch(seed=7)
    other = {**data, schema.SEQ_ACTION: torch.flip(data[schema.SEQ_ACTION], dims=[0])}  # another user's actions
    base = ranker("none", cross=0).eval()
    with torch.inference_mode():
        assert torch.equal(base(data), base(other))  # the control reads no sequence
    model = Ranker(dataclasses.replace(base.cfg, sequence_counts=True), base.pins.content).eval()
    with torch.inference_mode():
        assert not torch.allclose(model(data), model(other))
        shuffled = {**data, schema.SEQ_ACTION: data[schema.SEQ_ACTION][:, torch.randperm(L)]}
        assert torch.allclose(model(data), model(shuffled), atol=1e-6)  # counts, not order
    # Shared sequences (one per request) give each row its own request's counts.
    index = torch.arange(B) % 4
    shared = {**data, **{n: data[n][:4] for n in schema.SEQUENCE_COLUMNS}, schema.SEQ_INDEX: index}
    per_row = {**data, **{n: data[n][:4][index] for n in schema.SEQUENCE_COLUMNS}}
    with torch.inference_mode():
        assert torch.allclose(model(shared), model(per_row), atol=1e-6)
    model.save(tmp_path)
    loaded = Ranker.load(tmp_path)
    assert loaded.cfg.sequence_counts
    with torch.inference_mode():
        assert torch.equal(model(data), loaded(data))


def test_pins_newer_than_training_are_added_scaled_as_the_trained_ones_and_known_ones_kept(tmp_path):
    from dataclasses import replace

    from models.ranker import content_scaling

    raw = np.random.default_rng(0).normal(size=(39, 4)).astype(np.float32)
    mean, std = content_scaling(raw)
    base = ranker()
    model = Ranker(replace(base.cfg, content_mean=mean, content_std=std), pin_content_table(np.arange(1, 40), raw))
    before = model.pins.content.clone()
    padded = model(batch() | {"pin_id": torch.full((B,), 45)})
    new = np.array([3.0, -1.0, 0.5, 2.0], np.float32)
    assert model.add_pins(np.array([5, 45]), np.stack([raw[0] * 0 + 9, new])) == 1  # 5 is known: kept
    assert torch.equal(model.pins.content[:40], before)
    np.testing.assert_allclose(model.pins.content[45].numpy(), (new - np.array(mean)) / np.array(std), rtol=1e-5)
    assert not torch.equal(model(batch() | {"pin_id": torch.full((B,), 45)}), padded)  # no longer read as padding
    assert model.add_pins(np.array([45]), new[None]) == 0  # idempotent
    model.save(tmp_path)
    assert Ranker.load(tmp_path).cfg.content_mean == mean  # the scaling travels with the model


def test_a_model_saved_without_its_scaling_adds_no_pins():
    model = ranker()
    assert model.add_pins(np.array([45]), np.ones((1, 4), np.float32)) == 0
    assert model.pins.content.shape[0] == 40
