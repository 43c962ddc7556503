"""The neural ranker: features + a user-sequence module → (optional DCN v2) → MLP → one head per action.

Input batch (a dict of tensors, built by ``homefeed.data``):

    dense        (B, F)  standardised dense features (schema.DENSE_FEATURES)
    <categorical> (B,)   one long tensor per schema.CATEGORICAL_FEATURES
    pin_id       (B,)    candidate pin ids
    ts           (B,)    request timestamps, ms
    seq_pin_id   (U, L)  engaged pins of the batch's U distinct sequences, newest first, 0 = padding
    seq_action   (U, L)  action codes
    seq_ts       (U, L)  action timestamps, ms
    seq_index    (B,)    each example's sequence; absent: one sequence per example (U = B)

Output: logits (B, H), one column per schema.HEADS.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from homefeed import schema
from homefeed.config import TrainConfig
from models import catalog
from models.sequence import SequenceConfig, train_default, build_sequence_module

PIN_ID_BUCKETS = 1 << 16


@dataclass(frozen=True)
class RankerConfig:
    sequence_module: str = train_default("model")
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    id_dim: int = train_default("embedding_dim")
    categorical_dim: int = 8
    # DCN v2 layers over the full feature vector; None: the model's own (models.catalog: TransAct v1.1's 2).
    cross_layers: int | None = None
    mlp_dims: tuple[int, ...] = (128, 64)
    dropout: float = train_default("dropout")
    # Sequence tokens (and the candidate fused into them) with the learned id embedding beside the
    # content vector; off: content only, as TransAct uses PinSage (see PinEncoder).
    id_tokens: bool = train_default("id_tokens")
    # How many of each action type the request's sequence holds (log1p), among the flat features:
    # a user's propensity, readable without a sequence module (`none` included).
    sequence_counts: bool = train_default("sequence_counts")
    # The pin table's per-dimension standardisation (pin_content_table), so pins met after training
    # (a newer snapshot's) are scaled as the trained ones; None in models saved before it was kept.
    content_mean: tuple[float, ...] | None = None
    content_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.cross_layers is None:
            object.__setattr__(self, "cross_layers", catalog.entry(self.sequence_module).cross_layers)

    @classmethod
    def from_train(cls, cfg: TrainConfig) -> "RankerConfig":
        """The ranker the training config describes: its model's entry, its knobs."""
        return cls(sequence_module=cfg.model, sequence=SequenceConfig.from_train(cfg), id_dim=cfg.embedding_dim,
                   dropout=cfg.dropout, id_tokens=cfg.id_tokens, sequence_counts=cfg.sequence_counts)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RankerConfig":
        data = json.loads(text)
        data["sequence"] = SequenceConfig(**data["sequence"])
        data["mlp_dims"] = tuple(data["mlp_dims"])
        for key in ("content_mean", "content_std"):
            data[key] = tuple(data[key]) if data.get(key) is not None else None
        return cls(**data)


class PinEncoder(nn.Module):
    """Pin ids → frozen content embeddings (the PinSage stand-in), plus a learned hashed id embedding.

    Sequence tokens use the content embedding alone, as TransAct uses PinSage: a learned
    embedding per engaged pin overfits quickly and hides the content similarity the sequence
    modules need. The candidate's own feature vector adds the learned id embedding.
    """

    def __init__(self, content: torch.Tensor, id_dim: int):
        super().__init__()
        self.register_buffer("content", content)  # (num_pins + 1, E); row 0 is padding / unknown
        self.id_emb = nn.Embedding(PIN_ID_BUCKETS, id_dim, padding_idx=0)
        self.content_dim = content.shape[1]
        self.out_dim = content.shape[1] + id_dim

    def content_of(self, pin_id: torch.Tensor) -> torch.Tensor:
        known = pin_id < self.content.shape[0]
        return self.content[torch.where(known, pin_id, torch.zeros_like(pin_id))]  # (..., E)

    def forward(self, pin_id: torch.Tensor) -> torch.Tensor:
        bucket = torch.where(pin_id > 0, 1 + pin_id % (PIN_ID_BUCKETS - 1), torch.zeros_like(pin_id))
        return torch.cat([self.content_of(pin_id), self.id_emb(bucket)], dim=-1)  # (..., E + id_dim)


NUM_COUNTED_ACTIONS = schema.NUM_ACTION_CODES - 1  # every action code but padding


def action_counts(seq_action: torch.Tensor) -> torch.Tensor:
    """(U, L) action codes → (U, A) log1p of how often each action code (padding left out) occurs."""
    counts = nn.functional.one_hot(seq_action, schema.NUM_ACTION_CODES).sum(dim=1)[:, 1:]  # (U, A)
    return torch.log1p(counts.float())


class CrossNetworkV2(nn.Module):
    """DCN v2: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, explicit feature crossing."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0  # (B, D)
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x  # (B, D)


class Ranker(nn.Module):
    def __init__(self, cfg: RankerConfig, pin_content: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.pins = PinEncoder(pin_content, cfg.id_dim)
        token_dim = self.pins.out_dim if cfg.id_tokens else self.pins.content_dim
        seq_cfg = SequenceConfig(**{**asdict(cfg.sequence), "pin_dim": token_dim})
        self.sequence = build_sequence_module(cfg.sequence_module, seq_cfg)
        self.categorical = nn.ModuleDict(
            {name: nn.Embedding(size, cfg.categorical_dim) for name, size in schema.CATEGORICAL_FEATURES.items()}
        )
        width = (
            len(schema.DENSE_FEATURES)
            + len(schema.CATEGORICAL_FEATURES) * cfg.categorical_dim
            + self.pins.out_dim
            + self.sequence.out_dim
            + (NUM_COUNTED_ACTIONS if cfg.sequence_counts else 0)
        )
        self.cross = CrossNetworkV2(width, cfg.cross_layers) if cfg.cross_layers else nn.Identity()
        mlp: list[nn.Module] = []
        for dim in cfg.mlp_dims:
            mlp += [nn.Linear(width, dim), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = dim
        self.mlp = nn.Sequential(*mlp)
        self.heads = nn.Linear(width, len(schema.HEADS))  # one logit per action head

    def init_head_bias(self, label_rates: dict[str, float]) -> None:
        """Start each head at its base rate: logit(rate).

        Adam moves a bias by about the learning rate per step, so a hide head (≈1% positives)
        starting at p = 0.5 would spend the whole default budget walking its bias down, and
        the shared layers would learn "hide is rare" instead of what predicts it.
        """
        rates = torch.tensor([label_rates[h] for h in schema.HEADS], dtype=self.heads.bias.dtype).clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            self.heads.bias.copy_(torch.log(rates / (1 - rates)))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        candidate = self.pins(batch["pin_id"])  # (B, E + id_dim)
        index = batch.get(schema.SEQ_INDEX)
        if index is None:
            index = torch.arange(batch["pin_id"].shape[0], device=batch["pin_id"].device)  # (B,)
        seq_pin_id = batch[schema.SEQ_PIN_ID]
        if self.sequence.out_dim == 0:  # the control reads no sequence: skip the (U, L, E) gather
            seq_pin_id = seq_pin_id[:, :0]
        if self.cfg.id_tokens:
            tokens = self.pins(seq_pin_id)  # (U, L, E + id_dim)
            candidate_content = candidate  # (B, E + id_dim), fused into the sequence
        else:
            tokens = self.pins.content_of(seq_pin_id)  # (U, L, E)
            candidate_content = self.pins.content_of(batch["pin_id"])  # (B, E), fused into the sequence
        seq = self.sequence(tokens, batch[schema.SEQ_ACTION], batch[schema.SEQ_TS], index, batch["ts"], candidate_content)  # (B, S)
        cats = [emb(batch[name]) for name, emb in self.categorical.items()]  # C × (B, c)
        counts = [action_counts(batch[schema.SEQ_ACTION])[index]] if self.cfg.sequence_counts else []  # (B, A)
        x = torch.cat([batch["dense"], *cats, candidate, seq, *counts], dim=-1)  # (B, W)
        return self.heads(self.mlp(self.cross(x)))  # (B, H)

    def add_pins(self, pin_ids: np.ndarray, vectors: np.ndarray) -> int:
        """Give the pins the table lacks their vectors (raw, as the table was built from), scaled as
        the trained ones; pins it has keep theirs. Returns how many were added; none for a model
        saved without its scaling. The table is replaced whole, so a forward pass running meanwhile
        reads the old or the new one, never half of each."""
        if self.cfg.content_mean is None or not len(pin_ids):
            return 0
        table = self.pins.content
        pin_ids = np.asarray(pin_ids, dtype=np.int64)
        known = np.zeros(len(pin_ids), dtype=bool)
        inside = (pin_ids > 0) & (pin_ids < table.shape[0])
        known[inside] = table[torch.from_numpy(pin_ids[inside])].abs().sum(dim=1).numpy() > 0
        new = (pin_ids > 0) & ~known
        if not new.any():
            return 0
        scaled = (np.asarray(vectors, np.float64)[new] - np.asarray(self.cfg.content_mean)) / np.asarray(self.cfg.content_std)
        grown = torch.zeros((max(table.shape[0], int(pin_ids.max()) + 1), table.shape[1]), dtype=table.dtype, device=table.device)
        grown[: table.shape[0]] = table
        grown[torch.from_numpy(pin_ids[new]).to(table.device)] = torch.from_numpy(scaled.astype(np.float32)).to(table.device)
        self.pins.content = grown
        return int(new.sum())

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ranker_config.json").write_text(self.cfg.to_json())
        torch.save(self.state_dict(), directory / "ranker.pt")

    @classmethod
    def load(cls, directory: str | Path, map_location: str = "cpu") -> "Ranker":
        directory = Path(directory)
        cfg = RankerConfig.from_json((directory / "ranker_config.json").read_text())
        state = torch.load(directory / "ranker.pt", map_location=map_location, weights_only=True)
        model = cls(cfg, torch.zeros_like(state["pins.content"]))
        model.load_state_dict(state)
        model.eval()
        return model


def weighted_bce(
    logits: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor, head_weights: torch.Tensor
) -> torch.Tensor:
    """Per-head BCE, weighted per example (undoing negative sampling) and per head."""
    per = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (B, H)
    per = per * sample_weight.unsqueeze(1) * head_weights.unsqueeze(0)
    return per.sum() / (sample_weight.sum() * head_weights.sum()).clamp(min=1e-12)


def content_scaling(embeddings: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Each dimension's mean and standard deviation (at least 1e-6) over the known pins."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    return tuple(embeddings.mean(axis=0).tolist()), tuple(np.maximum(embeddings.std(axis=0), 1e-6).tolist())


def pin_content_table(pin_ids: np.ndarray, embeddings: np.ndarray) -> torch.Tensor:
    """A dense (max_id + 1, E) table of standardised content embeddings; row 0 and unknown ids are zeros.

    Each dimension is scaled to mean 0 and standard deviation 1 over the known pins. Raw content
    embeddings are unit-norm (each component ≈ 1/√E), far smaller than the N(0, 1) learned action
    embeddings they are summed or fused with, so without this the sequence modules barely read them.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if len(embeddings):
        mean, std = content_scaling(embeddings)
        embeddings = (embeddings - np.asarray(mean)) / np.asarray(std)
    table = np.zeros((int(pin_ids.max(initial=0)) + 1, embeddings.shape[1]), dtype=np.float32)
    table[pin_ids] = embeddings
    return torch.from_numpy(table)
