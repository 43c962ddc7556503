"""Compiling TransAct: the same outputs as eager, any request size after the warm-up, a cache
under the given directory, and eager with one line of why when compiling fails."""

import copy

import pytest
import torch

from models import compilation
from tests.models.test_ranker import batch, ranker

pytestmark = pytest.mark.slow  # inductor builds C++ (~20 s)


def test_a_compiled_transact_scores_as_eager_at_any_size_and_caches_its_kernels(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    eager = ranker().eval()
    compiled = copy.deepcopy(eager)
    outcome = compilation.compile_sequence_module(compiled, tmp_path / "cache")
    assert outcome.compiled, outcome.detail
    assert "compiled in" in outcome.describe("v1") and str(tmp_path / "cache") in outcome.detail
    assert "attention kernel" in outcome.detail and compiled.sequence.attention_kernel in ("sdpa", "logits")
    assert any((tmp_path / "cache").rglob("*.py"))  # inductor's generated kernels
    with torch.inference_mode():
        for seed in (1, 2):  # another batch of another size than the warm-up's
            data = {k: v[: 5 + 6 * seed] for k, v in batch(seed).items()}
            torch.testing.assert_close(compiled(data), eager(data), atol=1e-5, rtol=1e-4)


def test_compiling_that_fails_leaves_the_module_eager_and_says_why(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Compiler: cc not found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    model = ranker().eval()
    forward = model.sequence.forward
    outcome = compilation.compile_sequence_module(model, None)
    assert not outcome.compiled and outcome.detail == "RuntimeError: Compiler: cc not found"
    assert "running eager, compiling failed" in outcome.describe("serving v3")
    assert model.sequence.forward == forward
    with torch.inference_mode():
        assert torch.isfinite(model(batch())).all()


def test_a_module_without_attention_is_left_eager_without_trying():
    outcome = compilation.compile_sequence_module(ranker("lstm", cross=0), None)
    assert not outcome.compiled and not outcome.attempted and "eager (nothing to compile" in outcome.describe("v1")


def test_a_training_warm_up_leaves_no_gradients(tmp_path):
    model = ranker().train()
    outcome = compilation.compile_sequence_module(model, tmp_path / "cache", training=True)
    assert outcome.compiled, outcome.detail
    assert all(p.grad is None for p in model.parameters())
    model(batch()).sum().backward()  # and it trains
    assert model.sequence.proj.weight.grad is not None
