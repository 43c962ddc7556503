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
    outcome = compilation.compile_sequence_module(compiled, tmp_path / "cache", measure=False)
    assert outcome.compiled, outcome.detail
    assert "compiled in" in outcome.describe("v1") and str(tmp_path / "cache") in outcome.detail
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
    forward = model.sequence.first_layer
    outcome = compilation.compile_sequence_module(model, None)
    assert not outcome.compiled and outcome.failed and outcome.detail == "RuntimeError: Compiler: cc not found"
    assert "running eager, compiling failed" in outcome.describe("serving v3")
    assert model.sequence.first_layer == forward
    with torch.inference_mode():
        assert torch.isfinite(model(batch())).all()


def test_a_module_without_attention_is_left_eager_without_trying():
    outcome = compilation.compile_sequence_module(ranker("lstm", cross=0), None)
    assert not outcome.compiled and not outcome.failed and "eager (nothing to compile" in outcome.describe("v1")


def test_the_fastest_of_eager_and_both_compiled_kernels_is_kept_and_scores_as_eager(tmp_path):
    eager = ranker().eval()
    chosen = copy.deepcopy(eager)
    outcome = compilation.compile_sequence_module(chosen, tmp_path / "cache")
    for option in ("eager sdpa", "compiled sdpa", "compiled logits"):
        assert option in outcome.detail, outcome.detail
    kept = outcome.detail.split(": ")[-1].split(";")[0]  # e.g. "compiled logits kept"
    assert kept.endswith(" kept") and kept.split()[1] == chosen.sequence.attention_kernel
    assert outcome.compiled == kept.startswith("compiled")
    with torch.inference_mode():
        torch.testing.assert_close(chosen(batch(3)), eager(batch(3)), atol=1e-5, rtol=1e-4)


def test_a_training_warm_up_leaves_no_gradients(tmp_path):
    model = ranker().train()
    outcome = compilation.compile_sequence_module(model, tmp_path / "cache", training=True)
    assert outcome.compiled, outcome.detail
    assert all(p.grad is None for p in model.parameters())
    model(batch()).sum().backward()  # and it trains
    assert model.sequence.proj.weight.grad is not None
