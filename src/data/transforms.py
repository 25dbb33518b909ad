"""Training augmentations on raw or cleaned pixel poses. Each takes an explicit RNG."""
from __future__ import annotations

import numpy as np

from src.data import keypoints as kp
from src.data.pose import CleanPose, resample


def mirror(pose: CleanPose) -> CleanPose:
    """Flip x -> W - x and swap every left/right keypoint (hands, so the LH and RH streams too).

    An involution: the row permutation and the observation mask come back exactly after two
    mirrors; coordinates up to float32 rounding of ``W - x`` (half an ulp of W, 3e-5 px at 512).
    """
    xy = pose.xy[:, kp.MIRROR_PERM].copy()
    xy[..., 0] = pose.size[0] - xy[..., 0]
    return CleanPose(xy, pose.conf[:, kp.MIRROR_PERM], pose.size)


def time_warp(pose: CleanPose, rng: np.random.Generator, max_change: float) -> CleanPose:
    """Play the sequence at a random speed in [1 - max_change, 1 + max_change]."""
    speed = rng.uniform(1 - max_change, 1 + max_change)
    num_out = max(1, int(round(pose.xy.shape[0] / speed)))
    xy, conf = resample(pose.xy, pose.conf, num_out)
    return CleanPose(xy, conf, pose.size)


def keypoint_dropout(raw: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
    """Set the score of random (frame, keypoint) entries to 0 on a raw ``[T, 134, 3]`` array.

    Applied before cleaning, so a dropped point is refilled from its neighbours in time
    (as a missed detection would be) and the loss ignores it.
    """
    if prob <= 0:
        return raw
    out = raw.copy()
    drop = rng.random(raw.shape[:2]) < prob
    drop[:, kp.SIZE_ROW] = False
    out[..., 2][drop] = 0.0
    return out


PARTS_THAT_GO_MISSING = (kp.FACE, kp.LEFT_HAND, kp.RIGHT_HAND)


def part_dropout(raw: np.ndarray, rng: np.random.Generator, prob: float,
                 min_frames: int = 10, max_frames: int = 60) -> np.ndarray:
    """With probability ``prob``, the face or one hand unseen for a stretch of frames.

    Estimators lose a whole part for a while (a hand out of frame or occluded, a face
    turned away); applied before cleaning, like a missed detection.
    """
    if prob <= 0 or rng.random() >= prob:
        return raw
    out = raw.copy()
    rows = list(PARTS_THAT_GO_MISSING[rng.integers(len(PARTS_THAT_GO_MISSING))])
    length = int(rng.integers(min_frames, max_frames + 1))
    start = int(rng.integers(0, max(1, raw.shape[0] - length + 1)))
    out[start:start + length, rows, 2] = 0.0
    return out


def random_crop(length: int, max_len: int, rng: np.random.Generator | None) -> slice:
    """Frames to keep: all when short enough, else a random window (or the first, without RNG)."""
    if max_len <= 0 or length <= max_len:
        return slice(0, length)
    start = int(rng.integers(0, length - max_len + 1)) if rng is not None else 0
    return slice(start, start + max_len)
