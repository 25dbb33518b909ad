"""The thresholded "unchanged" test of run-length coding: plain numpy on one sequence, fed to
:func:`src.tokens.sequence.sequence_record` (``unchanged``). Adaptive depth is decided by the
quantiser itself (:meth:`src.models.quantizer.MultiStreamRVQ.set_depth`).
"""
from __future__ import annotations

import math

import numpy as np

from src.data import keypoints as kp


def chunk_distance(x_a: np.ndarray, seen_a: np.ndarray, x_b: np.ndarray, seen_b: np.ndarray) -> float:
    """Mean point distance between two chunks (L, P, 2), frame by frame, over the points
    observed in both (L, P); ``inf`` when none is, so that nothing unseen counts as unchanged."""
    both = seen_a & seen_b
    if not both.any():
        return math.inf
    return float(np.linalg.norm(x_a - x_b, axis=-1)[both].mean())


def unchanged_chunks(x: np.ndarray, conf: np.ndarray, threshold: float,
                     codes: dict[str, list[list[int]]] | None = None,
                     decoded: np.ndarray | None = None) -> dict[str, list[bool]]:
    """Per stream, the chunks whose input pose, or decoded pose, stays within ``threshold`` of
    their run's anchor's.

    ``x`` (C, L, P, 2) normalised local coordinates and ``conf`` (C, L, P) observed points
    of one sample; ``decoded`` (C, L, P, 2) the same chunks decoded. Either way, repeating the
    anchor's codes moves the output by at most ``threshold`` plus one chunk's codec error; the
    decoded test lets a hold count whose input carries noise the decoder smooths away
    (detector jitter on a held hand). The anchor is the last chunk emitted explicitly, not
    the previous chunk, so slow drift cannot accumulate inside a run. ``codes`` (per stream
    and chunk, as given to ``rle_encode``) lets the anchor follow ``rle_encode`` exactly: a
    chunk whose codes equal the anchor's is NC there anyway and so never becomes the anchor.
    Each part stream's centre point is left out (0 by construction). Chunk 0 is never unchanged.
    """
    seen = conf & kp.SCORED_POINTS                                 # (C, L, P)
    poses = [x] if decoded is None else [x, decoded]
    out = {}
    for name, sl in kp.STREAM_SLICES.items():
        flags, anchor = [False], 0
        for t in range(1, x.shape[0]):
            close = any(chunk_distance(p[t, :, sl], seen[t, :, sl], p[anchor, :, sl], seen[anchor, :, sl]) < threshold
                        for p in poses)
            same = codes is not None and list(codes[name][t]) == list(codes[name][anchor])
            flags.append(close)
            if not (close or same):
                anchor = t
        out[name] = flags
    return out
