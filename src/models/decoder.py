"""Chunk decoder, the mirror of the encoder: one latent per (chunk, stream) -> L frames."""
from __future__ import annotations

import torch
from torch import nn

from src.config import ModelConfig
from src.data import keypoints as kp
from src.models.layers import StreamFrameEmbedding, Transformer


class ChunkDecoder(nn.Module):
    """Latent projection + frame queries + stream type -> shared transformer -> per-stream heads."""

    def __init__(self, cfg: ModelConfig, chunk_len: int):
        super().__init__()
        self.chunk_len = chunk_len
        self.embed = StreamFrameEmbedding(cfg, len(kp.STREAMS), chunk_len)
        # Mirror of the encoder's pooling: flatten un-flattens the latent into L distinct
        # frame tokens; the other poolings give every frame query the same latent.
        self.unflatten = cfg.pool == "flatten"
        self.inp = nn.Linear(cfg.latent_dim, self.embed.in_width * (chunk_len if self.unflatten else 1))
        self.transformer = Transformer(cfg, cfg.dec_layers)
        self.heads = nn.ModuleDict({s.name: nn.Linear(cfg.width, 2 * s.num_keypoints) for s in kp.STREAMS})

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, S, latent_dim) -> poses (N, L, P, 2), standardised like the encoder input."""
        n, s, _ = z.shape
        h = self.inp(z)
        if self.unflatten:
            h = h.view(n, s, self.chunk_len, -1)                          # (N, S, L, in_width)
        else:
            h = h[:, :, None, :].expand(n, s, self.chunk_len, -1)         # same latent for every frame query
        h = self.embed(h)
        h = self.transformer(h.reshape(n * s, self.chunk_len, -1)).view(n, s, self.chunk_len, -1)
        parts = [self.heads[name](h[:, i]).view(n, self.chunk_len, -1, 2)
                 for i, name in enumerate(kp.STREAM_SLICES)]
        return torch.cat(parts, dim=2)
