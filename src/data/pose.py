"""Per-sequence pose processing: clean -> (resample) -> normalise per stream -> chunk.

Everything here is plain numpy on one sequence. Arrays follow the file layout: row r of
the keypoint axis is COCO-WholeBody keypoint r (row 0 is the size row and is never a point).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from src.data import keypoints as kp


@dataclass
class CleanPose:
    """A cleaned sequence in pixels: every keypoint filled, plus which ones were observed."""

    xy: np.ndarray     # (T, 134, 2) float32, gaps filled by interpolation
    conf: np.ndarray   # (T, 134) bool, observed with score >= threshold
    size: tuple[float, float]  # video (width, height)


def video_size(raw: np.ndarray, default: float = 512.0) -> tuple[float, float]:
    """(width, height) from the size row; the default where it is missing or broken."""
    w, h = raw[0, kp.SIZE_ROW, 0], raw[0, kp.SIZE_ROW, 1]
    ok = np.isfinite(w) and np.isfinite(h) and w > 0 and h > 0
    return (float(w), float(h)) if ok else (default, default)


# A confident point further outside the picture than this many frame sizes is an estimator's
# error (seen at score 1 ten frame widths away on real fingerspelling), not a pose.
OFF_FRAME = 2.0


def observed_mask(raw: np.ndarray, conf_thresh: float) -> np.ndarray:
    """(T, 134) bool: a score >= ``conf_thresh`` and finite coordinates within ``OFF_FRAME``
    frame sizes of the picture (NaN and infinite values compare False)."""
    (w, h), x, y = video_size(raw), raw[..., 0], raw[..., 1]
    with np.errstate(invalid="ignore"):
        conf = (raw[..., 2] >= conf_thresh) & (x >= -OFF_FRAME * w) & (x <= (1 + OFF_FRAME) * w) \
            & (y >= -OFF_FRAME * h) & (y <= (1 + OFF_FRAME) * h)
    conf[:, kp.SIZE_ROW] = False
    return conf


def fill_gaps(xy: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Fill unobserved points per keypoint by linear interpolation over time.

    Points before the first / after the last observation hold that observation; a keypoint
    never observed is 0. Only observed values are read, so NaN frames cannot leak.
    Vectorised over keypoints: the previous and next observed frame of every point come
    from a running max / min over time, and only the missing points are interpolated.
    """
    num_frames, num_rows = conf.shape
    out = np.where(conf[..., None], xy, 0).astype(np.float32, copy=False)
    t_miss, r_miss = np.nonzero(~conf)
    if t_miss.size == 0:
        return out
    t = np.arange(num_frames)[:, None]
    prev = np.maximum.accumulate(np.where(conf, t, -1), axis=0)[t_miss, r_miss]
    nxt = np.minimum.accumulate(np.where(conf, t, num_frames)[::-1], axis=0)[::-1][t_miss, r_miss]
    lo = np.where(prev < 0, nxt, prev)               # before the first: hold the first
    hi = np.where(nxt >= num_frames, lo, nxt)        # after the last: hold the last
    seen = lo < num_frames                           # False: the keypoint is never observed
    t_miss, r_miss, lo, hi = t_miss[seen], r_miss[seen], lo[seen], hi[seen]
    w = ((t_miss - lo) / np.maximum(hi - lo, 1))[:, None]
    flat = out.reshape(-1, 2)
    out[t_miss, r_miss] = (1 - w) * flat[lo * num_rows + r_miss] + w * flat[hi * num_rows + r_miss]
    out[:, kp.SIZE_ROW] = 0
    return out


def gaussian_smooth(xy: np.ndarray, sigma: float) -> np.ndarray:
    """Low-pass filter over time (edge-padded Gaussian), ``sigma`` in frames."""
    if sigma <= 0 or xy.shape[0] < 2:
        return xy
    radius = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(xy, [(radius, radius)] + [(0, 0)] * (xy.ndim - 1), mode="edge")
    out = np.zeros_like(xy)
    for i, w in enumerate(k):
        out += w * padded[i:i + xy.shape[0]]
    return out


def resample(xy: np.ndarray, conf: np.ndarray, num_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear resampling over time to ``num_out`` frames (fps change, time warp).

    A resampled point is observed only if both source frames around it were.
    """
    num_in = xy.shape[0]
    if num_out == num_in:
        return xy, conf
    pos = np.linspace(0, num_in - 1, num_out)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, num_in - 1)
    w = (pos - lo).astype(np.float32)[:, None, None]
    xy_out = (1 - w) * xy[lo] + w * xy[hi]
    return xy_out.astype(np.float32), conf[lo] & conf[hi]


def clean(raw: np.ndarray, conf_thresh: float, source_fps: float = 30, fps: float = 30,
          lowpass_sigma: float = 0.0) -> CleanPose:
    """Raw ``[T, 134, 3]`` -> filled pixel coordinates + observation mask at ``fps``.

    NaN/inf points and points scoring below the threshold are missing (a frame with all
    scores 0 is then wholly missing) and are filled from observed neighbours in time.
    """
    if raw.ndim != 3 or raw.shape[1:] != (kp.NUM_ROWS, 3):
        raise ValueError(f"pose array must be [T, {kp.NUM_ROWS}, 3], got {list(raw.shape)}")
    conf = observed_mask(raw, conf_thresh)
    xy = fill_gaps(raw[..., :2], conf)
    if source_fps != fps:
        num_out = max(1, int(round(raw.shape[0] * fps / source_fps)))
        xy, conf = resample(xy, conf, num_out)
    return CleanPose(gaussian_smooth(xy, lowpass_sigma), conf, video_size(raw))


def pair_lengths(xy: np.ndarray, conf: np.ndarray, pair: tuple[int, int]) -> np.ndarray:
    """Per-frame distance between the rows of ``pair``, over the frames where both are observed."""
    a, b = pair
    both = conf[:, a] & conf[:, b]
    return np.linalg.norm(xy[both, a] - xy[both, b], axis=-1)


def _median_length(xy: np.ndarray, conf: np.ndarray, pair: tuple[int, int]) -> float | None:
    lengths = pair_lengths(xy, conf, pair)
    if lengths.size == 0:
        return None
    d = float(np.median(lengths))
    return d if d > 1e-3 else None


def unit_length(xy: np.ndarray, conf: np.ndarray) -> float | None:
    """Robust per-sequence length unit in pixels: the shoulder width / 10.6 ("eyelid units").

    Median over the frames where both shoulders are observed; without them, the eyelid
    widths, then eye distance, then head width, each rescaled to the same units (see
    ``keypoints.UNIT_FALLBACKS``). ``None`` when none is measurable.
    """
    return unit_from_medians(lambda pair: _median_length(xy, conf, pair))


def unit_from_medians(median: Callable[[tuple[int, int]], float | None]) -> float | None:
    """The unit from ``median(pair)``, a length in pixels per row pair (None when unmeasured),
    by the fallback chain of :func:`unit_length`; shared with the causal running medians."""
    shoulders = median(kp.SHOULDER_WIDTH)
    if shoulders is not None:
        return shoulders / kp.SHOULDER_EYELID_RATIO
    lids = [d for d in (median(kp.LEFT_EYELID), median(kp.RIGHT_EYELID)) if d is not None]
    if lids:
        return float(np.mean(lids))
    for pair, ratio in kp.UNIT_FALLBACKS:
        d = median(pair)
        if d is not None:
            return d / ratio
    return None


def upright_angle(xy: np.ndarray, conf: np.ndarray) -> float:
    """The sequence's roll in radians: the median angle of the shoulder line (0 if unseen).

    Rotating by minus this makes the shoulders level, so a tilted camera gives the streams
    the same local coordinates as a level one. One angle per sequence: a per-frame angle
    would turn shoulder jitter into a rotation of every point.
    """
    angles = shoulder_angles(xy, conf)
    return float(np.median(angles)) if angles.size else 0.0


def shoulder_angles(xy: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Per-frame angle (radians) of the shoulder line, over the frames where both are observed."""
    both = conf[:, kp.L_SHOULDER] & conf[:, kp.R_SHOULDER]
    d = xy[both, kp.L_SHOULDER] - xy[both, kp.R_SHOULDER]  # the signer's left is on the image right
    return np.arctan2(d[:, 1], d[:, 0])


def rotate(xy: np.ndarray, angle: float | np.ndarray, size: tuple[float, float]) -> np.ndarray:
    """Rotate pixel points (..., 2) by ``angle`` radians about the frame centre.

    ``angle`` is one number, or one per frame (T,) for points (T, ..., 2) (the causal mode).
    Elementwise, so a frame's result does not depend on the frames beside it.
    """
    if np.ndim(angle) == 0 and angle == 0.0:
        return xy
    centre = np.array([size[0] / 2, size[1] / 2], dtype=np.float32)
    shape = (-1,) + (1,) * (xy.ndim - 2) if np.ndim(angle) else ()
    c = np.cos(angle).astype(np.float32).reshape(shape)
    s = np.sin(angle).astype(np.float32).reshape(shape)
    d = (xy - centre).astype(np.float32, copy=False)
    return np.stack([d[..., 0] * c - d[..., 1] * s, d[..., 0] * s + d[..., 1] * c], axis=-1) + centre


def stream_centres(xy: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """(T, S, 2) centre of each stream's local frame, in pixels: the mean of its centre rows.

    Every frame: the streams code pose, not where the signer stands in the picture (camera
    framing). Only rows observed somewhere in the sequence count (a reduced face model may
    have no nose bridge; a never-seen row holds no position); a stream with none of its
    centre rows seen is centred on its seen rows, and one with nothing seen on the shoulders.
    The centres are side information, kept to map back to pixels.
    """
    seen = conf.any(axis=0)
    centres = np.zeros((xy.shape[0], len(kp.STREAMS), 2), dtype=np.float32)
    for i, s in enumerate(kp.STREAMS):
        centres[:, i] = xy[:, centre_rows(s, seen)].mean(axis=1)
    return centres


def centre_rows(stream: kp.Stream, seen: np.ndarray) -> list[int]:
    """The rows a stream is centred on, of those ``seen`` (134,): its centre rows, else its
    seen rows, else the shoulders."""
    return ([r for r in stream.centre if seen[r]] or [r for r in stream.rows if seen[r]]
            or list(kp.SHOULDERS))


def _per_point_centres(centres: np.ndarray) -> np.ndarray:
    """(T, S, 2) -> (T, P, 2): each concatenated stream point gets its stream's centre."""
    counts = [s.num_keypoints for s in kp.STREAMS]
    return np.repeat(centres, counts, axis=1)


def flat_values(value: float | np.ndarray) -> float | np.ndarray:
    """A per-sequence unit or angle as a float; a per-frame one (C, L) flat (the causal mode)."""
    return np.asarray(value, np.float32).reshape(-1) if np.ndim(value) else float(value)


def frame_unit(unit: float | np.ndarray) -> np.float32 | np.ndarray:
    """A scalar unit as is; a per-frame unit (T,) shaped (T, 1, 1) to broadcast over points."""
    return np.asarray(unit, dtype=np.float32).reshape(-1, 1, 1) if np.ndim(unit) else np.float32(unit)


def normalise(xy: np.ndarray, centres: np.ndarray, unit: float | np.ndarray) -> np.ndarray:
    """Pixels (T, 134, 2) -> stream-concatenated local coordinates (T, P, 2) in units.

    ``unit`` is one length, or one per frame (T,) (the causal mode).
    """
    # take + in-place arithmetic: one fresh array instead of three (fresh pages are costly)
    out = np.take(xy, kp.STREAM_ROWS, axis=1).astype(np.float32, copy=False)
    out -= _per_point_centres(centres)
    out /= frame_unit(unit)
    return out


def denormalise(x: np.ndarray, centres: np.ndarray, unit: float | np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalise`: (..., T, P, 2) local units -> pixels."""
    return x * frame_unit(unit) + _per_point_centres(centres)


def pose_references(x: np.ndarray, conf: np.ndarray, points: np.ndarray,
                    state: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Each chunk's reference pose of ``points`` (indices of the P stream points): the mean of
    their observed local coordinates over every frame up to the chunk's last one.

    x (C, L, P, 2) local units, conf (C, L, P) -> references (C, P, 2), zero at other points,
    and the running (sums, counts) to pass with the next chunks of the same sequence. The sums
    run chunk by chunk in float64, so chunks given one at a time (streaming) or all at once
    give the same references bit for bit.
    """
    if state is None:
        state = (np.zeros((len(points), 2)), np.zeros(len(points)))
    sums, counts = (a.copy() for a in state)
    refs = np.zeros((x.shape[0],) + x.shape[2:], dtype=np.float32)
    for c in range(x.shape[0]):
        w = conf[c][:, points]
        sums += (x[c][:, points] * w[..., None]).sum(0, dtype=np.float64)
        counts += w.sum(0, dtype=np.float64)
        refs[c, points] = sums / np.maximum(counts, 1.0)[:, None]
    return refs, (sums, counts)


def subtract_references(x: np.ndarray, conf: np.ndarray, reference: str, whole_sequence: bool = False,
                        state: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``x`` relative to the reference pose of ``data.reference``'s points (:func:`pose_references`;
    ``whole_sequence``: every chunk takes the mean over all of them) -> (x minus it, the
    references (C, P, 2), the running state). ``reference="none"`` gives references of 0."""
    refs, state = pose_references(x, conf, kp.REFERENCE_POINTS[reference], state)
    if whole_sequence:
        refs[:] = refs[-1]
    return x - refs[:, None], refs, state


def to_rows(points: np.ndarray, stream: str = "parts") -> np.ndarray:
    """Stream-concatenated pixels (T, P, 2) -> file layout (T, 134, 2), feet and size row 0.

    ``stream="parts"`` takes body, face and hands from their own streams (the sharper
    reconstruction); ``"FB"`` takes every row from the full-body stream.
    """
    out = np.zeros((points.shape[0], kp.NUM_ROWS, 2), dtype=np.float32)
    names = ("B", "F", "LH", "RH") if stream == "parts" else (stream,)
    for name in names:
        out[:, list(kp.STREAM_BY_NAME[name].rows)] = points[:, kp.STREAM_SLICES[name]]
    return out


def num_chunks(num_frames: int, chunk_len: int) -> int:
    """ceil(T / L): every frame lands in exactly one chunk."""
    return -(-num_frames // chunk_len)


def chunk(x: np.ndarray, chunk_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, ...) -> (C, L, ...) plus a (C, L) frame mask; the tail repeats the last frame.

    Edge padding (not zeros) keeps the padded frames inside the pose distribution; they
    are masked out of every loss and metric.
    """
    num_frames = x.shape[0]
    c = num_chunks(num_frames, chunk_len)
    pad = c * chunk_len - num_frames
    padded = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
    mask = np.arange(c * chunk_len) < num_frames
    return padded.reshape(c, chunk_len, *x.shape[1:]), mask.reshape(c, chunk_len)
