"""Transformer pieces shared by the chunk encoder and decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.config import ModelConfig
from src.data import keypoints as kp


POOLS = ("attention", "mean", "flatten")


class PoolGroups:
    """Streams grouped by their chunk pooling (``model.pool``: one name, or one per stream).

    ``groups`` lists (pool, stream indices) in a fixed order; ``order`` puts the streams of
    the groups, concatenated, back into stream order (None when there is one group).
    """

    def __init__(self, pool: str | dict[str, str]):
        names = [s.name for s in kp.STREAMS]
        if isinstance(pool, str):
            pools = {name: pool for name in names}
        elif set(pool) != set(names):
            raise ValueError(f"model.pool as a mapping must name every stream ({', '.join(names)}), "
                             f"got {', '.join(pool) or 'none'}")
        else:
            pools = pool
        bad = sorted({p for p in pools.values() if p not in POOLS})
        if bad:
            raise ValueError(f"model.pool must be one of {', '.join(POOLS)}, got {bad[0]!r}")
        self.groups = [(p, [i for i, n in enumerate(names) if pools[n] == p]) for p in POOLS if p in pools.values()]
        concatenated = [i for _, idx in self.groups for i in idx]
        self.order = None if len(self.groups) == 1 else [concatenated.index(i) for i in range(len(names))]

    @property
    def kinds(self) -> list[str]:
        return [p for p, _ in self.groups]

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, S, ...) -> one (N, S_group, ...) tensor per group (x itself for a single group)."""
        return [x] if self.order is None else [x[:, idx] for _, idx in self.groups]

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`split`: per-group tensors -> (N, S, ...) in stream order."""
        return parts[0] if self.order is None else torch.cat(parts, dim=1)[:, self.order]


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
