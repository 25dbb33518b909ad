"""Holds: where the signer keeps still, a stream's codes should repeat, so RLE sends one
"no change" marker instead of new codes. This module finds hold chunks and counts their tokens.

A chunk is a hold for a stream when the stream stays still over that chunk *and* the one
before it (the step between them included): only then can its codes equal its
predecessor's, so an ideal coder compresses hold chunks by nearly 100%. The first chunk of a
sequence never is one. ``span=1`` counts instead every chunk that is still on its own (a
static segment's first chunk included, whose codes must be sent): the figure the
specification's "compression on static segments" asks for.
Still is either measured (the ground truth's mean point motion below a threshold, in
pixels per frame, in the stream's own frame: centre-free for the part streams, absolute
for the full body) or known (frame ranges in the annotations, as the synthetic signer writes).
"""
from __future__ import annotations

import numpy as np
import torch

from src.losses import stream_pool


def motion_hold_chunks(gt_px: torch.Tensor, mask: torch.Tensor, chunk_mask: torch.Tensor, chunk_len: int,
                       threshold_px: float, span: int = 2) -> torch.Tensor:
    """(B, C, S) bool: chunk t of a stream is a hold when the ground truth's mean point motion
    over chunks t-1 and t (``span=2``; chunk t alone with ``span=1``) is below ``threshold_px``
    per frame.

    ``gt_px`` (B, C*L, P, 2) is the pixel timeline, ``mask`` (B, C*L, P) its observed points.
    """
    b, c = chunk_mask.shape
    both = mask[:, 1:] & mask[:, :-1]
    step = (gt_px[:, 1:] - gt_px[:, :-1]).norm(dim=-1)                     # (B, T-1, P)
    sums, counts = stream_pool(step.double(), both)                          # (B, T-1, S)

    def per_chunk(v: torch.Tensor) -> torch.Tensor:
        # step k goes from frame k to k+1; [:, t, j] is step t*L + j, j = L-1 leaves the chunk
        return torch.cat([v, v.new_zeros(b, 1, v.shape[-1])], 1).view(b, c, chunk_len, -1)

    sums, counts = per_chunk(sums), per_chunk(counts)
    if span == 1:
        inner_sums, inner_counts = sums[:, :, :-1].sum(2), counts[:, :, :-1].sum(2)
        return (inner_counts > 0) & (inner_sums < threshold_px * inner_counts) & chunk_mask[..., None]
    # chunk t-1's steps (the one into chunk t included) + chunk t's own steps
    window_sums = sums[:, :-1].sum(2) + sums[:, 1:, :-1].sum(2)
    window_counts = counts[:, :-1].sum(2) + counts[:, 1:, :-1].sum(2)
    still = (window_counts > 0) & (window_sums < threshold_px * window_counts)
    out = torch.zeros(b, c, sums.shape[-1], dtype=torch.bool, device=gt_px.device)
    out[:, 1:] = still & (chunk_mask[:, 1:] & chunk_mask[:, :-1])[..., None]
    return out


def frames_from_ranges(ranges: list, num_frames: int) -> np.ndarray:
    """(T,) bool from ``[[start, end), ...]`` frame ranges (an annotation's ``holds``)."""
    out = np.zeros(num_frames, dtype=bool)
    for start, end in ranges:
        out[max(int(start), 0):max(int(end), 0)] = True
    return out


def annotated_hold_chunks(still: np.ndarray, num_frames: int, num_chunks: int, chunk_len: int,
                          span: int = 2) -> np.ndarray:
    """(C,) bool: chunks t >= 1 whose frames and chunk t-1's are all still (``span=2``), or
    every chunk whose own frames are (``span=1``).

    ``still`` is per source frame; it is mapped by nearest frame when the model's frame
    rate gives ``num_frames`` frames instead.
    """
    if len(still) != num_frames:
        still = still[np.rint(np.linspace(0, len(still) - 1, num_frames)).astype(int)]
    out = np.zeros(num_chunks, dtype=bool)
    for t in range(span - 1, num_chunks):
        window = still[(t - span + 1) * chunk_len:min((t + 1) * chunk_len, num_frames)]
        out[t] = window.size > 0 and bool(window.all())
    return out


def hold_token_sums(tokens: np.ndarray, codes: np.ndarray,
                    held: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per stream over hold chunks: RLE tokens, codes, and how many chunks -> (S,) each.

    ``tokens`` and ``codes`` (C, S) are what each chunk costs with and without RLE, ``held``
    (C, S) which chunks are holds.
    """
    held = held.astype(bool)
    return (tokens * held).sum(0), (codes * held).sum(0), held.sum(0)
