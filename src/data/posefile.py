"""``.pose`` files (the ``pose-format`` package) <-> the CSL-Daily layout ``[T, 134, 3]``.

Reading maps the estimator's points to the 133 COCO-WholeBody rows (docs/pose_import.md):

- **MediaPipe Holistic** (33 pose + 468/478 face mesh + 2 x 21 hands): body and feet by
  landmark name, the 68 face landmarks from fixed mesh vertices (:data:`FACE68_FROM_MESH`),
  hands in the same 21-point order;
- **OpenPose** BODY_25 + face70 + 2 x 21 hands: body and feet by name, the first 68 face points;
- **COCO-WholeBody 133** headers (BODY 23 + FACE 68 + LEFT_HAND 21 + RIGHT_HAND 21, also with
  the ``_133`` suffix, or one 133-point component): taken in order.

Points a format lacks (MediaPipe's small toes) and points the estimator did not find get
score 0 and position 0; "left" components are the signer's own left, as COCO's. Then a
square crop of the source frame is scaled to 512 x 512 and time is resampled to 30 fps
(:func:`to_layout`). ``pose-format`` is optional: only reading and writing ``.pose`` needs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.data import keypoints as kp
from src.data.source import DataError

OUT_SIZE = 512
OUT_FPS = 30.0

# COCO rows 1..23 by name: (MediaPipe pose landmark, OpenPose BODY_25 point); None = absent.
_BODY_NAMES: tuple[tuple[str | None, str | None], ...] = (
    ("NOSE", "Nose"), ("LEFT_EYE", "LEye"), ("RIGHT_EYE", "REye"), ("LEFT_EAR", "LEar"), ("RIGHT_EAR", "REar"),
    ("LEFT_SHOULDER", "LShoulder"), ("RIGHT_SHOULDER", "RShoulder"), ("LEFT_ELBOW", "LElbow"),
    ("RIGHT_ELBOW", "RElbow"), ("LEFT_WRIST", "LWrist"), ("RIGHT_WRIST", "RWrist"), ("LEFT_HIP", "LHip"),
    ("RIGHT_HIP", "RHip"), ("LEFT_KNEE", "LKnee"), ("RIGHT_KNEE", "RKnee"), ("LEFT_ANKLE", "LAnkle"),
    ("RIGHT_ANKLE", "RAnkle"),
    # feet: big toe, small toe, heel (left, then right); MediaPipe has no small toe
    ("LEFT_FOOT_INDEX", "LBigToe"), (None, "LSmallToe"), ("LEFT_HEEL", "LHeel"),
    ("RIGHT_FOOT_INDEX", "RBigToe"), (None, "RSmallToe"), ("RIGHT_HEEL", "RHeel"),
)

# The 68 iBUG face landmarks (1-based order, jaw first) as MediaPipe face-mesh vertex ids.
# Jaw points are face-oval vertices, a little inside where a 68-point annotator puts the jaw.
FACE68_FROM_MESH: tuple[int, ...] = (
    234, 93, 132, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 361, 323, 454,  # jaw 1-17
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,                                        # brows 18-27
    168, 197, 5, 4, 98, 97, 2, 326, 327,                                                  # nose 28-36
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,                            # eyes 37-48
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,                                  # outer lips 49-60
    78, 82, 13, 312, 308, 317, 14, 87,                                                    # inner lips 61-68
)

_HAND_ROWS = {"LEFT": kp.LEFT_HAND.start, "RIGHT": kp.RIGHT_HAND.start}


def require_pose_format():
    """The ``pose_format`` module, or a DataError telling how to install it."""
    try:
        import pose_format
    except ImportError:
        raise DataError("reading or writing .pose files needs the pose-format package: pip install pose-format") \
            from None
    return pose_format


@dataclass
class SourcePose:
    """A ``.pose`` file mapped to the 134 rows, still in source pixels and at source fps."""

    rows: np.ndarray            # (T, 134, 3) x, y, score; row 0 = (width, height, 0)
    fps: float
    size: tuple[float, float]   # source (width, height)
    estimator: str              # mediapipe | openpose | coco133


def _component_slices(header) -> dict[str, tuple[int, list[str]]]:
    """Component name -> (offset of its first point, its point names)."""
    out, start = {}, 0
    for c in header.components:
        out[c.name] = (start, list(c.points))
        start += len(c.points)
    return out


def _mapping(comps: dict[str, tuple[int, list[str]]], path: Path) -> tuple[str, np.ndarray]:
    """(estimator, src) with src[r] = the file's point index for layout row r, or -1."""
    src = np.full(kp.NUM_ROWS, -1, dtype=np.int64)
    if "POSE_LANDMARKS" in comps and "FACE_LANDMARKS" in comps:
        start, names = comps["POSE_LANDMARKS"]
        for row, (mp, _) in enumerate(_BODY_NAMES, start=1):
            if mp is not None and mp in names:
                src[row] = start + names.index(mp)
        start, names = comps["FACE_LANDMARKS"]
        if len(names) < 468:
            raise DataError(f"{path}: FACE_LANDMARKS has {len(names)} points, the face table needs the 468-point mesh")
        src[list(kp.FACE)] = start + np.array(FACE68_FROM_MESH)
        _hands(comps, src, "{}_HAND_LANDMARKS")
        return "mediapipe", src
    if "pose_keypoints_2d" in comps:
        start, names = comps["pose_keypoints_2d"]
        for row, (_, op) in enumerate(_BODY_NAMES, start=1):
            if op in names:
                src[row] = start + names.index(op)
        if "face_keypoints_2d" in comps:
            start, names = comps["face_keypoints_2d"]
            src[list(kp.FACE)] = start + np.arange(68)
        for side in ("left", "right"):
            if f"hand_{side}_keypoints_2d" in comps:
                start, _ = comps[f"hand_{side}_keypoints_2d"]
                src[_HAND_ROWS[side.upper()]:_HAND_ROWS[side.upper()] + 21] = start + np.arange(21)
        return "openpose", src
    for suffix in ("", "_133"):
        parts = [f"BODY{suffix}", f"FACE{suffix}", f"LEFT_HAND{suffix}", f"RIGHT_HAND{suffix}"]
        if all(p in comps for p in parts) and [len(comps[p][1]) for p in parts] == [23, 68, 21, 21]:
            src[1:] = np.concatenate([comps[p][0] + np.arange(len(comps[p][1])) for p in parts])
            return "coco133", src
    single = [name for name, (_, names) in comps.items() if len(names) == 133]
    if len(comps) == 1 and single:
        src[1:] = comps[single[0]][0] + np.arange(133)
        return "coco133", src
    raise DataError(f"{path}: unknown .pose components {list(comps)} (supported: MediaPipe Holistic, "
                    "OpenPose BODY_25 + face70 + hands, COCO-WholeBody 133)")


def _hands(comps: dict, src: np.ndarray, pattern: str) -> None:
    for side, row in _HAND_ROWS.items():
        if pattern.format(side) in comps:
            start, _ = comps[pattern.format(side)]
            src[row:row + 21] = start + np.arange(21)


def read_pose(path: str | Path) -> SourcePose:
    """Read a ``.pose`` file (first person) and map it to the 134 rows, in source pixels."""
    path = Path(path)
    pose_format = require_pose_format()
    try:
        pose = pose_format.Pose.read(path.read_bytes())
    except FileNotFoundError:
        raise
    except Exception as e:  # the reader raises bare struct/value errors on a broken file
        raise DataError(f"{path}: not a readable .pose file ({type(e).__name__}: {e})") from None
    estimator, src = _mapping(_component_slices(pose.header), path)
    data = np.ma.getdata(pose.body.data)[:, 0, :, :2].astype(np.float32)          # (T, N, 2)
    masked = np.ma.getmaskarray(pose.body.data)[:, 0, :, :2].any(-1)
    score = np.where(masked, 0.0, np.asarray(pose.body.confidence)[:, 0]).astype(np.float32)
    score[~np.isfinite(data).all(-1)] = 0.0
    rows = np.zeros((data.shape[0], kp.NUM_ROWS, 3), np.float32)
    have = src >= 0
    rows[:, have, :2] = data[:, src[have]]
    rows[:, have, 2] = score[:, src[have]]
    rows[rows[..., 2] <= 0] = 0.0
    dims = pose.header.dimensions
    size = (float(dims.width), float(dims.height))
    rows[:, kp.SIZE_ROW] = (*size, 0.0)
    return SourcePose(rows, float(pose.body.fps), size, estimator)


def _shoulders(rows: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Median shoulder midpoint (2,) and width over frames with both shoulders; None if never seen."""
    both = (rows[:, kp.L_SHOULDER, 2] > 0) & (rows[:, kp.R_SHOULDER, 2] > 0)
    if not both.any():
        return None
    left, right = rows[both, kp.L_SHOULDER, :2], rows[both, kp.R_SHOULDER, :2]
    return np.median((left + right) / 2, axis=0), float(np.median(np.linalg.norm(left - right, axis=-1)))


def crop_box(rows: np.ndarray, size: tuple[float, float]) -> tuple[float, float, float, str]:
    """The square crop (x0, y0, side, rule) in source pixels; see docs/pose_import.md.

    The largest square of the frame, centred on the median shoulder midpoint across and
    keeping the whole height of a landscape frame (a portrait frame keeps 0.35 shoulder
    widths above the top of the face). A small signer (shoulders < 0.25 side) gets side =
    shoulder width / 0.38, a very close one (> 0.45 side) side = shoulder width / 0.45.
    """
    w, h = size
    side, rule = min(w, h), "largest square of the source frame"
    found = _shoulders(rows)
    if found is None:
        return (w - side) / 2, (h - side) / 2, side, "centred square (no shoulders seen)"
    mid, width = found
    if width < 0.25 * side:
        side, rule = width / 0.38, "signer small in frame: side = shoulder width / 0.38"
    elif width > 0.45 * side:
        side, rule = width / 0.45, "signer close: side = shoulder width / 0.45"
    x0 = float(mid[0] - side / 2)
    if side <= w:
        x0 = float(np.clip(x0, 0, w - side))
    face = rows[:, list(kp.FACE)]
    seen = face[..., 2] > 0
    if side < h and seen.any():
        top = float(np.median([face[t, seen[t], 1].min() for t in np.nonzero(seen.any(1))[0]]))
        y0 = float(np.clip(top - 0.35 * width, 0, h - side))
    else:
        y0 = (h - side) / 2
    return x0, y0, side, rule


def resample_rows(rows: np.ndarray, fps: float, out_fps: float = OUT_FPS) -> np.ndarray:
    """Linear resampling to ``out_fps`` at times k / out_fps over the source duration.

    A point missing (score 0) in either source frame around an output time copies the
    nearest source frame instead of interpolating.
    """
    num_in = rows.shape[0]
    if fps == out_fps or num_in < 2:
        return rows
    num_out = int(np.floor((num_in - 1) * out_fps / fps + 1e-9)) + 1
    pos = np.arange(num_out) * fps / out_fps
    lo = np.minimum(np.floor(pos).astype(int), num_in - 1)
    hi = np.minimum(lo + 1, num_in - 1)
    w = (pos - lo).astype(np.float32)[:, None, None]
    mixed = (1 - w) * rows[lo] + w * rows[hi]
    nearest = rows[np.where(pos - lo < 0.5, lo, hi)]
    both = (rows[lo, :, 2] > 0) & (rows[hi, :, 2] > 0)
    return np.where(both[..., None], mixed, nearest).astype(np.float32)


def to_layout(src: SourcePose, out_size: int = OUT_SIZE, out_fps: float = OUT_FPS) -> tuple[np.ndarray, dict]:
    """Source rows -> the layout's ``[T', 134, 3]`` (512 x 512 crop, 30 fps) and what was done.

    Points more than 2% of the frame size (its longer side) outside the source frame were never seen (MediaPipe
    extrapolates legs below the picture): they get score 0.
    """
    rows = src.rows.copy()
    w, h = src.size
    xy = rows[:, 1:, :2]
    margin = np.float32(0.02 * max(w, h))
    outside = ((xy < -margin) | (xy > np.array([w, h], np.float32) + margin)).any(-1) & (rows[:, 1:, 2] > 0)
    rows[:, 1:][outside] = 0.0
    x0, y0, side, rule = crop_box(rows, src.size)
    scale = out_size / side
    seen = rows[:, 1:, 2] > 0
    rows[:, 1:, :2] = np.where(seen[..., None], (xy - np.array([x0, y0], np.float32)) * scale, 0.0)
    rows = resample_rows(rows, src.fps, out_fps)
    rows[:, kp.SIZE_ROW] = (out_size, out_size, 0.0)
    info = {"estimator": src.estimator, "source_fps": src.fps, "source_frames": int(src.rows.shape[0]),
            "source_resolution": list(src.size), "crop_in_source_pixels": {"x0": round(x0, 2), "y0": round(y0, 2),
            "side": round(side, 2), "rule": rule}, "scale_to_512": round(scale, 5),
            "keypoints_zeroed_outside_source_frame": int(outside.sum())}
    return rows.astype(np.float32), info


def load_pose_file(path: str | Path) -> np.ndarray:
    """A ``.pose`` file as the dataset stores poses: ``[T, 134, 3]``, 512 x 512, 30 fps."""
    return to_layout(read_pose(path))[0]


def load_frames(path: str | Path) -> np.ndarray:
    """A pose sequence from ``.npy`` (the layout) or ``.pose`` (converted by :func:`load_pose_file`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input not found: {path} (fix: check the path; .npy and .pose files are read)")
    if path.suffix == ".pose":
        return load_pose_file(path)
    if path.suffix == ".npy":
        raw = np.load(path).astype(np.float32, copy=False)
        if raw.ndim != 3 or raw.shape[1:] != (kp.NUM_ROWS, 3):
            raise DataError(f"{path}: expected a [T, {kp.NUM_ROWS}, 3] pose array, got {list(raw.shape)}")
        return raw
    raise DataError(f"{path}: unknown input type {path.suffix!r} (expected .npy or .pose)")


def write_pose(path: str | Path, rows: np.ndarray, fps: float = OUT_FPS) -> Path:
    """Write ``[T, 134, 3]`` as a ``.pose`` file with pose-format's COCO-WholeBody 133 header
    (so its viewers can draw it); the frame size comes from the size row. Atomic."""
    require_pose_format()
    from pose_format import Pose
    from pose_format.numpy import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderDimensions
    from pose_format.utils.cocowholebody133_header import cocowholebody_components

    from src.files import atomic_path

    rows = np.asarray(rows, np.float32)
    w, h = (int(round(v)) for v in rows[0, kp.SIZE_ROW, :2])
    points = rows[:, 1:]                                              # (T, 133, 3)
    missing = ~(points[..., 2] > 0)
    data = np.ma.masked_array(points[:, None, :, :2], mask=np.repeat(missing[:, None, :, None], 2, axis=-1))
    body = NumPyPoseBody(fps=float(fps), data=data, confidence=np.where(missing, 0, points[..., 2])[:, None])
    header = PoseHeader(version=0.1, dimensions=PoseHeaderDimensions(width=w, height=h, depth=0),
                        components=cocowholebody_components())
    out = Path(path)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        Pose(header, body).write(f)
    return out


def pose_inputs(paths: list[str | Path]) -> list[Path]:
    """The ``.pose`` files named, and those inside named folders (sorted); FileNotFoundError if a path is missing."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.pose"))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"no such file or folder: {p} (fix: check the path)")
    return files


def sequence_name(path: Path) -> str:
    """``a.b.pose`` -> ``a_b``: a name without dots (the layout's ``<name>.npy``)."""
    return path.name[:-len(".pose")].replace(".", "_") if path.name.endswith(".pose") else path.stem


def read_texts(path: str | Path) -> dict[str, dict]:
    """Text, gloss and signer per sequence from a CSV (header ``name,text,gloss,signer``; ``name`` is
    the sequence name or the ``.pose`` file name) or a JSON object ``{name: {text, gloss, signer}}``."""
    import csv

    from src.data.source import read_json

    path = Path(path)
    if not path.is_file():
        raise DataError(f"texts file not found: {path} (fix: check the path)")
    if path.suffix.lower() == ".json":
        table = read_json(path, "texts file")
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise DataError(f'{path}: expected {{"<name>": {{"text": ..., "gloss": ..., "signer": ...}}}}')
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if rows and "name" not in rows[0]:
            raise DataError(f"{path}: the CSV needs a header with a 'name' column (name,text,gloss,signer)")
        table = {row["name"]: row for row in rows}
    return {sequence_name(Path(k)) if k.endswith(".pose") else k: {f: v.get(f) for f in ("text", "gloss", "signer")
                                                                    if v.get(f) not in (None, "")}
            for k, v in table.items()}


def assign_splits(names: list[str], signers: dict[str, str], val_frac: float, test_frac: float,
                  seed: int = 0) -> dict[str, str]:
    """Seeded val/test/train per name, by signer where known (a signer's sequences stay together;
    a name without one is a group of its own); train keeps at least one group."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(str(signers.get(name, f"name:{name}")), []).append(name)
    order = [groups[k] for k in np.random.default_rng(seed).permutation(sorted(groups))]
    n_val = min(round(val_frac * len(order)), max(len(order) - 1, 0))
    n_test = min(round(test_frac * len(order)), max(len(order) - 1 - n_val, 0))
    split_of = {}
    for k, group in enumerate(order):
        split = "val" if k < n_val else "test" if k < n_val + n_test else "train"
        split_of.update({name: split for name in group})
    return split_of


def import_pose_files(files: list[Path], root: str | Path, split: str = "train", texts: dict[str, dict] | None = None,
                      val_frac: float = 0.0, test_frac: float = 0.0, seed: int = 0
                      ) -> tuple[list[str], list[tuple[str, str]], dict[str, str]]:
    """Convert ``.pose`` files into a CSL-Daily-layout root (npy, annotations.json, split_files.json,
    provenance.json), adding to what the root already lists; returns the names written, the
    (file, reason) of the files skipped and the split of each name written. ``texts`` gives text,
    gloss and signer per name; ``val_frac``/``test_frac`` split the imported names (by signer,
    seeded), else all go to ``split``. Nothing is written when no file converts."""
    import json

    from src.data.source import read_json
    from src.files import atomic_path

    root, texts = Path(root), texts or {}
    converted, skipped = [], []
    for f in files:
        try:
            converted.append((f, *to_layout(read_pose(f))))
        except DataError as e:
            skipped.append((str(f), str(e)))
    if not converted:
        return [], skipped, {}
    (root / "frames_512x512").mkdir(parents=True, exist_ok=True)
    annotations = read_json(root / "annotations.json", "annotation file") if (root / "annotations.json").is_file() else {}
    splits = read_json(root / "split_files.json", "split file") if (root / "split_files.json").is_file() else {}
    provenance = read_json(root / "provenance.json", "provenance") if (root / "provenance.json").is_file() else {}
    for s in ("train", "val", "test"):
        splits.setdefault(s, [])
    names = [sequence_name(f) for f, _, _ in converted]
    signers = {n: texts[n]["signer"] for n in names if "signer" in texts.get(n, {})}
    split_of = assign_splits(names, signers, val_frac, test_frac, seed) if val_frac or test_frac \
        else dict.fromkeys(names, split)
    for (f, rows, info), name in zip(converted, names):
        with atomic_path(root / "frames_512x512" / f"{name}.npy") as tmp:
            np.save(tmp, rows)
        given = texts.get(name, {})
        annotations[name] = {"text": given.get("text", ""), "gloss": given.get("gloss", ""),
                             "num_frames": int(rows.shape[0]), "signer": given.get("signer", 0)}
        for listed in splits.values():
            if name in listed:
                listed.remove(name)
        splits.setdefault(split_of[name], []).append(name)
        provenance[name] = {"source_file": f.name, **info}
    for file, data in (("annotations.json", annotations), ("split_files.json", splits),
                       ("provenance.json", provenance)):
        with atomic_path(root / file) as tmp:
            tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    return names, skipped, split_of
