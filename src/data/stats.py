"""Per-point feature statistics of a training split (the model's input standardisation)."""
from __future__ import annotations

import numpy as np

from src.config import DataConfig
from src.data.sample import make_sample
from src.data.keypoints import NUM_STREAM_POINTS
from src.data.source import DataError, PoseSource


class _Moments:
    """Masked per-point sums for a mean and std (P, 2)."""

    def __init__(self) -> None:
        self.total = np.zeros((NUM_STREAM_POINTS, 2))
        self.total_sq = np.zeros_like(self.total)
        self.count = np.zeros((NUM_STREAM_POINTS, 1))

    def add(self, x: np.ndarray, seen: np.ndarray) -> None:
        w = seen.reshape(-1, NUM_STREAM_POINTS)[..., None].astype(np.float64)
        x = x.reshape(-1, NUM_STREAM_POINTS, 2).astype(np.float64)
        self.total += (x * w).sum(0)
        self.total_sq += (x ** 2 * w).sum(0)
        self.count += w.sum(0)

    def mean_std(self, min_std: float) -> tuple[np.ndarray, np.ndarray]:
        mean = np.where(self.count > 0, self.total / np.maximum(self.count, 1), 0.0)
        var = np.where(self.count > 1, self.total_sq / np.maximum(self.count, 1) - mean ** 2, 1.0)
        return mean.astype(np.float32), np.maximum(np.sqrt(np.maximum(var, 0.0)), min_std).astype(np.float32)


def pose_statistics(source: PoseSource, names: list[str], cfg: DataConfig, max_sequences: int = 1000,
                    min_std: float = 0.1, min_delta_std: float = 0.02
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std (P, 2) of local coordinates over observed points of the first sequences,
    and the std of each frame's offset from the previous chunk's last frame (a context model's
    input scale).

    Unaugmented, and from a fixed list of names, so every rank computes the same numbers.
    Points never observed get mean 0 and std 1; ``min_std`` / ``min_delta_std`` (units) floor
    the rest, since a centre point is constant and would otherwise divide by zero.
    """
    points, deltas = _Moments(), _Moments()
    for name in names[:max_sequences]:
        try:
            sample = make_sample(source.load(name), cfg)
        except (DataError, ValueError) as e:
            raise DataError(f"{source.file(name)}: {e} (a sequence of the statistics)") from None
        x, seen = sample["x"], sample["conf"]
        points.add(x, seen)
        if x.shape[0] > 1:
            deltas.add(x[1:] - x[:-1, -1:], seen[1:] & seen[:-1, -1:])
    mean, std = points.mean_std(min_std)
    _, delta_std = deltas.mean_std(min_delta_std)
    return mean, std, delta_std

