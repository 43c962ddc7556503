"""A straightforward TransAct v1.1 ranker: the benchmark's reference for the same architecture.

Written the plain way on purpose (one module, nn.TransformerEncoder, fp32, no compilation), with
the same inputs, widths and heads as ``models.ranker.Ranker`` configured for ``transact_v11``.
"""

from __future__ import annotations

import torch
from torch import nn

from homefeed import schema
from models.sequence import SequenceConfig


class ReferenceTransAct(nn.Module):
    def __init__(self, pin_content: torch.Tensor, cfg: SequenceConfig, id_dim: int = 16, cat_dim: int = 8, buckets: int = 1 << 16):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("content", pin_content)
        self.id_emb = nn.Embedding(buckets, id_dim)
        self.buckets = buckets
        pin_dim = pin_content.shape[1] + id_dim
        content_dim = pin_content.shape[1]
        self.action_emb = nn.Embedding(schema.NUM_ACTION_CODES, cfg.action_dim)
        self.proj = nn.Linear(2 * content_dim + cfg.action_dim, cfg.d_model)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.cats = nn.ModuleList(nn.Embedding(size, cat_dim) for size in schema.CATEGORICAL_FEATURES.values())
        width = len(schema.DENSE_FEATURES) + len(schema.CATEGORICAL_FEATURES) * cat_dim + pin_dim + (cfg.kept_tokens + 1) * cfg.d_model
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(2))
        self.mlp = nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.1))
        self.heads = nn.Linear(64, len(schema.HEADS))

    def pin(self, ids):
        content = self.content[ids.clamp(max=self.content.shape[0] - 1)]
        return torch.cat([content, self.id_emb(ids % self.buckets)], dim=-1)

    def forward(self, batch):
        candidate = self.pin(batch["pin_id"])
        tokens = self.content[batch[schema.SEQ_PIN_ID].clamp(max=self.content.shape[0] - 1)]
        candidate_content = self.content[batch["pin_id"].clamp(max=self.content.shape[0] - 1)]
        actions = batch[schema.SEQ_ACTION]
        mask = actions == 0
        if self.training:
            span = torch.rand(actions.shape[0], device=actions.device) * self.cfg.time_window_ms
            age = batch["ts"].unsqueeze(1) - batch[schema.SEQ_TS]
            mask = mask | ((torch.rand(actions.shape[0], device=actions.device) < self.cfg.time_window_mask_prob).unsqueeze(1) & (age < span.unsqueeze(1)))
        mask[mask.all(dim=1), 0] = False
        fused = torch.cat([candidate_content.unsqueeze(1).expand(-1, tokens.shape[1], -1), self.action_emb(actions), tokens], dim=-1)
        out = self.encoder(self.proj(fused), src_key_padding_mask=mask)
        pooled = out.masked_fill(mask.unsqueeze(-1), float("-inf")).max(dim=1, keepdim=True).values
        seq = torch.cat([out[:, : self.cfg.kept_tokens], pooled], dim=1).flatten(1)
        x0 = torch.cat([batch["dense"], *[emb(batch[n]) for emb, n in zip(self.cats, schema.CATEGORICAL_FEATURES)], candidate, seq], dim=-1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.heads(self.mlp(x))
