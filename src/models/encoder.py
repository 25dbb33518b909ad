"""Chunk encoder: the L frames of one chunk and one stream -> one latent vector."""
from __future__ import annotations

import torch
from torch import nn

from src.config import ModelConfig
from src.data import keypoints as kp
from src.models.layers import StreamFrameEmbedding, Transformer

POOLS = ("attention", "mean", "flatten")


class ChunkEncoder(nn.Module):
    """Per-stream input projections, one shared transformer, pooled per (chunk, stream).

    Chunks never see each other, so tokens can be produced while a video still plays.
    """

    def __init__(self, cfg: ModelConfig, chunk_len: int):
        super().__init__()
        if cfg.pool not in POOLS:
            raise ValueError(f"model.pool must be one of {', '.join(POOLS)}, got {cfg.pool!r}")
        self.pool = cfg.pool
        self.embed = StreamFrameEmbedding(cfg, len(kp.STREAMS), chunk_len)
        # Each point gives (x, y, observed): the flag tells filled-in points from seen ones.
        self.inputs = nn.ModuleDict(
            {s.name: nn.Linear(3 * s.num_keypoints, self.embed.in_width) for s in kp.STREAMS})
        self.transformer = Transformer(cfg, cfg.enc_layers)
        self.query = nn.Parameter(torch.randn(cfg.width) * 0.02) if cfg.pool == "attention" else None
        # flatten: the L frame tokens side by side, so no frame's detail is averaged away.
        pooled_width = cfg.width * chunk_len if cfg.pool == "flatten" else cfg.width
        self.out = nn.Linear(pooled_width, cfg.latent_dim)

    def forward(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """x (N, L, P, 2) standardised coordinates, observed (N, L, P) bool -> z (N, S, latent_dim)."""
        n, length = x.shape[:2]
        feats = torch.cat([x, observed[..., None].to(x.dtype)], dim=-1)  # (N, L, P, 3)
        h = torch.stack([self.inputs[name](feats[:, :, sl].flatten(2))
                         for name, sl in kp.STREAM_SLICES.items()], dim=1)  # (N, S, L, in_width)
        h = self.embed(h)
        s, width = h.shape[1], h.shape[-1]
        h = self.transformer(h.reshape(n * s, length, width))  # (N*S, L, W)
        if self.pool == "flatten":
            pooled = h.flatten(1)                                          # (N*S, L*W)
        elif self.pool == "mean":
            pooled = h.mean(dim=1)
        else:
            weights = torch.softmax(h @ self.query / width ** 0.5, dim=1)  # (N*S, L)
            pooled = (weights[..., None] * h).sum(dim=1)
        return self.out(pooled).view(n, s, -1)
