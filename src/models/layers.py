"""Transformer pieces shared by the chunk encoder and decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.config import ModelConfig


class Block(nn.Module):
    """Pre-norm transformer block over the L frames of a chunk (bidirectional within a chunk)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        qkv = self.qkv(self.ln1(x)).view(n, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, H, L, D/H)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(n, length, width))
        return x + self.mlp(self.ln2(x))


class StreamFrameEmbedding(nn.Module):
    """Adds frame positions and the stream type (added, or concatenated as extra channels).

    ``in_width`` is what the per-stream projections must produce: the full width when the
    type is added, the width minus ``type_dim`` when it is concatenated.
    """

    def __init__(self, cfg: ModelConfig, num_streams: int, chunk_len: int):
        super().__init__()
        self.concat = cfg.type_embedding == "concat"
        if cfg.type_embedding not in ("add", "concat"):
            raise ValueError(f"model.type_embedding must be add or concat, got {cfg.type_embedding!r}")
        if self.concat and not 0 < cfg.type_dim < cfg.width:
            # type_dim >= width would leave the per-stream projections no channels (or fail obscurely).
            raise ValueError(f"model.type_dim must be in (0, model.width={cfg.width}) with concat, "
                             f"got {cfg.type_dim}")
        type_width = cfg.type_dim if self.concat else cfg.width
        self.in_width = cfg.width - type_width if self.concat else cfg.width
        self.stream = nn.Parameter(torch.randn(num_streams, type_width) * 0.02)
        self.frame = nn.Parameter(torch.randn(chunk_len, cfg.width) * 0.02)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, S, L, in_width) -> (N, S, L, width)."""
        n, s, length, _ = h.shape
        typ = self.stream[None, :, None, :]
        if self.concat:
            h = torch.cat([h, typ.expand(n, s, length, -1)], dim=-1)
        else:
            h = h + typ
        return h + self.frame[:length]


class Transformer(nn.Module):
    """A stack of blocks with a final norm."""

    def __init__(self, cfg: ModelConfig, layers: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.ln(x)
