"""Per-point feature statistics of a training split (the model's input standardisation)."""
from __future__ import annotations

import numpy as np

from src.config import DataConfig
from src.data.dataset import make_sample
from src.data.keypoints import NUM_STREAM_POINTS
from src.data.source import DataError, PoseSource


def pose_statistics(source: PoseSource, names: list[str], cfg: DataConfig, max_sequences: int = 1000,
                    min_std: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (P, 2) of local coordinates over observed points of the first sequences.

    Unaugmented, and from a fixed list of names, so every rank computes the same numbers.
    Points never observed get mean 0 and std 1; ``min_std`` (units) floors the rest, since a
    centre point is constant and would otherwise divide by zero.
    """
    total = np.zeros((NUM_STREAM_POINTS, 2))
    total_sq = np.zeros_like(total)
    count = np.zeros((NUM_STREAM_POINTS, 1))
    for name in names[:max_sequences]:
        try:
            sample = make_sample(source.load(name), cfg)
        except (DataError, ValueError) as e:
            raise DataError(f"{source.pose_dir / name}.npy: {e} (a sequence of the statistics)") from None
        x, seen = sample["x"].reshape(-1, NUM_STREAM_POINTS, 2), sample["conf"].reshape(-1, NUM_STREAM_POINTS)
        w = seen[..., None].astype(np.float64)
        total += (x * w).sum(0)
        total_sq += (x.astype(np.float64) ** 2 * w).sum(0)
        count += w.sum(0)
    mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    var = np.where(count > 1, total_sq / np.maximum(count, 1) - mean ** 2, 1.0)
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), min_std)
    return mean.astype(np.float32), std.astype(np.float32)

