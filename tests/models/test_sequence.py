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
    return tokens, actions, action_ts, request_ts, torch.randn(B, P)


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
    with pytest.raises(ValueError, match="unknown sequence module"):
        build_sequence_module("mamba", CFG)


@pytest.mark.parametrize("name", ["avgpool", "cnn", "transformer", "transact_v10", "transact_v11"])
def test_padded_positions_do_not_change_the_output(name):
    module = build_sequence_module(name, CFG).eval()
    tokens, actions, action_ts, request_ts, candidate = inputs()
    before = module(tokens, actions, action_ts, request_ts, candidate)
    garbage = tokens.clone()
    garbage[1, 5:] = 100.0  # row 1 has 5 real actions; change only its padding
    after = module(garbage, actions, action_ts, request_ts, candidate)
    if name.startswith("transact"):  # outputs at padded query positions may change; kept tokens 0..4 may not
        assert torch.allclose(before[1].view(-1, CFG.d_model)[:3], after[1].view(-1, CFG.d_model)[:3], atol=1e-5)
    else:
        assert torch.allclose(before[1], after[1], atol=1e-5)


def test_time_window_mask_hides_only_recent_actions_and_only_in_training():
    module = TransAct(SequenceConfig(**{**CFG.__dict__, "time_window_mask_prob": 1.0, "time_window_ms": 5_500}), "v1.0")
    _, _, action_ts, request_ts, _ = inputs()
    torch.manual_seed(0)
    masked = module.time_window_mask(action_ts, request_ts)
    age = request_ts.unsqueeze(1) - action_ts
    assert not masked[age >= 5_500].any()  # older than the largest window: never hidden
    module.eval()
    tokens, actions, action_ts, request_ts, candidate = inputs()
    assert torch.equal(module(tokens, actions, action_ts, request_ts, candidate), module(tokens, actions, action_ts, request_ts, candidate))


def test_never_fully_masked_unmasks_the_first_position_of_empty_rows():
    mask = torch.tensor([[True, True], [False, True]])
    fixed = never_fully_masked(mask)
    assert fixed.tolist() == [[False, True], [False, True]]
    assert mask.tolist() == [[True, True], [False, True]]  # input untouched
