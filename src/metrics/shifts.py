"""Controlled shifts: a split's raw pose changed the way other cameras and pose estimators
change it (scale, rotation, translation, close-up framing, parts missing, jitter, legs).

Each shift is a deterministic function of (raw ``[T, 134, 3]`` array, sequence name): its
random draws are seeded by the shift's and the sequence's names, so a report is
reproducible and every checkpoint sees the same shifted data. Shifts apply before any
preprocessing (through ``PoseDataset(raw_transform=...)``), so they test whatever frames
of reference, units and cleaning the checkpoint's pipeline uses.

Errors are reported in the *unshifted* pixel frame: a shift that scales the pose by s
also scales every pixel error by s (the unit of normalisation scales with it), so its
figures are divided by ``px_scale``. A shift whose input carries noise beyond its truth
(jitter) is scored against the noise-free truth (``truth``), as a real estimator's
jitter is not part of the signing. Add a shift with :func:`register`.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from src.data import keypoints as kp
from src.data.pose import video_size

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

LEGS = np.r_[kp.L_HIP:kp.FEET.stop]          # hips, knees, ankles, feet (rows 12-23)
BELOW_HIPS = np.r_[kp.L_HIP + 2:kp.FEET.stop]  # knees, ankles, feet


@dataclass(frozen=True)
class Shift:
    """A named change of the raw pose: ``geometry`` changes input and truth alike, ``noise``
    (optional) only the input. ``px_scale``: how much the shift scales pixel distances."""

    name: str
    description: str
    geometry: Transform
    px_scale: float = 1.0
    noise: Transform | None = None
    seed: int = 0

    def _rng(self, name: str, stage: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(self.name.encode()), zlib.crc32(name.encode()), stage])

    def truth(self, raw: np.ndarray, name: str) -> np.ndarray:
        """The shifted pose without input noise (a fresh array)."""
        return self.geometry(raw.copy(), self._rng(name, 0))

    def input(self, raw: np.ndarray, name: str) -> np.ndarray:
        """What the tokenizer gets: the truth plus the shift's noise, if any."""
        out = self.truth(raw, name)
        return out if self.noise is None else self.noise(out, self._rng(name, 1))


SHIFTS: dict[str, Shift] = {}


def register(shift: Shift) -> Shift:
    """Add a shift to the registry (``eval-rvq --shifts all`` runs them in this order)."""
    if shift.name in SHIFTS:
        raise ValueError(f"shift {shift.name!r} is registered twice")
    SHIFTS[shift.name] = shift
    return shift


def select(spec: str) -> list[Shift]:
    """``all`` or comma-separated names -> shifts; unknown names fail listing the known ones."""
    if spec.strip() == "all":
        return list(SHIFTS.values())
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHIFTS]
    if unknown or not names:
        raise ValueError(f"unknown shift {unknown[0] if unknown else spec!r}; known: all, {', '.join(SHIFTS)}")
    return [SHIFTS[n] for n in names]

# ---------------------------------------------------------------------------- building blocks


def observed(raw: np.ndarray) -> np.ndarray:
    """(T, 134) bool: a finite point with a positive score (row 0 never)."""
    with np.errstate(invalid="ignore"):
        out = (raw[..., 2] > 0) & np.isfinite(raw).all(-1)
    out[:, kp.SIZE_ROW] = False
    return out


def frame_centre(raw: np.ndarray) -> np.ndarray:
    w, h = video_size(raw)
    return np.array([w / 2, h / 2])


def shoulder_midpoint(raw: np.ndarray) -> np.ndarray:
    """Median shoulder midpoint over the frames that see both shoulders (else the frame centre)."""
    seen = observed(raw)
    both = seen[:, kp.L_SHOULDER] & seen[:, kp.R_SHOULDER]
    if not both.any():
        return frame_centre(raw)
    return np.median(0.5 * (raw[both, kp.L_SHOULDER, :2] + raw[both, kp.R_SHOULDER, :2]), axis=0)


def affine(raw: np.ndarray, matrix: np.ndarray, centre: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """Every keypoint's (x, y) -> matrix @ (p - centre) + centre + offset, scores unchanged."""
    out = raw.copy()
    xy = out[:, 1:, :2] - centre
    out[:, 1:, :2] = xy @ np.asarray(matrix, dtype=np.float64).T + centre + (0 if offset is None else offset)
    return out


def rotation(degrees: float) -> np.ndarray:
    """2x2 rotation; positive is clockwise on screen (image y points down)."""
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def hide(raw: np.ndarray, rows, frames: np.ndarray | None = None) -> np.ndarray:
    """Score 0 for ``rows`` in the ``frames`` (T,) bool (all when None); coordinates are kept,
    as estimators often leave them."""
    out = raw.copy()
    in_rows = np.zeros(raw.shape[1], dtype=bool)
    in_rows[np.asarray(list(rows))] = True
    in_frames = np.ones(raw.shape[0], dtype=bool) if frames is None else frames
    out[..., 2] = np.where(in_frames[:, None] & in_rows[None], 0.0, out[..., 2])
    return out


def off_frame_hidden(raw: np.ndarray) -> np.ndarray:
    """Score 0 for points outside the video frame."""
    w, h = video_size(raw)
    x, y = raw[:, 1:, 0], raw[:, 1:, 1]
    with np.errstate(invalid="ignore"):
        outside = ~((x >= 0) & (x < w) & (y >= 0) & (y < h))
    out = raw.copy()
    out[:, 1:, 2] = np.where(outside, 0.0, out[:, 1:, 2])
    return out


def stretches(rng: np.random.Generator, num_frames: int, length: int, cover: float) -> np.ndarray:
    """(T,) bool: random stretches of ``length`` frames covering about ``cover`` of the sequence."""
    out = np.zeros(num_frames, dtype=bool)
    count = max(1, int(round(cover * num_frames / length)))
    for start in rng.integers(0, max(1, num_frames - length + 1), count):
        out[start:start + length] = True
    return out


def jitter(raw: np.ndarray, rng: np.random.Generator, sigma_px: float) -> np.ndarray:
    """Gaussian noise of ``sigma_px`` on every observed point's x and y."""
    out = raw.copy()
    seen = observed(raw)
    out[..., :2] += np.where(seen[..., None], rng.normal(0.0, sigma_px, out[..., :2].shape), 0.0)
    return out


def with_legs(raw: np.ndarray, score: float = 0.6, confident: float = 0.3) -> np.ndarray:
    """Legs as an estimator guesses them for a standing signer, hung below the shoulders (in
    shoulder widths): hips where not seen with at least ``confident``, knees, ankles, feet;
    the guessed points get ``score``."""
    out = raw.copy()
    ls, rs = raw[:, kp.L_SHOULDER, :2], raw[:, kp.R_SHOULDER, :2]
    mid, width = 0.5 * (ls + rs), np.linalg.norm(ls - rs, axis=-1, keepdims=True)
    down = np.array([0.0, 1.0]) * width                                      # (T, 2)
    # per side: shoulder, hip, knee, ankle, first foot row (big toe, small toe, heel)
    for shoulder, hip, knee, ankle, foot in ((ls, kp.L_HIP, 14, 16, 18), (rs, kp.R_HIP, 15, 17, 21)):
        with np.errstate(invalid="ignore"):
            seen = (raw[:, hip, 2] >= confident) & np.isfinite(raw[:, hip]).all(-1)
        hip_xy = np.where(seen[:, None], raw[:, hip, :2], mid + 0.6 * (shoulder - mid) + 1.6 * down)
        ankle_xy = hip_xy + 2.6 * down
        outward = shoulder - mid                                               # half a shoulder width
        guesses = {hip: hip_xy, knee: hip_xy + 1.3 * down, ankle: ankle_xy, foot: ankle_xy + 0.25 * down,
                   foot + 1: ankle_xy + 0.3 * outward + 0.2 * down, foot + 2: ankle_xy + 0.08 * down}
        for row, xy in guesses.items():
            out[:, row, :2] = xy
            out[:, row, 2] = np.where(seen, raw[:, hip, 2], score) if row == hip else score
    return out


def _part_gaps(rows_of: Callable[[np.random.Generator], range], seconds: float = 1.0, cover: float = 1 / 3,
               fps: float = 30.0) -> Transform:
    def apply(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = rows_of(rng)
        return hide(raw, rows, stretches(rng, raw.shape[0], int(round(seconds * fps)), cover))
    return apply


def _closeup(zoom: float) -> Transform:
    def apply(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        zoomed = affine(raw, zoom * np.eye(2), shoulder_midpoint(raw))
        return hide(off_frame_hidden(zoomed), BELOW_HIPS)
    return apply

# ---------------------------------------------------------------------------- the registry


for _s in (0.6, 1.5):
    register(Shift(f"scale_{_s:g}", f"scale x{_s:g} about the frame centre",
                   lambda raw, rng, s=_s: affine(raw, s * np.eye(2), frame_centre(raw)), px_scale=_s))
for _d in (15, -15):
    register(Shift(f"rotate_{_d:+d}", f"in-plane rotation {_d:+d} deg about the median shoulder midpoint",
                   lambda raw, rng, d=_d: affine(raw, rotation(d), shoulder_midpoint(raw))))
for _t in (60, -60):
    register(Shift(f"translate_{_t:+d}", f"translation by {_t:+d} px in x and y (points may leave the frame)",
                   lambda raw, rng, t=_t: affine(raw, np.eye(2), np.zeros(2), np.array([t, t], float))))
register(Shift("closeup_1.6", "close-up: zoom x1.6 about the median shoulder midpoint; points leaving "
               "the frame and the legs below the hips get score 0", _closeup(1.6), px_scale=1.6))
register(Shift("face_gaps", "the 68 face points at score 0 over random 1 s stretches (~1/3 of the frames)",
               _part_gaps(lambda rng: kp.FACE)))
register(Shift("hand_gaps", "one hand (drawn per sequence) at score 0 over random 1 s stretches (~1/3 of the frames)",
               _part_gaps(lambda rng: kp.LEFT_HAND if rng.random() < 0.5 else kp.RIGHT_HAND)))
register(Shift("jitter_2px", "gaussian noise sigma 2 px on every observed point (scored against the "
               "noise-free truth)", lambda raw, rng: raw, noise=lambda raw, rng: jitter(raw, rng, 2.0)))
register(Shift("legs_absent", "hips, knees, ankles and feet at score 0", lambda raw, rng: hide(raw, LEGS)))
register(Shift("legs_present", "hips (where unseen), knees, ankles and feet guessed below the shoulders, "
               "score 0.6", lambda raw, rng: with_legs(raw)))


def scaled(result: dict, px_scale: float) -> dict:
    """A result's pixel figures divided by the shift's scale (to the unshifted pixel frame)."""
    out = dict(result)
    for key in ("mpjpe_px", "mpjpe_chunkwise_px", "oracle_chunk_mean_px", "oracle_chunk_linear_px"):
        if key in out:
            out[key] = {s: v / px_scale for s, v in out[key].items()}
    return out


def within(shifted_px: dict[str, float], unshifted_px: dict[str, float], limit: float
           ) -> tuple[dict[str, float], bool]:
    """Each stream's error under a shift over its unshifted error, and whether all are at most ``limit``."""
    ratio = {s: shifted_px[s] / max(unshifted_px[s], 1e-9) for s in kp.STREAM_NAMES}
    return ratio, all(r <= limit for r in ratio.values())


def shift_report(model, cfg, split: str, device, base: dict, shifts: list[Shift], batch_size: int = 16,
                 limit: float = 1.3, progress: bool = True) -> dict:
    """Evaluate every shift on the sequences of the unshifted report ``base`` (an
    ``evaluation_report``) and compare each stream with its unshifted error."""
    from src.data.dataset import PoseDataset, make_loader
    from src.data.source import DataError
    from src.metrics.evaluate import evaluate

    data = dataclasses.replace(cfg.data, max_frames=0)
    names = PoseDataset(data, split).names
    reference = base["result"]["mpjpe_px"]
    rows = {}
    for shift in shifts:
        try:
            dataset = PoseDataset(data, split, names=names, raw_transform=shift.input,
                                  truth_transform=shift.truth if shift.noise is not None else None)
        except DataError as e:
            rows[shift.name] = {"description": shift.description, "error": str(e), "pass": False}
            continue
        loader = make_loader(dataset, batch_size, train=False, num_workers=data.num_workers)
        ev, _ = evaluate(model, loader, cfg, device, full=True, progress=progress)
        result = scaled(ev.result(), shift.px_scale)
        ratio, passed = within(result["mpjpe_px"], reference, limit)
        rows[shift.name] = {
            "description": shift.description, "px_scale": shift.px_scale,
            "num_sequences": result["num_sequences"], "skipped": dict(dataset.report.reasons),
            "mpjpe_px": result["mpjpe_px"], "ratio": ratio,
            "oracle_chunk_mean_px": result["oracle_chunk_mean_px"],
            "oracle_chunk_linear_px": result["oracle_chunk_linear_px"],
            "tokens_per_chunk_rle": result["tokens"]["tokens_per_chunk_rle"],
            "pass": passed,
        }
    return {"limit": limit, "frame": "unshifted pixels (errors divided by px_scale)",
            "unshifted": {"mpjpe_px": reference, "oracle_chunk_mean_px": base["result"]["oracle_chunk_mean_px"],
                          "num_sequences": base["result"]["num_sequences"]},
            "shifts": rows, "pass": all(r["pass"] for r in rows.values())}


def shift_markdown(report: dict) -> str:
    """Markdown table: per shift and stream, MPJPE px (unshifted frame) and the ratio to unshifted."""
    head = "| shift | " + " | ".join(kp.STREAM_NAMES) + f" | all within {report['limit']:g}x |"
    lines = [head, "|" + "---|" * (len(kp.STREAM_NAMES) + 2)]
    unshifted = report["unshifted"]
    lines.append("| unshifted | " + " | ".join(f"{unshifted['mpjpe_px'][s]:.2f}" for s in kp.STREAM_NAMES) + " | |")
    for name, row in report["shifts"].items():
        if "error" in row:
            lines.append(f"| {name} | " + " | ".join("-" for _ in kp.STREAM_NAMES) + f" | no data: {row['error']} |")
            continue
        cells = [f"{row['mpjpe_px'][s]:.2f} ({row['ratio'][s]:.2f}x)" for s in kp.STREAM_NAMES]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if row['pass'] else 'NO'} |")
    lines += ["", f"MPJPE px in the {report['frame']}; in brackets the ratio to the unshifted error. "
              "Oracles under each shift are in the JSON.", ""]
    lines += [f"- `{name}`: {row['description']}" for name, row in report["shifts"].items()]
    return "\n".join(lines) + "\n"
