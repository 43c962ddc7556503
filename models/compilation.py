"""``torch.compile`` for TransAct's first layer: measured before it is kept, warmed, cached, eager on failure.

Which first layer is fastest depends on the sizes and the machine (``benchmarks/serving.py
--sections transact``: compiled "sdpa" at d_model 32; eager in the whole model at the paper's 96),
so for inference the eager layer and both compiled exact attention kernels are timed on a
512-candidate request at load and the fastest is kept; training compiles "sdpa". Compiling costs
seconds (inductor writes C++ and builds it): done once at load, on synthetic inputs of two batch
sizes (so the candidate count is dynamic from the first request) with full and short histories,
with inductor's cache under the storage root so that the next start reuses the kernels. Used by
the service (``serving.compile``), pool scoring and training (``train.compile``). Anything that
fails while compiling (no C++ compiler, an unsupported op) leaves the layer eager, and the
outcome says why in one line.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from homefeed import schema

# Two request sizes at warm-up: the second marks the batch size dynamic, so a request of any
# size reuses the same kernels (sizes 0 and 1 are special to the compiler; these are neither).
WARM_BATCHES = (7, 9)
KERNELS = ("sdpa", "logits")  # TransAct.attention_kernel's choices, both exact
TIMING_BATCH, TIMING_CALLS = 512, 5


@dataclass(frozen=True)
class CompileOutcome:
    compiled: bool
    seconds: float
    detail: str  # the measured choice and where the kernels are cached, or why the module stayed eager
    failed: bool = False

    def describe(self, what: str) -> str:
        if self.compiled:
            return f"{what}: compiled in {self.seconds:.1f} s ({self.detail})"
        if self.failed:
            return f"{what}: running eager, compiling failed after {self.seconds:.1f} s: {self.detail}"
        return f"{what}: eager ({self.detail})"


def compile_cache_dir(storage_root: str | Path) -> Path:
    """Where inductor keeps its kernels: under the storage root (``storage.root``, a local path or
    ``file://`` URI), not inductor's own ``/tmp/torchinductor_<user>``."""
    from homefeed import storage

    return storage.local_path(storage_root) / "compile-cache"


def compile_sequence_module(ranker: torch.nn.Module, cache_dir: Path | None, training: bool = False,
                            measure: bool = True) -> CompileOutcome:
    """Compile TransAct's first layer in place and run it on synthetic inputs (forward only for
    inference; forward and backward for training, gradients cleared after). For inference,
    ``measure`` keeps the fastest of eager and the compiled kernels (otherwise compiled "sdpa").
    On any failure the eager layer is restored."""
    from models.sequence import TransAct

    module = ranker.sequence
    if not isinstance(module, TransAct):
        return CompileOutcome(False, 0.0, f"nothing to compile: {type(module).__name__} encodes each sequence once")
    started = time.monotonic()
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Inductor reads its cache's place from here whenever it needs it (and, when unset, sets
        # its own default in /tmp on first use): set it for this compilation.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    # Only the first layer is compiled: the later layers keep torch's fused inference kernel,
    # which compiling the whole module replaced by slower code at the paper's sizes (measured).
    eager, eager_kernel = module.first_layer, module.attention_kernel
    try:
        compiled = torch.compile(eager, dynamic=True)
        module.first_layer = compiled
        if training or not measure:
            chosen = f"attention kernel {module.attention_kernel}"
        else:
            chosen = _choose(module, eager, compiled)
        if module.first_layer is compiled:
            for batch in WARM_BATCHES:
                _warm(module, batch, training)
    except Exception as exc:  # the service must keep serving: eager, and say why
        module.first_layer, module.attention_kernel = eager, eager_kernel
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return CompileOutcome(False, time.monotonic() - started, f"{type(exc).__name__}: {first[:300]}", failed=True)
    finally:
        if training:
            ranker.zero_grad(set_to_none=True)
    if module.first_layer is eager:
        return CompileOutcome(False, time.monotonic() - started, chosen)
    where = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "inductor's default cache")
    return CompileOutcome(True, time.monotonic() - started, f"{chosen}; kernels cached in {where}")


def _choose(module: torch.nn.Module, eager, compiled) -> str:
    """The fastest first layer, measured here on a request of ``TIMING_BATCH`` candidates (the
    median of a few calls each): eager (torch's fused SDPA kernel) or compiled with either exact
    attention kernel. Which wins depends on the sizes and the machine (2 CPU cores: compiled
    "sdpa" at d_model 32; at the paper's 96 neither compiled kernel beat eager in the whole model),
    so it is measured, not assumed. Leaves the winner set on the module."""
    options = [("eager", "sdpa", eager)] + [("compiled", kernel, compiled) for kernel in KERNELS]
    seconds = {}
    for mode, kernel, first_layer in options:
        module.first_layer, module.attention_kernel = first_layer, kernel
        _warm(module, TIMING_BATCH, training=False)
        calls = []
        for _ in range(TIMING_CALLS):
            started = time.perf_counter()
            _call(module, TIMING_BATCH, False, module.cfg.seq_len)
            calls.append(time.perf_counter() - started)
        seconds[(mode, kernel)] = sorted(calls)[len(calls) // 2]
    (mode, kernel), _ = min(seconds.items(), key=lambda item: item[1])
    module.first_layer, module.attention_kernel = (eager if mode == "eager" else compiled), kernel
    timings = ", ".join(f"{m} {k} {1000 * v:.1f} ms" for (m, k), v in sorted(seconds.items(), key=lambda item: item[1]))
    return f"first layer on {TIMING_BATCH} candidates: {timings}: {mode} {kernel} kept"


def _warm(module: torch.nn.Module, batch: int, training: bool) -> None:
    """Calls on a sequence shared by ``batch`` candidates, as a request is scored: a full history
    and a short one (the mask is then applied: another graph, compiled now, not at a request)."""
    for length in (module.cfg.seq_len, module.cfg.seq_len // 2):
        _call(module, batch, training, length)


def _call(module: torch.nn.Module, batch: int, training: bool, length: int) -> None:
    cfg = module.cfg
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randn(1, cfg.seq_len, cfg.pin_dim, generator=generator).to(device)  # (U, L, P)
    actions = torch.randint(1, schema.NUM_ACTION_CODES, (1, cfg.seq_len), generator=generator).to(device)  # (U, L)
    actions[:, length:] = schema.PADDING_ID
    action_ts = torch.arange(cfg.seq_len, 0, -1, device=device).unsqueeze(0) * 1000  # (U, L) newest first
    index = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
    request_ts = torch.full((batch,), cfg.seq_len * 1000 + 1, device=device)  # (B,)
    candidate = torch.randn(batch, cfg.pin_dim, generator=generator).to(device)  # (B, P)
    was_training = module.training
    module.train(training)
    try:
        if training:
            module(tokens, actions, action_ts, index, request_ts, candidate).sum().backward()
        else:
            with torch.inference_mode():
                module(tokens, actions, action_ts, index, request_ts, candidate)
    finally:
        module.train(was_training)
