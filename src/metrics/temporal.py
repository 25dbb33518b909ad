"""Temporal smoothness in pixels: motion between adjacent chunks and jumps at chunk borders."""
from __future__ import annotations

import torch

from src.losses import per_stream_sums, stream_pool, to_timeline


def frame_motion_sums(poses_px: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-stream sums/counts of frame-to-frame point motion on a (B, T, P, 2) timeline."""
    both = mask[:, 1:] & mask[:, :-1]
    return per_stream_sums((poses_px[:, 1:] - poses_px[:, :-1]).norm(dim=-1), both)


def boundary_jump_sums(poses_px: torch.Tensor, mask: torch.Tensor,
                       chunk_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-stream sums/counts of point motion across chunk borders (last frame -> next first)."""
    starts = torch.arange(chunk_len, poses_px.shape[1], chunk_len, device=poses_px.device)
    both = mask[:, starts] & mask[:, starts - 1]
    return per_stream_sums((poses_px[:, starts] - poses_px[:, starts - 1]).norm(dim=-1), both)


def adjacent_chunk_changes(poses_px: torch.Tensor, mask: torch.Tensor, chunk_mask: torch.Tensor,
                           chunk_len: int) -> torch.Tensor:
    """Mean point distance between adjacent chunks' mean poses, per pair and stream -> (pairs, S).

    Only pairs of real chunks count; a stream with no point observed in both is NaN.
    """
    b, c = chunk_mask.shape
    pts = poses_px.view(b, c, chunk_len, *poses_px.shape[2:])
    m = mask.view(b, c, chunk_len, -1)[..., None].to(pts.dtype)
    means = (pts * m).sum(2) / m.sum(2).clamp_min(1e-9)          # (B, C, P, 2)
    seen = m.sum(2)[..., 0] > 0                                    # (B, C, P)
    step = (means[:, 1:] - means[:, :-1]).norm(dim=-1)            # (B, C-1, P)
    both = seen[:, 1:] & seen[:, :-1]
    sums, counts = stream_pool(step, both)                         # (B, C-1, S)
    pairs = chunk_mask[:, 1:] & chunk_mask[:, :-1]
    changes = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
    return changes[pairs]


def timeline_px(values: torch.Tensor, chunk_mask: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Valid-chunk rows (N, L, P, 2) in units -> (B, C*L, P, 2) pixel offsets (centre-free).

    ``unit`` is (B,) per sequence or (B, C, L) per frame (causal mode).
    """
    unit = unit[:, None] if unit.dim() == 1 else unit.flatten(1)
    return to_timeline(values, chunk_mask) * unit[:, :, None, None]
