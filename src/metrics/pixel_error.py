"""Reconstruction error in pixels, and the oracles every figure reads against (per chunk, per sequence)."""
from __future__ import annotations

import torch

from src.losses import per_stream_sums


def point_error_px(pred: torch.Tensor, target: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Per-point distance in pixels: (N, L, P, 2) local units, unit (N,) or (N, L) px -> (N, L, P).

    Local coordinates are (pixels - centre) / unit, so this is the error of the output
    mapped back with the true centre and unit: stream-local for the part streams, absolute
    positions for the full body (whose centre is one fixed point per sequence).
    """
    return (pred - target).norm(dim=-1) * unit.reshape(unit.shape + (1,) * (3 - unit.dim()))


def mpjpe_sums(pred: torch.Tensor, target: torch.Tensor, conf: torch.Tensor,
               unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-stream sums and counts of the pixel error over observed points -> (S,), (S,)."""
    return per_stream_sums(point_error_px(pred, target, unit), conf)


def _weights(conf: torch.Tensor) -> torch.Tensor:
    return conf[..., None].to(torch.float64)  # (N, L, P, 1)


def chunk_mean_oracle(target: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """Every chunk replaced by its exact mean pose (over its observed frames, per point)."""
    w = _weights(conf)
    mean = (target * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1e-9)
    return mean.expand_as(target).to(target.dtype)


def sequence_mean_oracle(target: torch.Tensor, conf: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
    """Every chunk replaced by its sequence's exact mean pose: what one pose per sequence as
    side information gives with no code at all. ``sequence`` (N,) is each chunk's sequence index."""
    w = _weights(conf)
    num = int(sequence.max()) + 1 if sequence.numel() else 0
    sums = torch.zeros((num,) + target.shape[2:], dtype=torch.float64, device=target.device)
    counts = torch.zeros((num,) + w.shape[2:], dtype=torch.float64, device=target.device)
    sums.index_add_(0, sequence, (target * w).sum(1))
    counts.index_add_(0, sequence, w.sum(1))
    return (sums / counts.clamp_min(1e-9))[sequence, None].expand_as(target).to(target.dtype)


def chunk_linear_oracle(target: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """Exact least-squares straight line in time per point and chunk (observed frames only)."""
    w = _weights(conf)
    t = torch.arange(target.shape[1], dtype=torch.float64, device=target.device)[None, :, None, None]
    n = w.sum(1, keepdim=True).clamp_min(1e-9)
    t_mean = (w * t).sum(1, keepdim=True) / n
    x_mean = (w * target).sum(1, keepdim=True) / n
    var = (w * (t - t_mean) ** 2).sum(1, keepdim=True)
    cov = (w * (t - t_mean) * (target - x_mean)).sum(1, keepdim=True)
    slope = torch.where(var > 1e-9, cov / var.clamp_min(1e-9), torch.zeros_like(cov))
    return (x_mean + slope * (t - t_mean)).to(target.dtype)
