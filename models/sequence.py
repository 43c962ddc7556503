"""User-sequence modules, compared like for like by the ranker.

A batch holds each distinct sequence once (the ~28 candidates of a request share it), so every
module takes the U sequences, an index from each of the B examples to its sequence, and returns
one vector per example:

    tokens     (U, L, P)  engaged-pin vectors of the user's latest L actions, newest first
    actions    (U, L)     action codes, 0 = padding
    action_ts  (U, L)     action timestamps in ms (0 where padded)
    index      (B,)       the example's sequence, in [0, U)
    request_ts (B,)       the impression's timestamp in ms
    candidate  (B, P)     the candidate pin's vector
    -> (B, out_dim)

What does not depend on the candidate is computed per sequence and gathered: the whole encoder
of avg-pool, CNN, RNN, LSTM and the pins-only transformer; TransAct's token projection of
``[action; pin]``. With ``index = arange(B)`` and one sequence per example this is the per-row
computation, to float rounding (``tests/models/test_sequence.py`` checks every module).

``padding`` below is a bool tensor, True where a position holds no action.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from homefeed import schema
from homefeed.config import TrainConfig


def train_default(knob: str):
    """A knob's default is stated once, in the training config."""
    return TrainConfig.model_fields[knob].default


@dataclass(frozen=True)
class SequenceConfig:
    seq_len: int = schema.SEQ_LEN
    pin_dim: int = 32  # P: width of a pin vector (content + id embedding); the ranker sets it
    action_dim: int = train_default("embedding_dim")
    d_model: int = train_default("d_model")
    num_layers: int = train_default("num_layers")
    num_heads: int = train_default("num_heads")
    dim_feedforward: int = train_default("dim_feedforward")
    dropout: float = train_default("dropout")
    time_window_ms: int = train_default("time_window_ms")
    time_window_mask_prob: float = train_default("time_window_mask_prob")
    kept_tokens: int = 10  # TransAct v1.1 keeps the first 10 output tokens + a max-pooled one

    @classmethod
    def from_train(cls, cfg: TrainConfig) -> "SequenceConfig":
        return cls(d_model=cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads, dim_feedforward=cfg.dim_feedforward,
                   action_dim=cfg.embedding_dim, dropout=cfg.dropout, time_window_ms=cfg.time_window_ms,
                   time_window_mask_prob=cfg.time_window_mask_prob)


def never_fully_masked(mask: torch.Tensor) -> torch.Tensor:
    """Unmask the first position of rows with nothing to attend (attention would give NaN).
    Without a data-dependent branch, so that a compiled module keeps one graph."""
    first = mask[:, :1] & ~mask.all(dim=1, keepdim=True)  # (B, 1)
    return torch.cat([first, mask[:, 1:]], dim=1)


def key_padding_mask(mask: torch.Tensor, training: bool) -> torch.Tensor | None:
    """The mask for attention, or None in eager inference when it hides nothing (full histories
    at serve time): the masked softmax cost ~18% of a 500-candidate request on CPU (paper sizes,
    277 → 233 ms) and is a no-op then. Training keeps it (checking would sync a GPU every step),
    and so does a compiled module (the check would break its graph; inductor fuses the mask)."""
    if training or torch.compiler.is_compiling():
        return mask
    return mask if bool(mask.any()) else None


def masked_mean(x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    keep = (~padding).unsqueeze(-1).to(x.dtype)  # (B, L, 1)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, D)


class SequenceModule(nn.Module):
    out_dim: int = 0

    def forward(self, tokens, actions, action_ts, index, request_ts, candidate):  # noqa: D401
        raise NotImplementedError


class CandidateIndependent(SequenceModule):
    """A module whose summary of a sequence ignores the candidate: encoded once per sequence."""

    def encode(self, tokens: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # (U, L, P), (U, L) -> (U, out_dim)

    def forward(self, tokens, actions, action_ts, index, request_ts, candidate):
        return self.encode(tokens, actions)[index]  # (U, D) -> (B, D)


class NoSequence(SequenceModule):
    """The control: the ranker without any realtime sequence."""

    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        self.out_dim = 0

    def forward(self, tokens, actions, action_ts, index, request_ts, candidate):
        return tokens.new_zeros(index.shape[0], 0)  # (B, 0)


class AveragePooling(CandidateIndependent):
    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        self.action_emb = nn.Embedding(schema.NUM_ACTION_CODES, cfg.pin_dim, padding_idx=schema.PADDING_ID)
        self.out_dim = cfg.pin_dim

    def encode(self, tokens, actions):
        padding = actions == schema.PADDING_ID  # (U, L)
        return masked_mean(tokens + self.action_emb(actions), padding)  # (U, P)


class ConvPooling(CandidateIndependent):
    """1-D convolutions over the sequence, max-pooled over valid positions."""

    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        self.action_emb = nn.Embedding(schema.NUM_ACTION_CODES, cfg.pin_dim, padding_idx=schema.PADDING_ID)
        self.conv = nn.Sequential(
            nn.Conv1d(cfg.pin_dim, cfg.d_model, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, padding=1),
        )
        self.out_dim = cfg.d_model

    def encode(self, tokens, actions):
        padding = actions == schema.PADDING_ID  # (U, L)
        x = (tokens + self.action_emb(actions)).masked_fill(padding.unsqueeze(-1), 0.0)  # kernels at the edge read zeros
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (U, L, D)
        x = x.masked_fill(padding.unsqueeze(-1), float("-inf")).amax(dim=1)  # (U, D)
        return torch.where(torch.isinf(x), torch.zeros_like(x), x)


class RecurrentPooling(CandidateIndependent):
    """An RNN or LSTM read oldest → newest; the last state summarises the sequence."""

    CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM}

    def __init__(self, cfg: SequenceConfig, cell: str):
        super().__init__()
        cell = self.CELLS[cell]
        self.action_emb = nn.Embedding(schema.NUM_ACTION_CODES, cfg.pin_dim, padding_idx=schema.PADDING_ID)
        self.rnn = cell(cfg.pin_dim, cfg.d_model, batch_first=True)
        self.out_dim = cfg.d_model

    def encode(self, tokens, actions):
        x = tokens + self.action_emb(actions)  # (U, L, P), newest first, padding on the right
        x = x.flip(1)  # oldest first with padding on the left: the last step is the newest action
        out, _ = self.rnn(x)  # (U, L, D)
        return out[:, -1]  # (U, D)


class VanillaTransformer(CandidateIndependent):
    """Transformer over engaged-pin vectors only (no actions, no candidate), mean-pooled."""

    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.pin_dim, cfg.d_model)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.out_dim = cfg.d_model

    def encode(self, tokens, actions):
        padding = never_fully_masked(actions == schema.PADDING_ID)  # (U, L)
        x = self.encoder(self.proj(tokens), src_key_padding_mask=key_padding_mask(padding, self.training))  # (U, L, D)
        return masked_mean(x, padding)  # (U, D)


class TransAct(SequenceModule):
    """TransAct: early fusion of the candidate, action embeddings, random time-window mask.

    v1.0 flattens all L output tokens; v1.1 keeps the first ``kept_tokens`` and a max-pooled token.
    Either way the flattened block is scaled by 1/sqrt(tokens kept).
    """

    def __init__(self, cfg: SequenceConfig, version: str):
        super().__init__()
        self.cfg, self.version = cfg, version
        self.action_emb = nn.Embedding(schema.NUM_ACTION_CODES, cfg.action_dim, padding_idx=schema.PADDING_ID)
        fused = 2 * cfg.pin_dim + cfg.action_dim  # [candidate, action, engaged pin]
        self.proj = nn.Linear(fused, cfg.d_model)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, batch_first=True
        )
        # No positional encoding: recency is carried by the newest-first order of the tokens.
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        kept = cfg.seq_len if version == "v1.0" else cfg.kept_tokens + 1
        self.out_dim = kept * cfg.d_model
        self.first_layer_per_sequence = True  # not a parameter: checkpoints load either way
        # How the first layer's attention is computed (both exact): "sdpa", torch's fused kernel over
        # per-candidate queries; or "logits", qs·ksᵀ once per sequence plus a per-candidate bias,
        # which wins only compiled and at wide heads. models.compilation chooses by measuring both.
        self.attention_kernel = "sdpa"

    def time_window_mask(self, action_ts: torch.Tensor, request_ts: torch.Tensor) -> torch.Tensor:
        """Training only: hide actions within a random window before the request (True = hidden).

        Each row draws a window in [0, time_window_ms); with probability 1 - p it is empty.
        """
        batch = action_ts.shape[0]
        span = torch.rand(batch, device=action_ts.device) * self.cfg.time_window_ms  # (B,)
        applied = torch.rand(batch, device=action_ts.device) < self.cfg.time_window_mask_prob  # (B,)
        age = request_ts.unsqueeze(1) - action_ts  # (B, L) ms before the request
        return applied.unsqueeze(1) & (age < span.unsqueeze(1))  # (B, L)

    def fused_projection(self, tokens, actions, index, candidate) -> tuple[torch.Tensor, torch.Tensor]:
        """``proj([candidate; action; pin])`` split exactly into its parts: W·[c; a; e] + b =
        W_ae·[a; e] (per sequence, no bias) + (W_c·c + b) (per candidate)."""
        P = candidate.shape[-1]
        w_candidate, w_sequence = self.proj.weight[:, :P], self.proj.weight[:, P:]  # (D, P), (D, A+P)
        per_sequence = nn.functional.linear(torch.cat([self.action_emb(actions), tokens], dim=-1), w_sequence)  # (U, L, D)
        per_candidate = nn.functional.linear(candidate, w_candidate, self.proj.bias)  # (B, D)
        return per_sequence, per_candidate

    def first_layer(self, s: torch.Tensor, c: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The first encoder layer over the tokens x_j = s_j + c, with its attention's sequence
        part computed once per sequence (exact; issue 34 has the algebra).

        With q = xW_q + b_q etc., per head: ``(qs_i + qc)·(ks_j + kc)`` differs from
        ``(qs_i + qc)·ks_j`` by a term constant in j, which the softmax cancels, so the keys are
        ks alone. So the Q/K/V projections of the L tokens run per sequence (U·L rows instead of
        B·L), and per candidate only ``c·W_q`` and ``c·W_v``, added by broadcasting. (The values
        keep ``vs_j + vc``: ``A·vs + vc`` would be exact only while each row of A sums to 1, which
        attention dropout breaks.) Masks and dropout are per row, as in the layer, and draw the
        same random bits for the same seed (a test holds it)."""
        layer = self.encoder.layers[0]
        attention = layer.self_attn
        D, H = attention.embed_dim, attention.num_heads
        B, L, dh = index.shape[0], s.shape[1], D // H
        w, b = attention.in_proj_weight, attention.in_proj_bias  # (3D, D), (3D,)
        qs, ks, vs = nn.functional.linear(s, w).chunk(3, dim=-1)  # each (U, L, D)
        qc = nn.functional.linear(c, w[:D], b[:D])  # (B, D)
        vc = nn.functional.linear(c, w[2 * D:], b[2 * D:])  # (B, D)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (U, L, D) -> (U, H, L, dh)
            return t.view(t.shape[0], L, H, dh).transpose(1, 2)

        v = heads(vs)[index] + vc.view(B, H, 1, dh)  # (B, H, L, dh)
        dropout = attention.dropout if self.training else 0.0
        if self.attention_kernel == "logits":
            out = _attention_from_sequence_logits(heads(qs), heads(ks), qc.view(B, H, dh), v, index, mask, dropout)
        else:
            q = heads(qs)[index] + qc.view(B, H, 1, dh)  # (B, H, L, dh)
            keep = None if mask is None else ~mask.view(B, 1, 1, L)  # True = attend
            out = nn.functional.scaled_dot_product_attention(q, heads(ks)[index], v, attn_mask=keep, dropout_p=dropout)  # (B, H, L, dh)
        # Laid out (L, B, D) in memory as nn.MultiheadAttention lays out its output, so that the
        # dropout after it draws the same bits for the same seed (dropout draws in memory order).
        out = out.permute(2, 0, 1, 3).reshape(L, B, D)  # (L, B, D)
        x = s[index] + c.unsqueeze(1)  # (B, L, D): the layer's input, for the residual
        # Post-norm, as nn.TransformerEncoderLayer (norm_first=False) computes it.
        x = layer.norm1(x + layer.dropout1(attention.out_proj(out).transpose(0, 1)))
        return layer.norm2(x + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))))

    def forward(self, tokens, actions, action_ts, index, request_ts, candidate):
        mask = actions[index] == schema.PADDING_ID  # (B, L)
        if self.training and self.cfg.time_window_ms > 0:
            mask = mask | self.time_window_mask(action_ts[index], request_ts)
        mask = never_fully_masked(mask)
        # The mask hides keys only, as in the paper: a hidden position's own output row still carries
        # its token through the residual path. Zeroing those rows was measured (400k simulated
        # impressions, before the scaling below): v1.1 test repin AUC 0.7273 vs 0.7328, v1.0 unchanged.
        padding = key_padding_mask(mask, self.training)
        per_sequence, per_candidate = self.fused_projection(tokens, actions, index, candidate)  # (U, L, D), (B, D)
        if self.first_layer_per_sequence:
            x = self.first_layer(per_sequence, per_candidate, index, padding)  # (B, L, D)
        else:  # the per-row computation it replaces (benchmarks compare the two)
            x = self.encoder.layers[0](per_sequence[index] + per_candidate.unsqueeze(1), src_key_padding_mask=padding)
        for layer in self.encoder.layers[1:]:
            x = layer(x, src_key_padding_mask=padding)  # (B, L, D)
        if self.version == "v1.0":
            kept = x  # (B, L, D)
        else:
            pooled = x.masked_fill(mask.unsqueeze(-1), float("-inf")).amax(dim=1, keepdim=True)  # (B, 1, D)
            kept = torch.cat([x[:, : self.cfg.kept_tokens], pooled], dim=1)  # (B, K+1, D)
        # Scaled so the flattened block enters the MLP with the norm of one token: unscaled, v1.0's
        # L·D = 3,200 inputs swamped the ~100 others (validation repin AUC 0.63 vs 0.71 after one
        # epoch on 400k simulated impressions); v1.1 measured the same either way.
        return kept.flatten(1) * kept.shape[1] ** -0.5  # (B, L*D) for v1.0, (B, (K+1)*D) for v1.1


def _attention_from_sequence_logits(qs, ks, qc, v, index, mask, dropout: float) -> torch.Tensor:
    """softmax_j(qs_i·ks_j + qc·ks_j + mask_j) · v with ``qs·ksᵀ`` computed once per sequence and
    ``qc·ksᵀ`` one (L,) bias per candidate: the first-layer algebra of issue 34, written so that
    inductor fuses the gather, the bias, the mask, the softmax and the matmul.

    qs, ks (U, H, L, dh) per sequence; qc (B, H, dh) per candidate; v (B, H, L, dh); index (B,);
    mask (B, L) True where hidden, or None -> (B, H, L, dh)."""
    scale = qs.shape[-1] ** -0.5
    per_sequence = (qs * scale) @ ks.transpose(-1, -2)  # (U, H, L, L)
    keys = ks[index]  # (B, H, L, dh)
    bias = (keys @ (qc * scale).unsqueeze(-1)).squeeze(-1)  # (B, H, L): the candidate's term per key
    logits = per_sequence[index] + bias.unsqueeze(2)  # (B, H, L, L)
    if mask is not None:
        logits = logits.masked_fill(mask[:, None, None, :], float("-inf"))
    weights = nn.functional.dropout(logits.softmax(dim=-1), dropout, training=dropout > 0)  # (B, H, L, L)
    return weights @ v  # (B, H, L, dh)


def build_sequence_module(name: str, cfg: SequenceConfig) -> SequenceModule:
    """The sequence module of the model called ``name`` in ``models.catalog``."""
    from models import catalog

    model = catalog.entry(name)
    if model.kind != "sequence":
        raise ValueError(f"{name!r} is a {model.kind} model, not a sequence module; choose one of {list(catalog.SEQUENCE_MODULE_NAMES)}")
    return model.build(cfg)
