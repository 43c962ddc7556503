"""Name → model, and one scoring interface over every kind of trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from homefeed import schema
from models import BASELINE_NAMES, MODEL_NAMES
from models.baselines import FlatBaseline
from models.compilation import CompileOutcome, compile_sequence_module
from models.ranker import Ranker

MODEL_INFO = "model_info.json"


class Scorer(Protocol):
    name: str

    def predict(self, table: pa.Table) -> np.ndarray:
        """(N, H) action probabilities, columns in schema.HEADS order."""


class NeuralScorer:
    def __init__(self, name: str, ranker: Ranker, batch_size: int = 4096):
        self.name, self.ranker, self.batch_size = name, ranker.eval(), batch_size

    def compile(self, cache_dir: Path | None) -> CompileOutcome:
        """Compile the ranker's sequence module and warm it for scoring (models.compilation)."""
        return compile_sequence_module(self.ranker, cache_dir)

    def add_pins(self, pin_ids: np.ndarray, vectors: np.ndarray) -> int:
        """Pins met after training (a newer snapshot's) into the ranker's table (Ranker.add_pins)."""
        return self.ranker.add_pins(pin_ids, vectors)

    def predict(self, table: pa.Table) -> np.ndarray:
        from homefeed.data import to_tensors

        seq_len = self.ranker.cfg.sequence.seq_len
        device = self.ranker.pins.content.device
        out = []
        with torch.inference_mode():
            for start in range(0, table.num_rows, self.batch_size):
                batch = {k: v.to(device) for k, v in to_tensors(table.slice(start, self.batch_size), seq_len).items()}
                out.append(torch.sigmoid(self.ranker(batch).float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(schema.HEADS)), dtype=np.float32)


class BaselineScorer:
    def __init__(self, name: str, baseline: FlatBaseline):
        self.name, self.baseline = name, baseline

    def predict(self, table: pa.Table) -> np.ndarray:
        return self.baseline.predict(table)

    def compile(self, cache_dir: Path | None) -> CompileOutcome:
        return CompileOutcome(False, 0.0, "nothing to compile: a baseline has no sequence module")

    def add_pins(self, pin_ids: np.ndarray, vectors: np.ndarray) -> int:
        return 0  # a baseline reads each row's candidate vector, whatever the pin


def write_model_info(directory: str | Path, name: str, extra: dict | None = None) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}")
    Path(directory, MODEL_INFO).write_text(json.dumps({"model": name, **(extra or {})}, indent=2))


def load_scorer(directory: str | Path) -> Scorer:
    directory = Path(directory)
    info_path = directory / MODEL_INFO
    if not info_path.exists():
        raise FileNotFoundError(f"no trained model at {directory} ({MODEL_INFO} missing)")
    name = json.loads(info_path.read_text())["model"]
    if name in BASELINE_NAMES:
        return BaselineScorer(name, FlatBaseline.load(directory))
    return NeuralScorer(name, Ranker.load(directory))
