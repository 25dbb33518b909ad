"""Chunk encoder: the L frames of one chunk and one stream -> one latent vector."""
from __future__ import annotations

import torch
from torch import nn

from src.config import ModelConfig
from src.data import keypoints as kp
from src.models.layers import PoolGroups, StreamFrameEmbedding, Transformer


class ChunkEncoder(nn.Module):
    """Per-stream input projections, one shared transformer, pooled per (chunk, stream).

    Chunks never see each other, so tokens can be produced while a video still plays.
    """

    def __init__(self, cfg: ModelConfig, chunk_len: int):
        super().__init__()
        self.pools = PoolGroups(cfg.pool)
        self.embed = StreamFrameEmbedding(cfg, len(kp.STREAMS), chunk_len)
        # Each point gives (x, y, observed): the flag tells filled-in points from seen ones.
        self.inputs = nn.ModuleDict(
            {s.name: nn.Linear(3 * s.num_keypoints, self.embed.in_width) for s in kp.STREAMS})
        self.transformer = Transformer(cfg, cfg.enc_layers)
        self.query = nn.Parameter(torch.randn(cfg.width) * 0.02) if "attention" in self.pools.kinds else None
        # flatten: the L frame tokens side by side, so no frame's detail is averaged away.
        self.out = nn.ModuleDict({
            kind: nn.Linear(cfg.width * (chunk_len if kind == "flatten" else 1), cfg.latent_dim)
            for kind in self.pools.kinds})
        # The linear path sees the whole chunk at once, so a linear (PCA-like) code of it is
        # directly in reach; on real pose that kept more than the transformer alone (docs/history/experiments.md).
        self.linear = nn.ModuleDict(
            {s.name: nn.Linear(2 * chunk_len * s.num_keypoints, cfg.latent_dim) for s in kp.STREAMS}
        ) if cfg.linear_path else None

    def forward(self, x: torch.Tensor, observed: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, L, P, 2) standardised coordinates, observed (N, L, P) bool -> z (N, S, latent_dim).

        ``cond`` (N, S, width), added to every frame token: the temporal context, if any.
        """
        n, length = x.shape[:2]
        feats = torch.cat([x, observed[..., None].to(x.dtype)], dim=-1)  # (N, L, P, 3)
        h = torch.stack([self.inputs[name](feats[:, :, sl].flatten(2))
                         for name, sl in kp.STREAM_SLICES.items()], dim=1)  # (N, S, L, in_width)
        h = self.embed(h)
        if cond is not None:
            h = h + cond[:, :, None, :]
        s, width = h.shape[1], h.shape[-1]
        h = self.transformer(h.reshape(n * s, length, width)).view(n, s, length, width)
        z = self.pools.join([self.out[kind](self._pool(kind, g))
                             for kind, g in zip(self.pools.kinds, self.pools.split(h))])
        if self.linear is not None:
            z = z + torch.stack([self.linear[name](x[:, :, sl].flatten(1))
                                 for name, sl in kp.STREAM_SLICES.items()], dim=1)
        return z

    def _pool(self, kind: str, h: torch.Tensor) -> torch.Tensor:
        """(N, S_group, L, W) -> (N, S_group, W), or (N, S_group, L*W) for flatten."""
        if kind == "flatten":
            return h.flatten(2)
        if kind == "mean":
            return h.mean(dim=2)
        weights = torch.softmax(h @ self.query / h.shape[-1] ** 0.5, dim=2)  # (N, S_group, L)
        return (weights[..., None] * h).sum(dim=2)
