"""Causal preprocessing: each frame's normalised coordinates depend only on frames up to it.

The offline pipeline (``src/data/pose.py``) looks at the whole sequence: gaps are
interpolated from later frames, the unit length and the roll angle are medians over every
frame. Here the same quantities are estimated online, frame by frame, so that a stream of
frames can be tokenized while it plays and gives the same result however it is cut:

- **gaps** are held from the past: a point not observed in a frame keeps its last observed
  position; before its first observation it is 0 (as a point never observed offline), and
  it is never scored;
- **unit length**: the running median of the per-frame shoulder width / 10.6 over the frames
  seen so far, with the fallbacks of :func:`src.data.pose.unit_length` (eyelids, eye distance,
  head width) while no frame had both shoulders;
- **roll angle**: the running median of the per-frame shoulder-line angle (0 until the
  shoulders are seen);
- **warm-up**: the first ``warmup`` frames (one chunk by default) all take the estimates at
  the end of the warm-up. A chunk's tokens exist only once its last frame has arrived, so a
  warm-up of at most one chunk adds no latency. A frame whose unit is still unknown at the
  end of the warm-up (no shoulders, eyelids, eyes nor ears seen yet) waits for the first
  frame that makes it known and takes that estimate;
- **low-pass** (``lowpass_sigma > 0``): the causal half of a Gaussian (the current frame and
  the previous 3 sigma), which delays the signal by about 0.8 sigma frames; its memory of a
  point starts at the point's first observation;
- **centres**: per frame, as offline, from the rows seen so far (offline: the rows the
  sequence ever shows) (:func:`causal_centres`).

The model frame rate must equal the source's (``data.source_fps == data.fps``): resampling
needs the next source frame; ``data-import`` resamples ``.pose`` files to 30 fps beforehand.
"""
from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import numpy as np

from src.data import keypoints as kp
from src.data.pose import CleanPose, centre_rows, observed_mask, rotate, unit_from_medians, video_size
from src.data.source import DataError
from src.data.transforms import time_warp

# Row pairs whose length is measured per frame: every one ``unit_length`` may fall back on.
_LENGTHS = (kp.SHOULDER_WIDTH, kp.LEFT_EYELID, kp.RIGHT_EYELID, *(pair for pair, _ in kp.UNIT_FALLBACKS))
# Their rows as index arrays, so that one frame's lengths are one vectorised difference.
_FROM, _TO = (np.array(rows) for rows in zip(*_LENGTHS))


class RunningMedian:
    """Median of every value added so far (a sorted list; one insertion per frame)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, value: float) -> None:
        bisect.insort(self.values, value)

    def median(self) -> float | None:
        n = len(self.values)
        if n == 0:
            return None
        mid = n // 2
        return self.values[mid] if n % 2 else 0.5 * (self.values[mid - 1] + self.values[mid])


@dataclass
class CausalFrames:
    """Frames whose causal estimates are known: upright pixels, observation, unit and angle per frame."""

    xy: np.ndarray      # (n, 134, 2) float32, gaps held, rotated upright, low-passed
    conf: np.ndarray    # (n, 134) bool, observed with score >= threshold
    unit: np.ndarray    # (n,) float32 pixels per unit
    angle: np.ndarray   # (n,) float32 radians that turn the upright picture back into the input's

    @staticmethod
    def empty() -> "CausalFrames":
        return CausalFrames(np.zeros((0, kp.NUM_ROWS, 2), np.float32), np.zeros((0, kp.NUM_ROWS), bool),
                            np.zeros(0, np.float32), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return self.xy.shape[0]


def concat_frames(parts: list[CausalFrames]) -> CausalFrames:
    """Frames of several pushes, in order."""
    parts = [p for p in parts if len(p)] or [CausalFrames.empty()]
    return CausalFrames(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("xy", "conf", "unit", "angle")))


def causal_kernel(sigma: float) -> np.ndarray:
    """Weights of the current frame and the previous ceil(3 sigma) ones (half a Gaussian, sum 1)."""
    radius = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(radius + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _pair_lengths(xy: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, pairs) lengths of every ``_LENGTHS`` pair and whether both its points were seen.

    The values of ``pose.pair_lengths`` bit for bit (the same float32 difference, sum of
    squares and square root; elementwise, so the same in any batch), for every frame and
    pair in one go: the per-pair calls were the largest part of a streamed frame's preprocessing.
    """
    d = xy[:, _FROM] - xy[:, _TO]                              # (n, pairs, 2)
    return np.sqrt(np.add.reduce(d * d, axis=-1)), conf[:, _FROM] & conf[:, _TO]


class CausalCleaner:
    """Frames in, causally cleaned and upright frames out; the state of one sequence.

    ``push(raw)`` takes any number of raw ``[n, 134, 3]`` frames and returns the frames whose
    estimates became known (during the warm-up, none); ``flush()`` returns the rest at the
    end of the sequence. A frame's output depends only on the frames up to it, by elementwise
    arithmetic, so it is the same, bit for bit, however the sequence is cut into pushes.
    """

    def __init__(self, conf_thresh: float, lowpass_sigma: float = 0.0, warmup: int = 10,
                 size: tuple[float, float] | None = None, upright: bool = True):
        self.conf_thresh, self.warmup, self.size = conf_thresh, max(1, warmup), size
        # upright=False: frames come out unrotated, for the caller to rotate a whole chunk at
        # once with ``to_upright`` (rotation is elementwise per frame: the same values).
        self.upright = upright
        self.kernel = causal_kernel(lowpass_sigma) if lowpass_sigma > 0 else None
        self.last_xy = np.zeros((kp.NUM_ROWS, 2), np.float32)   # last observation of each point
        self.seen = np.zeros(kp.NUM_ROWS, bool)                   # observed at least once
        self.history: np.ndarray | None = None                   # last filled frames, newest first (low-pass)
        self.lengths = {pair: RunningMedian() for pair in _LENGTHS}
        self.angles = RunningMedian()
        self.frames_seen = 0
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []   # (xy (134, 2), conf (134,)) waiting

    def _unit(self) -> float | None:
        """The unit of the frames seen so far, with the fallbacks of ``pose.unit_length``."""
        def median(pair: tuple[int, int]) -> float | None:
            d = self.lengths[pair].median()
            return d if d is not None and d > 1e-3 else None

        return unit_from_medians(median)

    def _fill(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hold every unobserved point at its last observation, then the causal low-pass.

        A frame's output never depends on how the frames were pushed. The low-pass memory of a
        point starts at its first observation (as offline, where the first observation is held
        backwards): a hand coming into view is not smeared with 0s.
        """
        conf = observed_mask(raw, self.conf_thresh)
        if self.kernel is None:
            # every point at the frame of its latest observation (0: before this push), all frames at once
            t = np.arange(1, raw.shape[0] + 1)[:, None]
            latest = np.maximum.accumulate(np.where(conf, t, 0), axis=0)
            out = np.concatenate([self.last_xy[None], raw[..., :2]])[latest, np.arange(kp.NUM_ROWS)]
            self.seen |= conf.any(axis=0)
            self.last_xy = out[-1].copy()
            out[:, kp.SIZE_ROW] = 0
            return out, conf
        out = np.empty((raw.shape[0], kp.NUM_ROWS, 2), np.float32)
        for t in range(raw.shape[0]):
            first = conf[t] & ~self.seen
            self.seen |= conf[t]
            self.last_xy = np.where(conf[t, :, None], raw[t, :, :2], self.last_xy)   # float32, as raw
            if self.history is None:
                self.history = np.repeat(self.last_xy[None], len(self.kernel), axis=0)
            else:
                self.history[:, first] = self.last_xy[first]
                self.history = np.concatenate([self.last_xy[None], self.history[:-1]])  # newest first
            smooth = np.zeros((kp.NUM_ROWS, 2), np.float32)
            for w, frame in zip(self.kernel, self.history):
                smooth += w * frame
            out[t] = smooth
        out[:, kp.SIZE_ROW] = 0
        return out, conf

    def _measure(self, xy: np.ndarray, lengths: np.ndarray, both: np.ndarray) -> None:
        """Add one frame's lengths and shoulder angle (``pose.shoulder_angles``: the shoulder
        pair comes first in ``_LENGTHS``) to the running medians."""
        if not both.any():
            return
        for pair, length in zip(itertools.compress(_LENGTHS, both), lengths[both].tolist()):
            self.lengths[pair].add(length)
        if both[0]:
            # one frame at a time: numpy's vectorised arctan2 may round differently from its one-value path
            d = xy[_FROM[:1]] - xy[_TO[:1]]
            for a in np.arctan2(d[:, 1], d[:, 0]).tolist():
                self.angles.add(a)

    def push(self, raw: np.ndarray) -> CausalFrames:
        """Raw frames ``[n, 134, 3]`` (pixels, scores) -> the frames whose estimates are now known."""
        raw = np.asarray(raw, dtype=np.float32)
        if raw.ndim != 3 or raw.shape[1:] != (kp.NUM_ROWS, 3):
            raise ValueError(f"frames must be [n, {kp.NUM_ROWS}, 3], got {list(raw.shape)}")
        if raw.shape[0] == 0:
            return CausalFrames.empty()
        if self.size is None:
            self.size = video_size(raw)
        xy, conf = self._fill(raw)
        lengths, both = _pair_lengths(xy, conf)
        released: list[tuple[int, float, float]] = []   # (frames released, unit, angle)
        for t in range(xy.shape[0]):
            self._measure(xy[t], lengths[t], both[t])
            self.frames_seen += 1
            self.pending.append((xy[t], conf[t]))
            if self.frames_seen >= self.warmup:
                released += self._release()
        return self._upright(released)

    def _release(self) -> list[tuple[tuple[np.ndarray, np.ndarray], float, float]]:
        """Every pending frame with the current estimates, if the unit is known; else none."""
        unit = self._unit()
        if unit is None:
            return []
        angle = self.angles.median() or 0.0
        out = [(frame, unit, angle) for frame in self.pending]
        self.pending = []
        return out

    def _upright(self, released: list) -> CausalFrames:
        """Released frames, rotated upright unless ``upright`` is off (elementwise per frame: the
        same result in any batch)."""
        if not released:
            return CausalFrames.empty()
        frames = [f for f, _, _ in released]
        # one frame (a stream pushed frame by frame) needs no stacking, only a leading axis
        xy = frames[0][0][None] if len(frames) == 1 else np.stack([xy for xy, _ in frames])
        conf = frames[0][1][None] if len(frames) == 1 else np.stack([c for _, c in frames])
        unit = np.array([u for _, u, _ in released], np.float32)
        angle = np.array([a for _, _, a in released], np.float32)
        frames = CausalFrames(xy, conf, unit, angle)
        return self.to_upright(frames) if self.upright else frames

    def to_upright(self, frames: CausalFrames) -> CausalFrames:
        """Frames of an ``upright=False`` cleaner rotated upright, as ``push`` gives them by default."""
        return CausalFrames(rotate(frames.xy, -frames.angle, self.size), frames.conf, frames.unit, frames.angle)

    def flush(self) -> CausalFrames:
        """The frames still waiting at the end of the sequence (a warm-up not completed).

        Raises DataError when no frame ever had a measurable unit length.
        """
        out = self._upright(self._release())
        if self.pending:
            raise DataError("no unit length: neither shoulders, eyelids, eyes nor ears are visible")
        return out


def causal_centres(xy: np.ndarray, conf: np.ndarray, seen_before: np.ndarray | None = None) -> np.ndarray:
    """(T, S, 2) stream centres as :func:`src.data.pose.stream_centres` picks them, but from the
    rows seen up to each frame (``seen_before`` (134,): rows seen in earlier frames of the stream)
    instead of the rows the whole sequence ever shows."""
    seen = np.logical_or.accumulate(conf, axis=0)
    if seen_before is not None:
        seen |= seen_before
    centres = np.zeros((xy.shape[0], len(kp.STREAMS), 2), dtype=np.float32)
    starts = [0, *(np.nonzero((seen[1:] != seen[:-1]).any(axis=1))[0] + 1).tolist()]
    for a, b in zip(starts, [*starts[1:], xy.shape[0]]):    # frames that share the rows seen so far
        for i, s in enumerate(kp.STREAMS):
            centres[a:b, i] = xy[a:b, centre_rows(s, seen[a])].mean(axis=1)
    return centres


def causal_clean(raw: np.ndarray, conf_thresh: float, lowpass_sigma: float = 0.0,
                 warmup: int = 10) -> tuple[CleanPose, np.ndarray, np.ndarray]:
    """A whole raw ``[T, 134, 3]`` sequence through :class:`CausalCleaner` in one push.

    Returns the upright pose (pixels), the unit (T,) and the angle (T,) per frame.
    """
    if raw.ndim != 3 or raw.shape[1:] != (kp.NUM_ROWS, 3):
        raise ValueError(f"pose array must be [T, {kp.NUM_ROWS}, 3], got {list(raw.shape)}")
    cleaner = CausalCleaner(conf_thresh, lowpass_sigma, warmup)
    frames = concat_frames([cleaner.push(raw), cleaner.flush()])
    return CleanPose(frames.xy, frames.conf, video_size(raw)), frames.unit, frames.angle


def time_warp_raw(raw: np.ndarray, conf_thresh: float, rng: np.random.Generator, max_change: float) -> np.ndarray:
    """The time-warp augmentation on a raw sequence, before causal cleaning.

    A resampled point is observed (score 1) where both source frames around it were, else
    it gets score 0; the size row is kept.
    """
    pose = time_warp(CleanPose(raw[..., :2], observed_mask(raw, conf_thresh), video_size(raw)), rng, max_change)
    out = np.concatenate([pose.xy, pose.conf[..., None].astype(np.float32)], axis=-1)
    out[:, kp.SIZE_ROW] = raw[0, kp.SIZE_ROW]
    return out
