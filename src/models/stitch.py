"""Decode-time stitching of independently decoded chunks into one smooth sequence.

Each chunk is decoded from its own codes, so each carries its own small offset and two
adjacent chunks disagree where they meet: the reconstruction jumps at every chunk border
(3.5-7.5x the true frame-to-frame motion on the real sample). Stitching removes that gap
and nothing else. At each border the gap beyond the expected step (the mean of the two
chunks' own velocities at the border) is split in half; each chunk takes its half on a
linear ramp that is 1 at the border and 0 at the chunk's middle, so the corrections of a
chunk's two borders never overlap and interior frames keep the decoder's motion. It reads
decoded poses only (no ground truth), so it is part of decoding; it needs the next chunk,
so a live pose display lags half a chunk. Tokens are unaffected.
"""
from __future__ import annotations

import torch


def stitch_chunks(recon: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
    """Valid-chunk rows (N, L, ...) of whole sequences -> the same rows, stitched at borders.

    ``chunk_mask`` (B, C) says which rows belong to which sequence (as in a Batch); only
    borders between two valid chunks of one sequence are touched.
    """
    b, c = chunk_mask.shape
    length = recon.shape[1]
    if c < 2 or length < 3:
        return recon
    full = recon.new_zeros((b, c) + recon.shape[1:])
    full[chunk_mask] = recon
    half = (length - 1) / 2
    ramp = ((torch.arange(length, device=recon.device, dtype=recon.dtype) - half) / half).clamp_min(0)
    ramp = ramp.view(length, *([1] * (recon.dim() - 2)))     # 0 up to the middle, 1 at the last frame
    end, start = full[:, :-1, -1], full[:, 1:, 0]
    step = 0.5 * ((end - full[:, :-1, -2]) + (full[:, 1:, 1] - start))
    pair = (chunk_mask[:, 1:] & chunk_mask[:, :-1]).view(b, c - 1, *([1] * (recon.dim() - 2)))
    gap = torch.where(pair, 0.5 * (start - end - step), 0)   # (B, C-1, ...)
    out = full.clone()
    out[:, :-1] += gap[:, :, None] * ramp
    out[:, 1:] -= gap[:, :, None] * ramp.flip(0)
    return out[chunk_mask]
