"""Codebook health from code counts: usage, entropy, perplexity, dead codes."""
from __future__ import annotations

import numpy as np


def usage_stats(counts: np.ndarray, unused: np.ndarray | None = None,
                dead_after: int | None = None) -> dict[str, float]:
    """Health of one codebook from how often each of its K codes was picked.

    ``usage`` is the fraction of codes used at least once, ``entropy`` in nats of the
    empirical code distribution, ``perplexity`` = exp(entropy) (K at best). ``dead`` is
    the fraction of codes the training state counts as dead (``unused``, the training rows
    since each code was last picked, at least ``dead_after``) when that state is given, else
    the fraction unused here.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    p = counts[counts > 0] / total if total > 0 else np.zeros(0)
    entropy = float(-(p * np.log(p)).sum()) if p.size else 0.0
    if unused is not None and dead_after is not None:
        dead = float((np.asarray(unused) >= dead_after).mean())
    else:
        dead = float((counts == 0).mean())
    return {"usage": float((counts > 0).mean()), "used": int((counts > 0).sum()),
            "entropy": entropy, "perplexity": float(np.exp(entropy)), "dead": dead}


def code_label(index: int, splits: int = 1) -> str:
    """Name of a stream's code ``index`` per chunk: ``l<level>``, or ``l<level>p<part>``
    when the latent is split (codes are level-major)."""
    level, part = divmod(index, splits)
    return f"l{level}" if splits == 1 else f"l{level}p{part}"


def first_level_min(health: dict[str, dict], key: str) -> float:
    """The least ``key`` (e.g. ``used``, ``usage``) over one stream's level-0 codebooks (one per part)."""
    return min(stats[key] for label, stats in health.items() if label.split("p")[0] == "l0")


def code_counts(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """codes (N, S, levels) -> counts (S, levels, K); id -1 (a level a stream does not code) is left out."""
    n, s, levels = codes.shape
    flat = codes.reshape(n, s * levels).T + (np.arange(s * levels) * codebook_size)[:, None]
    flat = flat[codes.reshape(n, s * levels).T >= 0]
    counts = np.bincount(flat.ravel(), minlength=s * levels * codebook_size)
    return counts.reshape(s, levels, codebook_size)
