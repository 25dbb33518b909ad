"""The multi-stream sign tokenizer: chunk encoder -> per-stream RVQ -> chunk decoder."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from src.config import ModelConfig
from src.data import keypoints as kp
from src.models.decoder import ChunkDecoder
from src.models.encoder import ChunkEncoder
from src.models.quantizer import MultiStreamRVQ, QuantizedResult


@dataclass
class TokenizerOutput:
    recon: torch.Tensor        # (N, L, P, 2) local units
    z: torch.Tensor            # (N, S, D) encoder latents before quantisation
    vq: QuantizedResult        # quantized (N, S, D), codes (N, S, levels), per-stream losses


class SignTokenizer(nn.Module):
    """Chunks of pose -> codes per stream and level -> chunks of pose.

    ``encode`` / ``decode_codes`` / ``decode`` are the pure inference paths;
    ``decode_codes(encode(x))`` equals the forward's quantized latents bit for bit.
    """

    def __init__(self, cfg: ModelConfig, chunk_len: int):
        super().__init__()
        self.cfg, self.chunk_len = cfg, chunk_len
        self.encoder = ChunkEncoder(cfg, chunk_len)
        self.quantizer = MultiStreamRVQ(cfg.latent_dim, cfg.rvq)
        self.decoder = ChunkDecoder(cfg, chunk_len)
        # Per-point standardisation of local coordinates, from the training split (see
        # ``set_standardisation``); identity until set, and saved with the weights.
        self.register_buffer("point_mean", torch.zeros(kp.NUM_STREAM_POINTS, 2))
        self.register_buffer("point_std", torch.ones(kp.NUM_STREAM_POINTS, 2))

    def set_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Use dataset mean/std (P, 2) so the encoder sees unit-scale inputs and the decoder
        starts from the mean pose; the losses stay in unit-length coordinates."""
        self.point_mean.copy_(torch.as_tensor(mean))
        self.point_std.copy_(torch.as_tensor(std))

    def encode_latent(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """x (N, L, P, 2) local units, observed (N, L, P) -> latents (N, S, D) before quantisation."""
        return self.encoder((x - self.point_mean) / self.point_std, observed)

    def _levels_per_row(self, n: int, device: torch.device) -> torch.Tensor | None:
        """Quantizer dropout: some rows train with only their first k levels (k uniform)."""
        p, levels = self.cfg.rvq.quantizer_dropout, self.cfg.rvq.levels
        if not self.training or p <= 0:
            return None
        drop = torch.rand(n, device=device) < p
        k = torch.randint(1, levels + 1, (n,), device=device)
        return torch.where(drop, k, torch.full_like(k, levels))

    def forward(self, x: torch.Tensor, observed: torch.Tensor) -> TokenizerOutput:
        """x (N, L, P, 2), observed (N, L, P) -> reconstruction, latents and quantiser output."""
        z = self.encode_latent(x, observed)
        vq = self.quantizer(z, self._levels_per_row(x.shape[0], x.device))
        return TokenizerOutput(self.decode(vq.quantized), z, vq)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """x (N, L, P, 2), observed (N, L, P) -> codes (N, S, levels)."""
        return self.quantizer.encode(self.encode_latent(x, observed))

    @torch.no_grad()
    def step(self, x: torch.Tensor, observed: torch.Tensor,
             context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One new chunk per row, causally: its codes (N, S, levels) and decoded poses (N, L, P, 2).

        ``context`` (N, P, 2) is the decoded last frame of each row's previous chunk (None for
        a sequence's first chunk): what a streaming tokenizer keeps between chunks.
        """
        codes = self.encode(x, observed)
        return codes, self.decode(self.decode_codes(codes))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, S, levels) -> quantized latents (N, S, D); fewer levels decode coarser."""
        return self.quantizer.decode(codes)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized latents (N, S, D) -> poses (N, L, P, 2) in local units."""
        return self.decoder(quantized) * self.point_std + self.point_mean
