"""Built-in synthetic signer: plausible whole-body sign pose in the CSL-Daily layout.

A frontal upper-body skeleton (legs out of frame) performs a sentence of 2-6 signs from a
small procedural lexicon. Arms are 2-link chains solved from wrist targets, so bone
lengths are exactly constant; hands are 3D finger chains projected orthographically;
the face is a 68-point iBUG template that blinks, moves its mouth and turns with the head.
On top of that, detector-like noise: jitter, scores, lost hands and a few NaN frames.
Everything is built in a 512x512 reference frame and mapped to the requested size.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.data.keypoints import (
    FACE, L_ELBOW, L_HIP, L_SHOULDER, L_WRIST, LEFT_HAND, MIRROR_PERM, NOSE, NUM_ROWS,
    R_ELBOW, R_HIP, R_SHOULDER, R_WRIST, RIGHT_HAND, SIZE_ROW,
)
from src.data.source import DataError
from src.files import atomic_path

FPS = 30
NUM_SIGNERS = 8
_REF = 512.0  # everything is built in a _REF x _REF frame, then scaled to the requested size
_SPLITS = ("train", "val", "test")
_FRAMES_DIR = "frames_512x512"
MARKER = "synthetic.json"  # written last by write_synthetic_dataset: what the folder holds and how it was made
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
_MIN_REST = 10  # frames of rest pose at least at each end of a sequence
_SIGNER_SEED = 0x5161
_LEXICON_SEED = 0x1E71

# Internal hand/arm arrays use index 0 = signer's right (image left), 1 = left (image right).
_SIDE = np.array([-1.0, 1.0])
_HEAD_ROWS = np.arange(NOSE, L_SHOULDER)  # nose, eyes, ears
_VISIBLE = np.r_[NOSE:R_HIP + 1, FACE.start:NUM_ROWS]
_HIDDEN = np.setdiff1d(np.arange(1, NUM_ROWS), _VISIBLE)  # legs and feet: out of frame

# ---------------------------------------------------------------------------- hands
# Hand-local frame (right hand): x across the palm toward the thumb, y from the wrist to
# the fingers, z out of the palm. Units: wrist to middle fingertip = 1.
_FINGER_BASE = np.array([[0.15, 0.43, 0.0], [0.05, 0.45, 0.0], [-0.05, 0.43, 0.0], [-0.14, 0.39, 0.0]])
_FINGER_LEN = np.array([[0.23, 0.14, 0.11], [0.25, 0.17, 0.13], [0.23, 0.15, 0.12], [0.18, 0.11, 0.10]])
_FINGER_SPLAY = np.array([0.06, 0.0, -0.06, -0.14])    # rad, at rest
_FINGER_SPREAD = np.array([0.22, 0.03, -0.16, -0.32])  # rad added at full spread
_THUMB_BASE = np.array([0.08, 0.08, 0.02])
_THUMB_LEN = np.array([0.2, 0.15, 0.12])
_THUMB_REST = np.array([0.5, 0.8, 0.3]) / np.linalg.norm([0.5, 0.8, 0.3])
_THUMB_OPPOSED = np.array([-0.45, 0.55, 0.7]) / np.linalg.norm([-0.45, 0.55, 0.7])
_MCP_MAX, _PIP_MAX, _DIP_MAX = np.radians(85.0), np.radians(100.0), np.radians(65.0)

# A hand shape: MCP flexion of thumb..pinky (5), PIP flexion (5), spread, thumb opposition.
_SHAPES: dict[str, tuple[float, ...]] = {
    "flat":      (0.1, 0, 0, 0, 0,      0.1, 0, 0, 0, 0,          0.0, 0.3),
    "spread":    (0, 0, 0, 0, 0,        0, 0.05, 0.05, 0.05, 0.05, 1.0, 0.0),
    "fist":      (0.6, 1, 1, 1, 1,      0.7, 1, 1, 1, 1,          0.0, 0.8),
    "point":     (0.6, 0, 1, 1, 1,      0.7, 0, 1, 1, 1,          0.0, 0.8),
    "v":         (0.6, 0, 0, 1, 1,      0.7, 0, 0, 1, 1,          1.0, 0.8),
    "c":         (0.2, 0.35, 0.35, 0.35, 0.35, 0.2, 0.45, 0.45, 0.45, 0.45, 0.2, 0.35),
    "o":         (0.4, 0.55, 0.55, 0.55, 0.55, 0.4, 0.65, 0.65, 0.65, 0.65, 0.0, 0.9),
    "thumb_up":  (0, 1, 1, 1, 1,        0, 1, 1, 1, 1,            0.0, 0.0),
    "l":         (0, 0, 1, 1, 1,        0, 0, 1, 1, 1,            0.5, 0.0),
    "y":         (0, 1, 1, 1, 0,        0, 1, 1, 1, 0,            1.0, 0.0),
    "claw":      (0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 0.7, 0.7, 0.7, 0.7, 1.0, 0.3),
    "bent":      (0.2, 0.9, 0.9, 0.9, 0.9, 0.1, 0, 0, 0, 0,       0.0, 0.3),
}
_RELAXED = np.array((0.2, 0.25, 0.3, 0.35, 0.4, 0.3, 0.35, 0.4, 0.45, 0.5, 0.2, 0.3))

# One hand's controllable state: wrist target (x, y) in shoulder widths from the shoulder
# midpoint, wrist bend and pronation (rad), then the 12 shape parameters.
_POS, _BEND, _PRON, _SHAPE = slice(0, 2), 2, 3, slice(4, 16)


def _hand_state(pos, bend_deg: float, pron_deg: float, shape) -> np.ndarray:
    """A (16,) hand state from a wrist target, angles in degrees and 12 shape parameters."""
    return np.r_[pos, np.radians(bend_deg), np.radians(pron_deg), shape]


# The right hand rests low in front of the belly, fingers toward the midline.
_REST_RIGHT = _hand_state((-0.3, 1.22), -30.0, 80.0, _RELAXED)


def _mirror_state(state: np.ndarray) -> np.ndarray:
    """The other hand's state for a left/right-symmetric pose (the hand model mirrors itself)."""
    out = state.copy()
    out[..., 0] *= -1.0
    return out


_REST = np.stack([_REST_RIGHT, _mirror_state(_REST_RIGHT)])  # (2, 16)

# ---------------------------------------------------------------------------- lexicon
# Dominant-hand wrist locations in shoulder widths from the shoulder midpoint (+y down).
# Near the face the wrist sits a little under the shoulder line and the fingers reach up.
_LOCATIONS = np.array([
    (-0.36, 0.16), (-0.27, 0.12), (-0.32, 0.3), (-0.05, 0.5), (-0.3, 0.45), (-0.2, 0.62),
    (-0.15, 0.36), (-0.42, 0.6), (0.15, 0.5), (-0.05, 0.8), (-0.38, 0.85),
])  # cheek, chin, neck, chest, chest side, neutral, neutral high, side, across, belly, low side
_WORDS = (
    "HELLO THANK-YOU PLEASE SORRY YES NO WANT NEED LIKE KNOW THINK SEE GO COME EAT DRINK "
    "WATER FOOD HOME SCHOOL WORK FRIEND FAMILY MOTHER FATHER CHILD TEACHER DOCTOR TODAY "
    "TOMORROW YESTERDAY NOW TIME DAY NIGHT WEATHER RAIN SUN GOOD BAD HAPPY TIRED BIG SMALL "
    "MANY WHERE WHAT WHO"
).split()


@dataclass(frozen=True, eq=False)
class _Sign:
    """One lexicon entry: the dominant hand's keyframes and what the other hand does."""

    gloss: str
    dominant: np.ndarray   # (K, 16) hand states along the movement
    bulge: np.ndarray      # (K-1, 2) arc offset at the middle of each leg
    leg_frames: float      # nominal frames per leg
    other: str             # "rest", "mirror" (symmetric two-handed) or "base" (static)
    base: np.ndarray       # (16,) the static other hand when other == "base"
    syllables: int         # mouthing bumps during the movement


def _path(rng: np.random.Generator, start: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Waypoints, per-leg arc offsets and leg duration of one movement."""
    kind = rng.choice(["straight", "arc", "repeat", "circle"], p=[0.35, 0.3, 0.2, 0.15])
    angle = rng.uniform(0, 2 * np.pi)
    step = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-step[1], step[0]])
    if kind == "repeat":
        end = start + step * rng.uniform(0.06, 0.15)
        legs = int(rng.integers(2, 5))
        points = np.array([start if k % 2 == 0 else end for k in range(legs + 1)])
        return points, np.zeros((legs, 2)), rng.uniform(4, 6)
    end = start + step * rng.uniform(0.15, 0.35)
    arc = normal * rng.choice([-1, 1]) * rng.uniform(0.06, 0.12)
    if kind == "circle":
        return np.array([start, end, start]), np.array([arc, -arc]), rng.uniform(6, 9)
    bulge = arc if kind == "arc" else np.zeros(2)
    return np.array([start, end]), bulge[None], rng.uniform(7, 12)


def _comfortable(points: np.ndarray, bulge: np.ndarray, max_x: float) -> bool:
    """Whether a right-hand path keeps the elbow low and on its own side (average proportions).

    With constant 2D bone lengths a wrist high or far across would swing the elbow up or
    across the body. In real recordings the elbow sits 0-0.6 (median 0.3) shoulder widths
    outside the shoulder and well below it. A wrist right at the shoulder would make the
    elbow spin around it.
    """
    shoulder = np.array([-0.5, 0.0])
    probes = np.r_[points, (points[1:] + points[:-1]) / 2 + bulge]
    elbow, _, _ = _arm(shoulder[None], probes, 0.85, 0.75, _SIDE[0])
    inward = elbow[:, 0] - shoulder[0]
    natural = (inward > -0.5) & (inward < 0.08) & (elbow[:, 1] > 0.4)
    natural &= np.linalg.norm(probes - shoulder, axis=1) > 0.2
    return bool(natural.all() and probes[:, 0].max() <= max_x)


def _make_sign(rng: np.random.Generator, gloss: str) -> _Sign:
    """A random sign: location, movement, hand shapes, orientation, other hand, mouthing."""
    shapes = list(_SHAPES.values())
    other = str(rng.choice(["rest", "mirror", "base"], p=[0.5, 0.3, 0.2]))
    base = _hand_state((0.12, 0.62), -20.0, 150.0, shapes[rng.choice([0, 2])])
    while True:  # rejection keeps the lexicon's arms natural
        where = np.array([-0.02, 0.48]) if other == "base" else _LOCATIONS[rng.integers(len(_LOCATIONS))]
        points, bulge, leg = _path(rng, where + rng.normal(0, 0.04, 2))
        if _comfortable(points, bulge, -0.1 if other == "mirror" else 0.3):
            break
    first = np.array(shapes[rng.integers(len(shapes))])
    last = np.array(shapes[rng.integers(len(shapes))]) if rng.random() < 0.3 else first
    mix = np.linspace(0, 1, len(points))[:, None]
    # Symmetric signs turn the hands up and out so that the two do not cross.
    bend = rng.uniform(-50, -15) if other == "mirror" else rng.uniform(-40, 30)
    pron = rng.choice([0.0, 30.0, 90.0, 150.0])
    shapes_along = (1 - mix) * first + mix * last
    dominant = np.stack([_hand_state(p, bend, pron, s) for p, s in zip(points, shapes_along)])
    syllables = int(rng.integers(1, 4)) if rng.random() < 0.5 else 0
    return _Sign(gloss, dominant, bulge, leg, other, base, syllables)


@lru_cache(maxsize=1)
def _lexicon() -> tuple[_Sign, ...]:
    """The sign lexicon; fixed (its own seed), so glosses mean the same in every dataset."""
    rng = np.random.default_rng(_LEXICON_SEED)
    return tuple(_make_sign(rng, w) for w in _WORDS)

# ---------------------------------------------------------------------------- signers


@dataclass(frozen=True)
class _Signer:
    """Per-signer proportions (pixels of the reference frame) and placement."""

    shoulder: float       # shoulder width
    upper_arm: float
    forearm: float
    hand: float           # wrist to middle fingertip
    face: float           # face template scale (1 = 18 px eye corner to corner)
    hip_width: float
    torso: float          # shoulder line to hip line
    neck: float           # shoulder line to nose tip
    centre: tuple[float, float]  # shoulder midpoint
    left_handed: bool


@lru_cache(maxsize=None)
def _signer(signer: int) -> _Signer:
    """Proportions depend only on the signer id, so a signer looks the same in every dataset."""
    rng = np.random.default_rng([_SIGNER_SEED, signer])
    s = rng.uniform(178.0, 202.0)
    return _Signer(
        shoulder=s, upper_arm=s * rng.uniform(0.82, 0.88), forearm=s * rng.uniform(0.72, 0.78),
        hand=s * rng.uniform(0.42, 0.48), face=s / (10.6 * 18.0) * rng.uniform(0.96, 1.04),
        hip_width=s * rng.uniform(0.62, 0.7), torso=s * rng.uniform(1.38, 1.46),
        neck=s * rng.uniform(0.57, 0.64),
        centre=(_REF / 2 + rng.uniform(-8, 8), rng.uniform(228.0, 246.0)),
        left_handed=signer == NUM_SIGNERS - 1,
    )

# ---------------------------------------------------------------------------- timeline


class _Track:
    """Keyframes of both hands' states in nominal frames, eased with minimum jerk."""

    def __init__(self, start: np.ndarray) -> None:
        self.times, self.values, self.bulges = [0.0], [start], []

    def move(self, value: np.ndarray, frames: float, bulge: np.ndarray | None = None) -> None:
        self.times.append(self.times[-1] + frames)
        self.values.append(value)
        self.bulges.append(np.zeros((2, 2)) if bulge is None else bulge)

    def hold(self, frames: float) -> None:
        self.move(self.values[-1], frames)

    def reach(self, rng: np.random.Generator, value: np.ndarray) -> None:
        """Move to ``value`` at a human pace: a longer way takes longer (peaks ~1-2 m/s)."""
        way = np.linalg.norm(value[:, _POS] - self.values[-1][:, _POS], axis=-1).max()
        self.move(value, rng.uniform(4, 7) + 10 * way)

    def still(self, t: np.ndarray) -> np.ndarray:
        """(T,) bool: both hands hold still at nominal times ``t`` (a hold, or the rest before
        the first and after the last keyframe)."""
        times, values = np.array(self.times), np.array(self.values)
        seg = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
        held = np.array([np.array_equal(values[i], values[i + 1]) for i in range(len(times) - 1)])
        return (t <= times[0]) | (t >= times[-1]) | held[seg]

    def sample(self, t: np.ndarray) -> np.ndarray:
        """States (T, 2, 16) at nominal times ``t``."""
        times, values, bulges = np.array(self.times), np.array(self.values), np.array(self.bulges)
        seg = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
        u = np.clip((t - times[seg]) / (times[seg + 1] - times[seg]), 0.0, 1.0)
        s = (u ** 3 * (10 - 15 * u + 6 * u ** 2))[:, None, None]  # minimum-jerk easing
        out = values[seg] + s * (values[seg + 1] - values[seg])
        out[..., _POS] += np.sin(np.pi * s) * bulges[seg]
        return out


_Bump = tuple[float, float, float]  # centre, half width, amplitude


def _perform(rng: np.random.Generator, track: _Track, sign: _Sign, mouth: list[_Bump]) -> None:
    """Append one sign (transition, hold, movement, hold) to ``track`` and its mouthing to ``mouth``."""
    dom = sign.dominant.copy()
    dom[:, _POS] += rng.normal(0, 0.03, 2)  # no two performances land on the same spot
    if sign.other == "mirror":
        other, other_bulge = _mirror_state(dom), sign.bulge * [-1.0, 1.0]
    else:
        other = np.repeat((_REST[1] if sign.other == "rest" else sign.base)[None], len(dom), 0)
        other_bulge = np.zeros_like(sign.bulge)
    track.reach(rng, np.stack([dom[0], other[0]]))
    track.hold(rng.uniform(2, 5))
    begin, leg = track.times[-1], sign.leg_frames * rng.uniform(0.85, 1.2)
    for k in range(1, len(dom)):
        track.move(np.stack([dom[k], other[k]]), leg, np.stack([sign.bulge[k - 1], other_bulge[k - 1]]))
    span = track.times[-1] - begin
    for j in range(sign.syllables):
        mouth.append((begin + span * (j + 0.5) / sign.syllables, rng.uniform(4, 7), rng.uniform(0.3, 0.9)))
    track.hold(rng.uniform(6, 14))


def _sentence(rng: np.random.Generator, num_frames: int) -> list[_Sign]:
    n = int(np.clip(round((num_frames - 40) / 35 + rng.uniform(-0.7, 0.7)), 2, 6))
    return [_lexicon()[i] for i in rng.choice(len(_WORDS), n, replace=False)]


def _frame_times(rng: np.random.Generator, signing: float, num_frames: int) -> np.ndarray:
    """Track time of each frame; the track rests before 0 and after ``signing``.

    Signing keeps its natural pace and spare frames rest at both ends. A sentence too long
    for ``num_frames`` is time-compressed, still between a few rest frames at each end.
    """
    rest = min(_MIN_REST, num_frames // 4)
    spare = num_frames - 1 - signing - 2 * rest
    if spare >= 0:
        return np.arange(num_frames) - rest - rng.uniform(0, spare)
    middle = np.linspace(0, signing, num_frames - 2 * rest)
    return np.r_[np.full(rest, -1.0), middle, np.full(rest, signing + 1.0)]


def _bumps(t: np.ndarray, bumps: list[_Bump]) -> np.ndarray:
    """Sum of raised-cosine bumps, clipped to [0, 1]."""
    if not bumps:
        return np.zeros_like(t)
    c, w, a = np.array(bumps).T
    d = t[:, None] - c
    return np.clip(np.where(np.abs(d) < w, a * np.cos(np.pi * d / (2 * w)) ** 2, 0.0).sum(1), 0, 1)


def _blinks(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Eyelid closure in [0, 1]: fully shut for 3-5 frames every 2-5 s, 2-frame ramps."""
    starts = np.cumsum(np.r_[rng.uniform(5, 90), rng.uniform(2 * FPS, 5 * FPS, num_frames // 60 + 1)])
    held = rng.integers(3, 6, len(starts))
    centres = np.floor(starts) + (held - 1) / 2
    d = np.abs(np.arange(num_frames)[:, None] - centres)
    return np.clip((held / 2 + 2 - d) / 2, 0, 1).max(1)


def _wander(rng: np.random.Generator, num_frames: int, channels: int, amp: float,
            max_hz: float) -> np.ndarray:
    """Slow smooth random motion (T, channels) bounded by ``amp``: a few random sinusoids."""
    t = np.arange(num_frames)[:, None, None] / FPS
    freq = rng.uniform(0.05, max_hz, (3, channels))
    phase = rng.uniform(0, 2 * np.pi, (3, channels))
    weight = rng.uniform(0.3, 1.0, (3, channels))
    return amp * (weight * np.sin(2 * np.pi * freq * t + phase)).sum(1) / weight.sum(0)

# ---------------------------------------------------------------------------- face


def _face_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """68 iBUG points (x, y, depth) for a frontal face with 18 px eyes, origin at the nose tip.

    Also per-point weights of mouth opening (downward shift) and eye closure (y shift).
    Only the image-left half and the midline are written; the rest is mirrored.
    """
    pts = np.full((68, 3), np.nan)  # row n-1 = iBUG landmark n
    a = np.pi * np.arange(9) / 16
    pts[0:9] = np.c_[-45 * np.cos(a) ** 0.8, -22 + 76 * np.sin(a), -30 + 30 * np.sin(a)]  # jaw to chin
    pts[17:22] = np.c_[np.linspace(-39, -9, 5), [-41, -46, -47.5, -46.5, -43], np.full(5, 4)]  # brow
    pts[27:31] = np.c_[np.zeros(4), [-28, -19, -9, 0], [6, 13, 20, 26]]  # nose bridge to tip
    pts[31:34] = [(-11, 8, 12), (-6, 10, 16), (0, 11, 18)]  # nostrils
    cx, cy = -21.25, -28.0
    pts[36:42] = [(cx - 9, cy, 0), (cx - 3.5, cy - 3.5, 0), (cx + 3.5, cy - 3.5, 0),
                  (cx + 9, cy, 0), (cx + 3.5, cy + 2.5, 0), (cx - 3.5, cy + 2.5, 0)]  # eye
    pts[48:52] = [(-16, 25, 8), (-10, 21, 11), (-4, 19.5, 13), (0, 20.5, 14)]  # upper lip
    pts[57:60] = [(0, 33, 13), (-6, 32, 12), (-12, 29.5, 10)]  # lower lip
    pts[60:63] = [(-13, 25, 9), (-5, 23.5, 12), (0, 23.5, 13)]  # inner upper lip
    pts[66:68] = [(0, 27, 13), (-5, 27, 12)]  # inner lower lip
    mirror = MIRROR_PERM[FACE.start:FACE.stop] - FACE.start
    pts = np.where(np.isnan(pts), pts[mirror] * [-1, 1, 1], pts)
    mouth = np.zeros(68)
    mouth[[55, 56, 57, 58, 59, 65, 66, 67]] = 1.0                # lower lip
    mouth[[48, 54, 60, 64]] = 0.5                                # lip corners
    mouth[4:13] = [0.15, 0.3, 0.45, 0.55, 0.6, 0.55, 0.45, 0.3, 0.15]  # jaw drops with the lip
    blink = np.zeros(68)
    blink[[37, 38, 43, 44]] = 5.0    # upper lids come down ...
    blink[[40, 41, 46, 47]] = -1.0   # ... to meet the lower lids 1.5 px under the corners
    return pts, mouth, blink


_FACE_PTS, _MOUTH_W, _BLINK_W = _face_template()
# Body head rows (nose, left eye, right eye, left ear, right ear) in the same frame.
_HEAD_PTS = np.array([(0, 0, 26), (21.25, -28, 0), (-21.25, -28, 0), (39.5, -20, -40), (-39.5, -20, -40)])
_NECK_PIVOT = np.array([0.0, 75.0, -50.0])


def _rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations roll @ pitch @ yaw; image axes x right, y down, z to the camera."""
    c, s, one, zero = np.cos, np.sin, np.ones_like(yaw), np.zeros_like(yaw)
    ry = np.stack([c(yaw), zero, s(yaw), zero, one, zero, -s(yaw), zero, c(yaw)], -1)
    rx = np.stack([one, zero, zero, zero, c(pitch), -s(pitch), zero, s(pitch), c(pitch)], -1)
    rz = np.stack([c(roll), -s(roll), zero, s(roll), c(roll), zero, zero, zero, one], -1)
    return rz.reshape(-1, 3, 3) @ rx.reshape(-1, 3, 3) @ ry.reshape(-1, 3, 3)


def _head(rng: np.random.Generator, who: _Signer, nose: np.ndarray, mouth: np.ndarray) -> np.ndarray:
    """Face (68) and body head rows (5) in pixels, (T, 73, 2), turning and nodding about the neck."""
    num_frames = len(nose)
    pts = np.broadcast_to(np.r_[_FACE_PTS, _HEAD_PTS], (num_frames, 73, 3)).copy()
    pts[:, :68, 1] += mouth[:, None] * 12.0 * _MOUTH_W + _blinks(rng, num_frames)[:, None] * _BLINK_W
    yaw, pitch, roll = np.radians(_wander(rng, num_frames, 3, 1.0, 0.5) * [7.0, 5.0, 3.0]).T
    turned = (pts - _NECK_PIVOT) @ _rotation(yaw, pitch, roll).transpose(0, 2, 1) + _NECK_PIVOT
    return nose[:, None] + who.face * turned[..., :2]

# ---------------------------------------------------------------------------- arms and hands


def _arm(shoulder: np.ndarray, target: np.ndarray, upper: float, fore: float,
         side: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-link arm reaching for ``target``: elbow, wrist (T, 2) and forearm angle (T,).

    The elbow takes the solution on the outer-lower side; bone lengths are exact.
    """
    d = target - shoulder
    reach = np.clip(np.hypot(d[:, 0], d[:, 1]), abs(upper - fore) + 1e-3, upper + fore - 1e-3)
    phi = np.arctan2(d[:, 1], d[:, 0])
    alpha = np.arccos(np.clip((upper ** 2 + reach ** 2 - fore ** 2) / (2 * upper * reach), -1, 1))
    a1 = phi - side * alpha
    elbow = shoulder + upper * np.c_[np.cos(a1), np.sin(a1)]
    wrist_at = shoulder + reach[:, None] * np.c_[np.cos(phi), np.sin(phi)]
    a2 = np.arctan2(wrist_at[:, 1] - elbow[:, 1], wrist_at[:, 0] - elbow[:, 0])
    return elbow, elbow + fore * np.c_[np.cos(a2), np.sin(a2)], a2


def _segments(base: np.ndarray, lengths: np.ndarray, along: np.ndarray, curl: np.ndarray,
              angles: np.ndarray) -> np.ndarray:
    """4 chain points from ``base``; segment j turns from ``along`` toward ``curl`` by ``angles[..., j]``."""
    points = [np.broadcast_to(base, angles.shape[:-1] + (3,))]
    for j in range(3):
        a = angles[..., j, None]
        points.append(points[-1] + lengths[..., j, None] * (np.cos(a) * along + np.sin(a) * curl))
    return np.stack(points, -2)


def _hand_local(shape: np.ndarray) -> np.ndarray:
    """21 right-hand points (T, 21, 3) in the hand-local frame from shape parameters (T, 12)."""
    mcp, pip, spread, opp = shape[:, :5], shape[:, 5:10], shape[:, 10:11], shape[:, 11:12]
    splay = _FINGER_SPLAY + spread * _FINGER_SPREAD                         # (T, 4)
    along = np.stack([np.sin(splay), np.cos(splay), np.zeros_like(splay)], -1)
    a1 = mcp[:, 1:] * _MCP_MAX
    angles = np.stack([a1, a1 + pip[:, 1:] * _PIP_MAX, a1 + pip[:, 1:] * (_PIP_MAX + _DIP_MAX)], -1)
    fingers = _segments(_FINGER_BASE, _FINGER_LEN, along, np.array([0.0, 0.0, 1.0]), angles)  # (T, 4, 4, 3)
    t_along = (1 - opp) * _THUMB_REST + opp * _THUMB_OPPOSED
    t_along /= np.linalg.norm(t_along, axis=-1, keepdims=True)
    across = np.array([-1.0, 0.0, 1.0]) / np.sqrt(2)
    t_curl = across - (t_along @ across)[:, None] * t_along
    t_curl /= np.linalg.norm(t_curl, axis=-1, keepdims=True)
    t_angles = np.stack([0.3 * mcp[:, 0], 0.9 * mcp[:, 0], 0.9 * mcp[:, 0] + 1.2 * pip[:, 0]], -1)
    thumb = _segments(_THUMB_BASE, _THUMB_LEN, t_along, t_curl, t_angles)     # (T, 4, 3)
    wrist = np.zeros((len(shape), 1, 3))
    return np.concatenate([wrist, thumb, fingers.reshape(-1, 16, 3)], 1)


def _hand(state: np.ndarray, forearm: np.ndarray, size: float, side: float) -> np.ndarray:
    """Hand points (T, 21, 2) relative to the wrist, pointing along forearm + bend."""
    local = _hand_local(state[:, _SHAPE])
    pron = state[:, _PRON, None]
    across = (local[..., 0] * np.cos(pron) + local[..., 2] * np.sin(pron)) * -side  # left hand mirrors
    theta = (forearm - side * state[:, _BEND])[:, None]
    x = local[..., 1] * np.cos(theta) - across * np.sin(theta)
    y = local[..., 1] * np.sin(theta) + across * np.cos(theta)
    return size * np.stack([x, y], -1)

# ---------------------------------------------------------------------------- assembly


def _skeleton(rng: np.random.Generator, who: _Signer, states: np.ndarray, mouth: np.ndarray) -> np.ndarray:
    """Clean keypoints (T, 134, 2) in the reference frame; rows not drawn stay 0."""
    num_frames = len(states)
    sway = _wander(rng, num_frames, 3, 1.0, 0.15) * [2.0, 1.5, np.radians(0.6)]
    hip_c = np.array(who.centre) + [0.0, who.torso] + sway[:, :2] * 0.3
    roll = sway[:, 2:]
    up, right = np.c_[np.sin(roll), -np.cos(roll)], np.c_[np.cos(roll), np.sin(roll)]
    shoulders = hip_c[:, None] + who.torso * up[:, None] + who.shoulder / 2 * _SIDE[:, None] * right[:, None]
    pts = np.zeros((num_frames, NUM_ROWS, 2))
    pts[:, [R_SHOULDER, L_SHOULDER]] = shoulders
    pts[:, [R_HIP, L_HIP]] = hip_c[:, None] + who.hip_width / 2 * _SIDE[:, None] * right[:, None]
    nose = hip_c + (who.torso + who.neck) * up + sway[:, :2]
    head = _head(rng, who, nose, mouth)
    pts[:, FACE.start:FACE.stop], pts[:, _HEAD_ROWS] = head[:, :68], head[:, 68:]
    mid = shoulders.mean(1)
    arms = [(R_ELBOW, R_WRIST, RIGHT_HAND), (L_ELBOW, L_WRIST, LEFT_HAND)]
    for i, (elbow_row, wrist_row, hand) in enumerate(arms):
        target = mid + who.shoulder * states[:, i, _POS]
        elbow, wrist, forearm = _arm(shoulders[:, i], target, who.upper_arm, who.forearm, _SIDE[i])
        pts[:, elbow_row], pts[:, wrist_row] = elbow, wrist
        pts[:, hand.start:hand.stop] = wrist[:, None] + _hand(states[:, i], forearm, who.hand, _SIDE[i])
    return pts


def _scores_and_noise(rng: np.random.Generator, pts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Detector output (T, 134, 3): jitter, scores, lost hands, off-frame points and NaN frames."""
    num_frames = len(pts)
    hands = np.r_[LEFT_HAND.start:RIGHT_HAND.stop]
    sigma = np.full(NUM_ROWS, 0.7)
    sigma[hands] = 1.5
    pts = pts + rng.normal(0, 1, pts.shape) * sigma[:, None] * min(size) / _REF
    score = 1 - 0.3 * rng.beta(1.5, 4.0, (num_frames, NUM_ROWS))
    score[:, hands] = 1 - 0.35 * rng.beta(1.5, 3.0, (num_frames, len(hands)))
    score[:, [L_HIP, R_HIP]] = rng.uniform(0.35, 0.7, (num_frames, 2))
    score[:, _HIDDEN] = 0.0
    for hand in (LEFT_HAND, RIGHT_HAND):
        if rng.random() < 0.3:  # the detector loses the hand for a stretch
            length = int(rng.integers(5, 30))
            t0 = int(rng.integers(0, max(1, num_frames - length)))
            block = score[t0:t0 + length, hand.start:hand.stop]
            block[:] = 0.0 if rng.random() < 0.5 else rng.uniform(0.02, 0.28, block.shape)
    margin = 0.02 * np.array(size)
    inside = np.all((pts >= -margin) & (pts <= np.array(size) + margin), -1)
    score = np.where(inside, score, 0.0)
    out = np.concatenate([np.where(score[..., None] > 0, pts, 0.0), score[..., None]], -1)
    if rng.random() < 0.1:
        out[rng.choice(num_frames, min(num_frames, int(rng.integers(1, 4))), replace=False), 1:] = np.nan
    return out


def synth_sequence(rng: np.random.Generator, num_frames: int, width: int = 512, height: int = 512, *,
                   signer: int | None = None, noise: bool = True) -> tuple[np.ndarray, list[str]]:
    """One signer video's pose: float32 [num_frames, 134, 3] (row 0 = (width, height, 0)), and its glosses.

    ``signer`` (0..NUM_SIGNERS-1, drawn from ``rng`` when None) picks the body proportions;
    the last signer is left-handed. ``noise=False`` gives the ground truth of the same draw:
    no jitter, scores 1, nothing lost, no NaN frames (NaN frames keep row 0 in noisy mode).
    """
    pose, glosses, _ = synth_sequence_with_holds(rng, num_frames, width, height, signer=signer, noise=noise)
    return pose, glosses


def synth_sequence_with_holds(rng: np.random.Generator, num_frames: int, width: int = 512, height: int = 512, *,
                              signer: int | None = None, noise: bool = True
                              ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """:func:`synth_sequence` plus a (num_frames,) bool of the frames where both hands hold
    still (sign holds and the rest pose; head, face and a slow body sway still move)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    who = _signer(int(rng.integers(NUM_SIGNERS)) if signer is None else signer)
    signs = _sentence(rng, num_frames)
    track, mouth = _Track(_REST), []
    for sign in signs:
        _perform(rng, track, sign, mouth)
    track.reach(rng, _REST)
    t = _frame_times(rng, track.times[-1], num_frames)
    still = track.still(t)
    pts = _skeleton(rng, who, track.sample(t), _bumps(t, mouth))
    if who.left_handed:
        pts = pts[:, MIRROR_PERM] * [-1, 1] + [_REF, 0]
    pts = (pts - _REF / 2) * (min(width, height) / _REF) + [width / 2, height / 2]
    if noise:
        pose = _scores_and_noise(rng, pts, (width, height))
    else:
        pose = np.concatenate([pts, np.ones(pts.shape[:2] + (1,))], -1)
        pose[:, _HIDDEN] = 0.0
    pose[:, SIZE_ROW] = (width, height, 0)
    return pose.astype(np.float32), [s.gloss for s in signs], still


def frame_ranges(mask: np.ndarray) -> list[list[int]]:
    """[[start, end), ...] of the True runs of a (T,) bool."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return [[int(a), int(b)] for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]

# ---------------------------------------------------------------------------- dataset


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _split_of(index: int, fractions: tuple[float, float, float]) -> str:
    """Golden-ratio (Weyl) sequence: every prefix of the dataset is split close to ``fractions``."""
    u = (index * _GOLDEN) % 1.0
    return _SPLITS[min(int(np.searchsorted(np.cumsum(fractions), u, side="right")), 2)]


def _text(glosses: list[str]) -> str:
    words = " ".join(glosses).replace("-", " ").lower()
    end = "?" if {"WHERE", "WHAT", "WHO"} & set(glosses) else "."
    return words[0].upper() + words[1:] + end


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_synthetic_dataset(
    out: str | Path, num: int, seed: int = 0, min_frames: int = 60, max_frames: int = 240,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[str, int]:
    """Write ``num`` synthetic sequences in the CSL-Daily layout under ``out``; return counts per split.

    Sequence i depends only on (seed, i), so a smaller dataset is a prefix of a larger one.
    Splits follow a golden-ratio sequence, so every split is non-empty from num = 10 on.
    """
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split_fractions must be 3 numbers >= 0 summing to 1, got {split_fractions}")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    root = Path(out)
    previous = _previous_synthetic_files(root)
    (root / _FRAMES_DIR).mkdir(parents=True, exist_ok=True)
    annotations, splits = {}, {s: [] for s in _SPLITS}
    for i in tqdm(range(num), desc="synth", unit="seq", disable=True if num < 200 else None):
        name = f"synth_{i:06d}"
        rng = np.random.default_rng([seed, i])
        num_frames = int(rng.integers(min_frames, max_frames + 1))
        signer = int(rng.integers(NUM_SIGNERS))
        pose, glosses, still = synth_sequence_with_holds(rng, num_frames, signer=signer)
        _atomic_write(root / _FRAMES_DIR / f"{name}.npy", _npy_bytes(pose))
        # holds: frame ranges [start, end) where both hands hold still (the hold measure's truth)
        annotations[name] = {"text": _text(glosses), "gloss": " ".join(glosses),
                             "num_frames": num_frames, "signer": signer, "holds": frame_ranges(still)}
        splits[_split_of(i, fractions)].append(name)
    marker = {"generator": "signstream data-synth", "num": num, "seed": seed, "min_frames": min_frames,
              "max_frames": max_frames, "split_fractions": list(fractions),
              "planted": "detector-like noise on purpose: jitter, low scores, lost hands, points off the frame "
                         "and 1-3 NaN frames per sequence (NaN positions and scores)"}
    for file, data in (("annotations.json", annotations), ("split_files.json", splits), (MARKER, marker)):
        _atomic_write(root / file, json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8"))
    # Only now that the split file no longer lists them: files of an earlier, larger set.
    for path in previous - {root / _FRAMES_DIR / f"{name}.npy" for name in annotations}:
        path.unlink(missing_ok=True)
    return {s: len(names) for s, names in splits.items()}


def synthetic_marker(root: str | Path) -> dict | None:
    """What ``write_synthetic_dataset`` recorded in ``root`` (num, seed, ...), or None if it did not write it."""
    try:
        return json.loads((Path(root) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _previous_synthetic_files(root: Path) -> set[Path]:
    """The pose files of a synthetic set already in ``root`` (replaced by a new one).

    A folder that holds anything else is refused with a DataError: writing the synthetic set
    there would mix it with, or delete, someone's data.
    """
    if not root.is_dir():
        return set()  # nothing there yet (or a file in the way, which the mkdir reports)
    frames = root / _FRAMES_DIR
    files = set(frames.glob("*.npy")) if frames.is_dir() else set()
    ours = {"annotations.json", "split_files.json", MARKER, _FRAMES_DIR, "packed"}
    foreign = [p.name for p in root.iterdir() if p.name not in ours and not p.name.startswith(".")]
    foreign += [p.name for p in files if not re.fullmatch(r"synth_\d{6}\.npy", p.name)]
    if foreign and synthetic_marker(root) is None:
        raise DataError(f"{root} holds files the synthetic signer did not write (e.g. {sorted(foreign)[0]}), "
                        "so it is left alone (fix: write the synthetic set to a new or empty folder)")
    return {p for p in files if re.fullmatch(r"synth_\d{6}\.npy", p.name)}
