"""Chunk decoder, the mirror of the encoder: one latent per (chunk, stream) -> L frames."""
from __future__ import annotations

import torch
from torch import nn

from src.config import ModelConfig
from src.data import keypoints as kp
from src.models.layers import PoolGroups, StreamFrameEmbedding, Transformer


class ChunkDecoder(nn.Module):
    """Latent projection + frame queries + stream type -> shared transformer -> per-stream heads."""

    def __init__(self, cfg: ModelConfig, chunk_len: int):
        super().__init__()
        self.chunk_len = chunk_len
        self.embed = StreamFrameEmbedding(cfg, len(kp.STREAMS), chunk_len)
        # Mirror of the encoder's pooling: flatten un-flattens the latent into L distinct
        # frame tokens; the other poolings give every frame query the same latent.
        self.pools = PoolGroups(cfg.pool)
        self.inp = nn.ModuleDict({
            kind: nn.Linear(cfg.latent_dim, self.embed.in_width * (chunk_len if kind == "flatten" else 1))
            for kind in self.pools.kinds})
        self.transformer = Transformer(cfg, cfg.dec_layers)
        self.heads = nn.ModuleDict({s.name: nn.Linear(cfg.width, 2 * s.num_keypoints) for s in kp.STREAMS})
        self.linear = nn.ModuleDict(  # mirror of the encoder's linear path
            {s.name: nn.Linear(cfg.latent_dim, 2 * chunk_len * s.num_keypoints) for s in kp.STREAMS}
        ) if cfg.linear_path else None

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, S, latent_dim) -> poses (N, L, P, 2), standardised like the encoder input.

        ``cond`` (N, S, width), added to every frame token: the temporal context, if any.
        """
        n, s, _ = z.shape
        parts = []
        for kind, zg in zip(self.pools.kinds, self.pools.split(z)):
            h = self.inp[kind](zg)
            parts.append(h.view(n, zg.shape[1], self.chunk_len, -1) if kind == "flatten"  # L distinct tokens
                         else h[:, :, None, :].expand(-1, -1, self.chunk_len, -1))        # the same for every frame
        h = self.embed(self.pools.join(parts))                                             # (N, S, L, in_width)
        if cond is not None:
            h = h + cond[:, :, None, :]
        h = self.transformer(h.reshape(n * s, self.chunk_len, -1)).view(n, s, self.chunk_len, -1)
        parts = [self.heads[name](h[:, i]).view(n, self.chunk_len, -1, 2)
                 for i, name in enumerate(kp.STREAM_SLICES)]
        if self.linear is not None:
            parts = [part + self.linear[name](z[:, i]).view_as(part)
                     for i, (name, part) in enumerate(zip(kp.STREAM_SLICES, parts))]
        return torch.cat(parts, dim=2)
