import pytest
import torch

from homefeed import schema
from models import SEQUENCE_MODULE_NAMES
from models.sequence import SequenceConfig, TransAct, build_sequence_module, never_fully_masked

B, L, P = 4, 12, 8
CFG = SequenceConfig(seq_len=L, pin_dim=P, action_dim=4, d_model=8, num_layers=1, num_heads=2, dim_feedforward=16, dropout=0.0, kept_tokens=3)


def inputs(lengths=(12, 5, 1, 0)):
    tokens = torch.randn(B, L, P)
    actions = torch.zeros(B, L, dtype=torch.long)
    action_ts = torch.zeros(B, L, dtype=torch.long)
    request_ts = torch.full((B,), 10_000_000, dtype=torch.long)
    for row, n in enumerate(lengths):
        actions[row, :n] = torch.randint(1, schema.NUM_ACTION_CODES, (n,))
        action_ts[row, :n] = request_ts[row] - 1_000 * (torch.arange(n) + 1)  # newest first
        tokens[row, n:] = 0.0
    return tokens, actions, action_ts, torch.arange(B), request_ts, torch.randn(B, P)


@pytest.mark.parametrize("name", SEQUENCE_MODULE_NAMES)
def test_every_module_returns_its_declared_width_without_nans(name):
    module = build_sequence_module(name, CFG).eval()
    out = module(*inputs())
    assert out.shape == (B, module.out_dim)
    assert torch.isfinite(out).all()


def test_output_widths_follow_the_paper():
    assert build_sequence_module("transact_v10", CFG).out_dim == L * CFG.d_model  # flatten all tokens
    assert build_sequence_module("transact_v11", CFG).out_dim == (CFG.kept_tokens + 1) * CFG.d_model
    assert build_sequence_module("none", CFG).out_dim == 0


@pytest.mark.parametrize("name", ["transact_v10", "transact_v11"])
def test_flattened_output_has_the_norm_of_one_token(name):
    # Post-LayerNorm tokens have squared norm ≈ D; unscaled, the flattened block would have ≈ tokens·D.
    module = build_sequence_module(name, CFG).eval()
    out = module(*inputs())
    squared_norm = out.pow(2).sum(dim=1).mean().item()
    assert 0.5 * CFG.d_model < squared_norm < 2 * CFG.d_model


def test_unknown_module_is_rejected():
    with pytest.raises(ValueError, match="unknown model .mamba."):
        build_sequence_module("mamba", CFG)


@pytest.mark.parametrize("name", ["avgpool", "cnn", "transformer", "transact_v10", "transact_v11"])
def test_padded_positions_do_not_change_the_output(name):
    module = build_sequence_module(name, CFG).eval()
    tokens, actions, action_ts, index, request_ts, candidate = inputs()
    before = module(tokens, actions, action_ts, index, request_ts, candidate)
    garbage = tokens.clone()
    garbage[1, 5:] = 100.0  # row 1 has 5 real actions; change only its padding
    after = module(garbage, actions, action_ts, index, request_ts, candidate)
    if name.startswith("transact"):  # outputs at padded query positions may change; kept tokens 0..4 may not
        assert torch.allclose(before[1].view(-1, CFG.d_model)[:3], after[1].view(-1, CFG.d_model)[:3], atol=1e-5)
    else:
        assert torch.allclose(before[1], after[1], atol=1e-5)


def test_time_window_mask_hides_only_recent_actions_and_only_in_training():
    module = TransAct(SequenceConfig(**{**CFG.__dict__, "time_window_mask_prob": 1.0, "time_window_ms": 5_500}), "v1.0")
    _, _, action_ts, _, request_ts, _ = inputs()
    torch.manual_seed(0)
    masked = module.time_window_mask(action_ts, request_ts)
    age = request_ts.unsqueeze(1) - action_ts
    assert not masked[age >= 5_500].any()  # older than the largest window: never hidden
    module.eval()
    batch = inputs()
    assert torch.equal(module(*batch), module(*batch))


def test_never_fully_masked_unmasks_the_first_position_of_empty_rows():
    mask = torch.tensor([[True, True], [False, True]])
    fixed = never_fully_masked(mask)
    assert fixed.tolist() == [[False, True], [False, True]]
    assert mask.tolist() == [[True, True], [False, True]]  # input untouched


# ---------------------------------------------------------------- request-level == per-row
def old_transact_forward(module: TransAct, tokens, actions, action_ts, request_ts, candidate):
    """TransAct as it was computed per row before sequences were shared: one (B, L) sequence per
    example, the candidate concatenated onto every token before one projection."""
    B, L, _ = tokens.shape
    mask = actions == schema.PADDING_ID
    if module.training and module.cfg.time_window_ms > 0:
        mask = mask | module.time_window_mask(action_ts, request_ts)
    mask = never_fully_masked(mask)
    fused = torch.cat([candidate.unsqueeze(1).expand(B, L, -1), module.action_emb(actions), tokens], dim=-1)
    x = module.encoder(module.proj(fused), src_key_padding_mask=mask)
    if module.version == "v1.0":
        kept = x
    else:
        pooled = x.masked_fill(mask.unsqueeze(-1), float("-inf")).amax(dim=1, keepdim=True)
        kept = torch.cat([x[:, : module.cfg.kept_tokens], pooled], dim=1)
    return kept.flatten(1) * kept.shape[1] ** -0.5


def shared_batch():
    """3 requests (sequences) and 9 candidates: each candidate's row points at its request's sequence."""
    g = torch.Generator().manual_seed(5)
    tokens, actions, action_ts, _, _, _ = inputs(lengths=(12, 5, 0, 3))
    tokens, actions, action_ts = tokens[:3], actions[:3], action_ts[:3]
    index = torch.tensor([0, 2, 1, 0, 0, 1, 2, 2, 0])
    request_ts = torch.full((3,), 10_000_000, dtype=torch.long)[index]
    candidate = torch.randn(len(index), P, generator=g)
    return tokens, actions, action_ts, index, request_ts, candidate


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", SEQUENCE_MODULE_NAMES)
def test_shared_sequences_give_the_per_row_outputs(name, training):
    cfg = SequenceConfig(**{**CFG.__dict__, "time_window_ms": 8_000, "time_window_mask_prob": 0.7})
    module = build_sequence_module(name, cfg).train(training)
    tokens, actions, action_ts, index, request_ts, candidate = shared_batch()
    torch.manual_seed(11)  # the time-window mask's draws, one per example on both paths
    shared = module(tokens, actions, action_ts, index, request_ts, candidate)
    torch.manual_seed(11)
    if name.startswith("transact"):
        per_row = old_transact_forward(module, tokens[index], actions[index], action_ts[index], request_ts, candidate)
    else:
        per_row = module(tokens[index], actions[index], action_ts[index], torch.arange(len(index)), request_ts, candidate)
    assert shared.shape == (len(index), module.out_dim)
    assert torch.allclose(shared, per_row, atol=1e-5, rtol=1e-4)


def _dropout_transact(name, layers):
    cfg = SequenceConfig(**{**CFG.__dict__, "time_window_ms": 8_000, "time_window_mask_prob": 0.7, "dropout": 0.3, "num_layers": layers})
    return build_sequence_module(name, cfg)


@pytest.mark.parametrize("kernel", ["sdpa", "logits"])
@pytest.mark.parametrize("rows", ["shared (U < B)", "one per row (U = B)"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", ["transact_v10", "transact_v11"])
def test_transact_first_layer_per_sequence_equals_the_per_row_encoder_with_dropout(name, training, rows, kernel):
    """Issue 34: the first layer's attention computed per sequence (either kernel) is today's
    per-row layer, to fp32 rounding, in training too: with dropout 0.3 the same seed draws the
    same bits, and the gradients of every parameter agree."""
    module = _dropout_transact(name, layers=2).train(training)
    module.attention_kernel = kernel
    tokens, actions, action_ts, index, request_ts, candidate = shared_batch()
    if rows.startswith("one per row"):
        tokens, actions, action_ts, index = tokens[index], actions[index], action_ts[index], torch.arange(len(index))
    torch.manual_seed(11)
    new = module(tokens, actions, action_ts, index, request_ts, candidate)
    new_grads = torch.autograd.grad(new.square().sum(), list(module.parameters()), allow_unused=True)
    torch.manual_seed(11)
    old = old_transact_forward(module, tokens[index], actions[index], action_ts[index], request_ts, candidate)
    old_grads = torch.autograd.grad(old.square().sum(), list(module.parameters()), allow_unused=True)
    assert torch.allclose(new, old, atol=1e-5, rtol=1e-4)
    for (label, _), a, b in zip(module.named_parameters(), new_grads, old_grads):
        assert (a is None) == (b is None), label
        if a is not None:
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-3), label


def test_the_dropout_equality_would_catch_a_first_layer_that_draws_other_bits():
    """The negative case: with the values' candidate part added after attention (exact only
    while attention rows sum to 1), training with dropout no longer matches."""
    module = _dropout_transact("transact_v11", layers=1).train()
    tokens, actions, action_ts, index, request_ts, candidate = shared_batch()
    torch.manual_seed(11)
    old = old_transact_forward(module, tokens[index], actions[index], action_ts[index], request_ts, candidate)
    old_eval = old_transact_forward(module.eval(), tokens[index], actions[index], action_ts[index], request_ts, candidate)
    module.train()
    original = torch.nn.functional.scaled_dot_product_attention

    def values_without_candidate(q, k, v, **kwargs):  # what A·vs + vc would give under dropout
        return original(q, k, v - v.mean(dim=2, keepdim=True), **kwargs) + v.mean(dim=2, keepdim=True)

    torch.nn.functional.scaled_dot_product_attention = values_without_candidate
    try:
        torch.manual_seed(11)
        broken = module(tokens, actions, action_ts, index, request_ts, candidate)
        module.eval()  # without dropout the rows sum to 1 and it is exact again
        still_exact = torch.allclose(module(tokens, actions, action_ts, index, request_ts, candidate), old_eval, atol=1e-5)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert not torch.allclose(broken, old, atol=1e-3) and still_exact


def test_transact_candidate_changes_the_output_but_shares_the_sequence_projection():
    module = build_sequence_module("transact_v11", CFG).eval()
    tokens, actions, action_ts, index, request_ts, candidate = shared_batch()
    out = module(tokens, actions, action_ts, index, request_ts, candidate)
    assert not torch.allclose(out[0], out[3])  # same sequence, other candidates: early fusion differs
    swapped = module(tokens, actions, action_ts, index, request_ts, candidate.roll(1, 0))
    assert not torch.allclose(out, swapped)


@pytest.mark.parametrize("name", ["transformer", "transact_v10", "transact_v11"])
def test_full_histories_skip_the_mask_in_inference_with_the_same_output(name):
    module = build_sequence_module(name, CFG).eval()
    tokens, actions, action_ts, index, request_ts, candidate = inputs(lengths=(L, L, L, L))
    out = module(tokens, actions, action_ts, index, request_ts, candidate)
    if name.startswith("transact"):
        reference = old_transact_forward(module, tokens, actions, action_ts, request_ts, candidate)  # passes the all-False mask
    else:
        reference = module.encoder(module.proj(tokens), src_key_padding_mask=actions == schema.PADDING_ID).mean(1)
    assert torch.allclose(out, reference, atol=1e-5)
