"""COCO-WholeBody layout of the CSL-Daily pose arrays, in one place.

A pose file is ``[T, 134, 3]``: row 0 holds the video size, rows 1..133 are the
133 keypoints ``(x, y, score)``. Because of the size row, the 1-based COCO-WholeBody
keypoint number equals the row index; every index in this module is such a row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_ROWS = 134  # size row + 133 keypoints
SIZE_ROW = 0

BODY = range(1, 18)        # nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles
UPPER_BODY = range(1, 12)  # nose, eyes, ears, shoulders, elbows, wrists: what the body stream codes
FEET = range(18, 24)       # not used for sign language
FACE = range(24, 92)       # 68 iBUG landmarks, jaw first
LEFT_HAND = range(92, 113)   # signer's own left, wrist first
RIGHT_HAND = range(113, 134)

# Named body rows (COCO order, 1-based).
NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 1, 2, 3, 4, 5
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 6, 7, 8, 9, 10, 11
L_HIP, R_HIP = 12, 13


@dataclass(frozen=True)
class Stream:
    """One token stream: which rows it holds and the rows its local frame is centred on.

    The centre is the mean of ``centre`` rows, every frame. Streams code the upper body
    only: hips, knees and ankles carry no signing, are estimator guesses in sign videos and
    are often out of frame (docs/design.md).
    """

    name: str
    id_prefix: str
    rows: tuple[int, ...]
    centre: tuple[int, ...]

    @property
    def num_keypoints(self) -> int:
        return len(self.rows)


# Frames of reference: body and full body on the shoulder midpoint (the nose moved the whole
# body frame with every nod); the face on its rigid points, the eye corners and the nose
# bridge (the chin moved it with the mouth); each hand on its wrist.
SHOULDERS = (L_SHOULDER, R_SHOULDER)
FACE_RIGID = (60, 63, 66, 69, 51, 52, 53, 54)  # landmarks 37, 40, 43, 46 (eye corners), 28-31 (nose bridge)
STREAMS: tuple[Stream, ...] = (
    Stream("F", "c", tuple(FACE), FACE_RIGID),
    Stream("LH", "a", tuple(LEFT_HAND), (92,)),
    Stream("RH", "b", tuple(RIGHT_HAND), (113,)),
    Stream("B", "d", tuple(UPPER_BODY), SHOULDERS),
    Stream("FB", "e", tuple(UPPER_BODY) + tuple(FACE) + tuple(LEFT_HAND) + tuple(RIGHT_HAND), SHOULDERS),
)
STREAM_NAMES: tuple[str, ...] = tuple(s.name for s in STREAMS)
STREAM_BY_NAME: dict[str, Stream] = {s.name: s for s in STREAMS}


def stream_offsets() -> dict[str, slice]:
    """Slices of each stream in the stream-concatenated keypoint axis (242 points)."""
    out, start = {}, 0
    for s in STREAMS:
        out[s.name] = slice(start, start + s.num_keypoints)
        start += s.num_keypoints
    return out


STREAM_SLICES = stream_offsets()
STREAM_ROWS = np.array([r for s in STREAMS for r in s.rows])  # (242,) rows of the concatenated axis
NUM_STREAM_POINTS = len(STREAM_ROWS)


def _point(stream: str, row: int) -> int:
    """Index among the 242 stream points of ``row`` in ``stream``."""
    return STREAM_SLICES[stream].start + STREAM_BY_NAME[stream].rows.index(row)


def parts_in_full_body() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the full-body stream's arms and hands sit in the part streams: B and FB share one
    frame (the shoulders' midpoint), and each hand is centred on its own wrist.

    Returns (fb, body, hand), indices of the 242 stream points: FB point ``fb[i]`` is B point
    ``body[i]`` (elbows, wrists), plus hand point ``hand[i]`` for the hands' points (a hand is
    centred on its wrist, placed at the body's wrist); ``hand[i]`` is -1 for the arm points.
    """
    triples = [(_point("FB", row), _point("B", row), -1) for row in (L_ELBOW, R_ELBOW, L_WRIST, R_WRIST)]
    triples += [(_point("FB", row), _point("B", wrist), _point(name, row))
                for name, wrist in (("LH", L_WRIST), ("RH", R_WRIST)) for row in STREAM_BY_NAME[name].rows]
    fb, body, hand = (np.array(v) for v in zip(*triples))
    return fb, body, hand


# What ``data.reference`` codes relative to its own mean pose: the face, and with "head" also the
# body's head and shoulders. Their mean pose is the signer's build and the estimator's model; the
# arms are left out, since where the hands are over a sentence is part of what is signed.
REFERENCE_POINTS = {
    "none": np.zeros(0, dtype=np.int64),
    "face": np.arange(STREAM_SLICES["F"].start, STREAM_SLICES["F"].stop),
    "head": np.concatenate([np.arange(STREAM_SLICES["F"].start, STREAM_SLICES["F"].stop),
                            [STREAM_SLICES["B"].start + STREAM_BY_NAME["B"].rows.index(r)
                             for r in (NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SHOULDER, R_SHOULDER)]]),
}

# Unit length of normalisation: pairs of rows whose distance is measured per frame. The
# unit is the shoulder width / 10.6, in "eyelid units" as before (10.6 = median shoulder width
# / eyelid width over the real sample): the eyelid is a few pixels wide and each estimator's
# face model places its corners differently (one clip through OpenPose and MediaPipe: eyelid
# 15.9 vs 17.5 px, shoulders 202.9 vs 203.0 px), so it changed the scale with the estimator.
LEFT_EYELID = (66, 69)
RIGHT_EYELID = (60, 63)
EYE_DISTANCE = (L_EYE, R_EYE)
HEAD_WIDTH = (L_EAR, R_EAR)
SHOULDER_WIDTH = (L_SHOULDER, R_SHOULDER)
SHOULDER_EYELID_RATIO = 10.6
# When the shoulders are not seen: other lengths, each rescaled by its median ratio to the
# eyelid width over 140 real recorded signers (relative spread 4-6%).
UNIT_FALLBACKS: tuple[tuple[tuple[int, int], float], ...] = (
    (EYE_DISTANCE, 2.39),
    (HEAD_WIDTH, 4.38),
)


def _face_mirror_pairs() -> list[tuple[int, int]]:
    """Left/right pairs of the 68 iBUG face landmarks, as 1-based landmark numbers."""
    pairs = [(i, 18 - i) for i in range(1, 9)]                    # jaw 1..17, 9 is the chin
    pairs += [(18 + i, 27 - i) for i in range(5)]                 # brows 18..22 <-> 27..23
    pairs += [(32, 36), (33, 35)]                                 # nostrils; 28..31 and 34 central
    pairs += [(37, 46), (38, 45), (39, 44), (40, 43), (41, 48), (42, 47)]  # eyes
    pairs += [(49, 55), (50, 54), (51, 53), (56, 60), (57, 59)]   # outer lips; 52, 58 central
    pairs += [(61, 65), (62, 64), (66, 68)]                       # inner lips; 63, 67 central
    return pairs


def mirror_permutation() -> np.ndarray:
    """Row permutation ``p`` such that ``mirrored[:, r] = pose[:, p[r]]`` swaps left and right.

    Covers all 134 rows: body pairs, feet, the 68 face landmarks' symmetric map, and the
    two hands swapped. It is an involution (``p[p] == arange``).
    """
    perm = np.arange(NUM_ROWS)

    def swap(a: int, b: int) -> None:
        perm[a], perm[b] = b, a

    for a in (L_EYE, L_EAR, L_SHOULDER, L_ELBOW, L_WRIST, L_HIP, 14, 16):
        swap(a, a + 1)  # COCO lists each left keypoint just before its right twin
    for i in range(3):
        swap(18 + i, 21 + i)  # left foot <-> right foot
    for a, b in _face_mirror_pairs():
        swap(FACE.start + a - 1, FACE.start + b - 1)
    for i in range(21):
        swap(LEFT_HAND.start + i, RIGHT_HAND.start + i)
    return perm


MIRROR_PERM = mirror_permutation()


def _hand_bones(wrist: int) -> list[tuple[int, int]]:
    bones = []
    for finger in range(5):
        base = wrist + 1 + 4 * finger
        bones.append((wrist, base))
        bones += [(base + j, base + j + 1) for j in range(3)]
    return bones


def _chain(rows: range | list[int], closed: bool = False) -> list[tuple[int, int]]:
    rows = list(rows)
    bones = list(zip(rows[:-1], rows[1:]))
    return bones + [(rows[-1], rows[0])] if closed else bones


def _face_bones() -> list[tuple[int, int]]:
    f = FACE.start - 1  # landmark n (1-based) is row f + n
    parts = [
        _chain(range(f + 1, f + 18)),                      # jaw
        _chain(range(f + 18, f + 23)), _chain(range(f + 23, f + 28)),  # brows
        _chain(range(f + 28, f + 32)), _chain(range(f + 32, f + 37)),  # nose
        _chain(range(f + 37, f + 43), True), _chain(range(f + 43, f + 49), True),  # eyes
        _chain(range(f + 49, f + 61), True), _chain(range(f + 61, f + 69), True),  # lips
    ]
    return [b for p in parts for b in p]


BODY_BONES: tuple[tuple[int, int], ...] = (
    (L_SHOULDER, R_SHOULDER), (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST),
    (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST), (L_SHOULDER, L_HIP), (R_SHOULDER, R_HIP),
    (L_HIP, R_HIP), (L_HIP, 14), (14, 16), (R_HIP, 15), (15, 17),
    (NOSE, L_EYE), (NOSE, R_EYE), (L_EYE, L_EAR), (R_EYE, R_EAR),
)
LEFT_HAND_BONES = tuple(_hand_bones(LEFT_HAND.start))
RIGHT_HAND_BONES = tuple(_hand_bones(RIGHT_HAND.start))
FACE_BONES = tuple(_face_bones())

# Points that count in losses and metrics: a stream centred on one of its own points has
# that point at 0 by construction, so scoring it would only flatter the model.
SCORED_POINTS = np.ones(NUM_STREAM_POINTS, dtype=bool)
for _s in STREAMS:
    if len(_s.centre) == 1:
        SCORED_POINTS[STREAM_SLICES[_s.name].start + _s.rows.index(_s.centre[0])] = False
