"""Validation and statistics of a CSL-Daily-layout root (what ``run.py data-check`` reports).

One pass reads each pose file once and keeps small per-file facts (length, skip reason,
score and size-row problems, confident keypoints per part); split counts, frame statistics
and the pack comparison are derived from those facts, so no file is read twice.
The report is a plain JSON-ready dict; :func:`format_report` renders it for a terminal.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.config import DataConfig
from src.data import keypoints as kp
from src.data.source import (NPY_ERRORS, PACK_ARRAY, PACK_DIR, PACK_INDEX, DataError, content_checksum, plain_name,
                             index_problem, pack_problem, read_json, read_npy, usability)
from src.tools.synth import MARKER, synthetic_marker

PARTS: dict[str, range] = {"body": kp.BODY, "face": kp.FACE, "left_hand": kp.LEFT_HAND,
                           "right_hand": kp.RIGHT_HAND, "feet": kp.FEET}
SCORE_MAX = 1.1      # some detectors overshoot 1 a little; more than this is not a confidence
NUM_EXAMPLES = 5     # example names kept per problem

# What to do about each reason a sequence is skipped (the report's fix lines).
FIXES = {
    "not in annotations": "add the name to {annotations}, or drop it from the split file",
    "no pose file": "put the pose array at {pose_dir}/<name>.npy (or drop the name from the split file)",
    "bad shape": "re-export the file as float32 [T, 134, 3]: row 0 = (width, height, 0), rows 1-133 = "
                 "COCO-WholeBody (x, y, score)",
    "unreadable": "re-export the file with numpy.save (float32 [T, 134, 3])",
    "too short": "sequences need at least data.min_frames={min_frames} frames",
    "too little usable signal": "fewer than data.min_valid_frac={min_valid_frac} of the frames have both "
                                "shoulders scoring >= {conf_thresh}; check the scores or lower --conf-thresh",
    "coordinates out of range": "confident keypoints lie more than 100 frame sizes away; write pixel coordinates "
                                "and give far-off points a score of 0",
    "no unit length": "no eyelid, eye, ear or shoulder pair is seen apart in any frame (the scale is unknown); "
                      "check the keypoint order and scores",
}


def _examples(names) -> list[str]:
    return sorted(names)[:NUM_EXAMPLES]


@dataclass
class _Tally:
    """Facts gathered over the files of one root."""

    lengths: dict[str, int] = field(default_factory=dict)    # readable [T, 134, 3] files
    checksums: dict[str, int] = field(default_factory=dict)  # ... their content checksums (pack check)
    reasons: dict[str, str] = field(default_factory=dict)    # unusable file -> skip reason
    details: dict[str, str] = field(default_factory=dict)    # bad shape / unreadable -> what was found
    dtypes: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)          # "512x512" -> files
    bad_size_row: dict[str, str] = field(default_factory=dict)
    normalised: list[str] = field(default_factory=list)      # coordinates that look like [0, 1]
    score_min: float = np.inf
    score_max: float = -np.inf
    scores_nonfinite: int = 0
    scores_out_of_range: int = 0
    out_of_range_files: list[str] = field(default_factory=list)
    nan_frames: int = 0
    nan_files: list[str] = field(default_factory=list)
    empty_frames: int = 0                                    # frames with no confident keypoint
    points: int = 0                                          # confident keypoints
    points_outside: int = 0                                  # ... more than 10% outside the frame
    confident: Counter = field(default_factory=Counter)      # part -> confident (frame, point) pairs
    frames: int = 0

    def add(self, name: str, raw: np.ndarray, cfg: DataConfig) -> None:
        """Record one readable array."""
        self.dtypes[str(raw.dtype)] += 1
        if raw.ndim != 3 or raw.shape[1:] != (kp.NUM_ROWS, 3):
            self.reasons[name], self.details[name] = "bad shape", f"shape {list(raw.shape)}"
            return
        raw = raw.astype(np.float32, copy=False)
        self.lengths[name] = raw.shape[0]
        self.checksums[name] = content_checksum(raw)
        reason = usability(raw, cfg.conf_thresh, cfg.min_frames, cfg.min_valid_frac)
        if reason:
            self.reasons[name] = reason
        if raw.shape[0] == 0:
            self.reasons[name] = "too short"
            return
        self._size_row(name, raw[:, kp.SIZE_ROW])
        self._scores(name, raw[:, 1:, 2])
        self._points(name, raw, cfg.conf_thresh)

    def _size_row(self, name: str, row: np.ndarray) -> None:
        w, h = row[0, 0], row[0, 1]
        if not np.isfinite(row[:, :2]).all() or not (w > 0 and h > 0):
            self.bad_size_row[name] = f"(W, H) = ({w:g}, {h:g}), expected > 0"
        elif not (row[:, :2] == row[0, :2]).all():
            self.bad_size_row[name] = "(W, H) changes from frame to frame"
        else:
            self.sizes[f"{w:g}x{h:g}"] += 1

    def _scores(self, name: str, scores: np.ndarray) -> None:
        finite = np.isfinite(scores)
        self.scores_nonfinite += int((~finite).sum())
        if finite.any():
            self.score_min = min(self.score_min, float(scores[finite].min()))
            self.score_max = max(self.score_max, float(scores[finite].max()))
        bad = int(((scores[finite] < 0) | (scores[finite] > SCORE_MAX)).sum())
        if bad:
            self.scores_out_of_range += bad
            self.out_of_range_files.append(name)

    def _points(self, name: str, raw: np.ndarray, conf_thresh: float) -> None:
        nan = ~np.isfinite(raw[:, 1:]).all(axis=(1, 2))       # (T,)
        self.nan_frames += int(nan.sum())
        if nan.any():
            self.nan_files.append(name)
        with np.errstate(invalid="ignore"):
            seen = raw[..., 2] >= conf_thresh                  # (T, 134), NaN -> False
        seen[:, kp.SIZE_ROW] = False
        self.empty_frames += int((~seen.any(axis=1)).sum())
        self.frames += raw.shape[0]
        for part, rows in PARTS.items():
            self.confident[part] += int(seen[:, rows.start:rows.stop].sum())
        xy = raw[..., :2][seen]                                # (N, 2) confident points
        if len(xy):
            size = np.array([raw[0, 0, 0], raw[0, 0, 1]]) if name not in self.bad_size_row else 512.0
            self.points += len(xy)
            self.points_outside += int(((xy < -0.1 * size) | (xy > 1.1 * size)).any(axis=1).sum())
            if np.abs(xy).max() <= 1.5:
                self.normalised.append(name)


def _layout(root: Path, cfg: DataConfig, errors: list[str]) -> tuple[list[str], dict, dict]:
    """Pose file names, annotations and splits; problems go to ``errors`` (what, where, fix)."""
    pose_dir, names = root / cfg.pose_dir, []
    if not pose_dir.is_dir():
        errors.append(f"pose folder not found: {pose_dir} (fix: put the pose arrays at "
                      f"{root}/{cfg.pose_dir}/<name>.npy, or pass --pose-dir)")
    else:
        names = sorted(p.stem for p in pose_dir.glob("*.npy"))
        if not names:
            errors.append(f"no .npy files in {pose_dir} (fix: one float32 [T, 134, 3] array per video)")
    annotations = _mapping(root / cfg.annotation_file, "annotation file", errors)
    splits = _mapping(root / cfg.split_file, "split file", errors)
    bad = [s for s, v in splits.items() if not isinstance(v, list)]
    if bad:
        errors.append(f"{root / cfg.split_file}: split '{bad[0]}' is not a list of names "
                      '(fix: {"train": ["<name>", ...], "val": [...], "test": [...]})')
        splits = {s: v for s, v in splits.items() if isinstance(v, list)}
    for split, listed in splits.items():
        outside = next((n for n in listed if not isinstance(n, str) or not plain_name(n)), None)
        if outside is not None:
            errors.append(f"{root / cfg.split_file}: split '{split}' names {outside!r}, which is not a plain "
                          "file name inside the root (fix: list names as <name>, without folders)")
            splits[split] = [n for n in listed if isinstance(n, str) and plain_name(n)]
    if splits and "train" not in splits:
        errors.append(f"{root / cfg.split_file}: no 'train' split (has {', '.join(splits)}; "
                      "fix: add a \"train\" list)")
    return names, annotations, splits


def _mapping(path: Path, what: str, errors: list[str]) -> dict:
    try:
        data = read_json(path, what)
    except DataError as e:
        errors.append(str(e))
        return {}
    if not isinstance(data, dict):
        errors.append(f"{path}: expected a JSON object at the top, got {type(data).__name__} "
                      "(fix: see the CSL-Daily layout)")
        return {}
    return data


def _order(names: list[str], splits: dict, max_files: int) -> list[str]:
    """Files to read: all, or the first ``max_files`` in split order (train first)."""
    if max_files <= 0:
        return names
    present, ordered = set(names), {}
    for split in sorted(splits, key=lambda s: s != "train"):
        ordered.update((n, None) for n in splits[split] if n in present)
    ordered.update((n, None) for n in names)
    return list(ordered)[:max_files]


def _split_rows(splits: dict, annotations: dict, names: list[str], tally: _Tally) -> dict:
    """Per split: listed / kept / skipped by reason (with examples) / not checked."""
    present, out = set(names), {}
    for split, listed in splits.items():
        kept, skipped, unchecked = [], {}, 0
        for name in listed:
            if name not in annotations:
                reason = "not in annotations"
            elif name not in present:
                reason = "no pose file"
            elif name not in tally.lengths and name not in tally.reasons:
                unchecked += 1
                continue
            else:
                reason = tally.reasons.get(name)
            if reason:
                skipped.setdefault(reason, []).append(name)
            else:
                kept.append(name)
        out[split] = {
            "listed": len(listed), "kept": len(kept), "unchecked": unchecked,
            "kept_frames": sum(tally.lengths[n] for n in kept),
            "skipped": {r: {"count": len(v), "examples": v[:NUM_EXAMPLES]} for r, v in skipped.items()},
        }
    return out


def _frame_stats(lengths: list[int], fps: float) -> dict:
    if not lengths:
        return {"sequences": 0}
    a = np.array(lengths)
    return {"sequences": len(a), "min": int(a.min()), "median": float(np.median(a)),
            "mean": float(a.mean()), "max": int(a.max()), "total": int(a.sum()),
            "seconds": float(a.sum() / fps), "fps": fps}


def _pack(root: Path, cfg: DataConfig, tally: _Tally, partial: bool) -> dict:
    """Whether a pack exists, whether the loader will use it, and whether it agrees with the files."""
    pack_dir = Path(cfg.pack_dir) if cfg.pack_dir else root / PACK_DIR
    out = {"path": str(pack_dir), "exists": (pack_dir / PACK_INDEX).is_file(), "problems": []}
    if not out["exists"]:
        return out
    try:
        meta = read_json(pack_dir / PACK_INDEX, "pack index")
        problem = pack_problem(pack_dir, root / cfg.pose_dir, meta)
    except DataError as e:
        meta, problem = None, f"unreadable index ({e})"
    entries = meta["items"] if meta is not None and index_problem(meta) is None else {}
    items = {k: v[1] for k, v in entries.items()}
    if problem:
        out["problems"].append(problem)
    files = tally.lengths
    missing = [n for n in files if n not in items]
    extra = [] if partial else [n for n in items if n not in files]
    differ = [n for n in files if n in items and items[n] != files[n]]
    same_length = [n for n in files if n in items and items[n] == files[n]]
    content = [n for n in same_length if entries[n][2] != tally.checksums[n]]
    corrupt = _corrupt_packed(pack_dir, entries, [n for n in same_length if n not in content])
    for what, names in (("files not in the pack", missing), ("packed names without a file", extra),
                        ("lengths differ", differ), ("content differs from the file", content),
                        ("packed content does not match its checksum", corrupt)):
        if names:
            out["problems"].append(f"{what}: {len(names)} (e.g. {', '.join(_examples(names))})")
    out["sequences"], out["frames"] = len(items), sum(items.values())
    return out


def _corrupt_packed(pack_dir: Path, entries: dict, names: list[str]) -> list[str]:
    """Packed sequences whose bytes no longer match the index's checksum (overwritten, shifted offsets).

    Each sequence is read from the file on its own (not through one memory map of the whole
    pack, whose pages would all end up in this process's resident set)."""
    path = pack_dir / PACK_ARRAY
    try:
        array = np.load(path, mmap_mode="r")
    except NPY_ERRORS:
        return []  # reported as a pack problem already
    start, dtype, row = array.offset, array.dtype, int(np.prod(array.shape[1:]))
    del array
    corrupt = []
    with open(path, "rb") as f:
        for n in names:
            offset, length, checksum = entries[n][:3]
            f.seek(start + offset * row * dtype.itemsize)
            seq = np.fromfile(f, dtype=dtype, count=length * row).reshape(length, *(kp.NUM_ROWS, 3))
            if content_checksum(seq) != checksum:
                corrupt.append(n)
    return corrupt


def _warnings(root: Path, cfg: DataConfig, tally: _Tally, splits: dict, annotations: dict,
              rows: dict, pack: dict) -> list[str]:
    pose_dir, out = root / cfg.pose_dir, []

    def files(names) -> str:
        return ", ".join(str(pose_dir / f"{n}.npy") for n in _examples(names))

    for reason in ("bad shape", "unreadable"):
        bad = [n for n, r in tally.reasons.items() if r == reason]
        if bad:
            example = _examples(bad)[0]
            out.append(f"{len(bad)} files {reason}, skipped (e.g. {pose_dir / example}.npy: "
                       f"{tally.details[example]}; fix: {FIXES[reason]})")
    if tally.bad_size_row:
        example = _examples(tally.bad_size_row)[0]
        out.append(f"{len(tally.bad_size_row)} files with a wrong size row 0 (e.g. {pose_dir / example}.npy: "
                   f"{tally.bad_size_row[example]}; 512x512 is assumed; fix: row 0 = (width, height, 0))")
    other = {d: n for d, n in tally.dtypes.items() if d != "float32"}
    if other:
        out.append(f"dtype other than float32 in {sum(other.values())} files ({other}); read as float32")
    if tally.scores_out_of_range or tally.scores_nonfinite:
        planted = ("; planted on purpose: this is the synthetic signer, whose detector-like noise includes "
                   f"NaN frames ({MARKER})") if synthetic_marker(root) else ""
        out.append(f"scores outside [0, {SCORE_MAX}]: {tally.scores_out_of_range}, NaN/inf: "
                   f"{tally.scores_nonfinite} (e.g. {files(tally.out_of_range_files or tally.nan_files)}); "
                   f"such points count as missing{planted}")
    if tally.normalised:
        out.append(f"{len(tally.normalised)} files have all coordinates within [-1.5, 1.5] (e.g. "
                   f"{files(tally.normalised)}): expected pixels, not normalised coordinates")
    if tally.points and tally.points_outside > 0.05 * tally.points:
        out.append(f"{tally.points_outside / tally.points:.0%} of confident keypoints lie outside the "
                   "frame given by the size row: check the size row and the pixel coordinates")
    out += _split_warnings(root / cfg.split_file, splits, rows)
    out += _annotation_warnings(root / cfg.annotation_file, annotations, tally.lengths)
    if pack["exists"] and pack["problems"]:
        out.append(f"pack {pack['path']} does not match the files: {'; '.join(pack['problems'])} "
                   f"(fix: python run.py data-pack --root {root})")
    return out


def _split_warnings(path: Path, splits: dict, rows: dict) -> list[str]:
    out, seen = [], Counter()
    for split, names in splits.items():
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            out.append(f"{path}: {len(dup)} names listed twice in '{split}' (e.g. {', '.join(_examples(dup))})")
        seen.update(set(names))
    shared = [n for n, c in seen.items() if c > 1]
    if shared:
        out.append(f"{path}: {len(shared)} names are in more than one split (e.g. "
                   f"{', '.join(_examples(shared))}): evaluation would see training data")
    val, train = rows.get("val"), rows.get("train")
    if val is None or (val["kept"] == 0 and val["unchecked"] == 0):
        out.append(f"{path}: no usable 'val' sequence: train-rvq validates on it and will stop")
    if train and train["kept"] == 0 and train["unchecked"]:
        out.append(f"no usable 'train' sequence among the files checked; {train['unchecked']} not checked "
                   "(run without --max-files to know whether the root is usable)")
    return out


def _annotation_warnings(path: Path, annotations: dict, lengths: dict[str, int]) -> list[str]:
    differ = [n for n, t in lengths.items()
              if isinstance(annotations.get(n), dict) and isinstance(annotations[n].get("num_frames"), int)
              and annotations[n]["num_frames"] != t]
    if not differ:
        return []
    n = _examples(differ)[0]
    return [f"{path}: num_frames differs from the pose file in {len(differ)} entries (e.g. {n}: "
            f"{annotations[n]['num_frames']} vs {lengths[n]} frames); the pose file is used"]


def _train_error(root: Path, cfg: DataConfig, row: dict | None) -> str | None:
    """The error when the train split has no usable sequence (what, where, fix)."""
    if row is None or row["kept"] > 0 or row["unchecked"] > 0:
        return None
    if not row["skipped"]:
        return f"{root / cfg.split_file}: split 'train' is empty (fix: list the training names in it)"
    reason, info = max(row["skipped"].items(), key=lambda kv: kv[1]["count"])
    where = root / cfg.pose_dir / f"{info['examples'][0]}.npy"
    if reason == "not in annotations":
        where = root / cfg.annotation_file
    counts = ", ".join(f"{r}: {v['count']}" for r, v in row["skipped"].items())
    fix = FIXES[reason].format(annotations=root / cfg.annotation_file, pose_dir=root / cfg.pose_dir,
                               min_frames=cfg.min_frames, min_valid_frac=cfg.min_valid_frac,
                               conf_thresh=cfg.conf_thresh)
    return (f"split 'train' has no usable sequence of {row['listed']} ({counts}); e.g. {where} "
            f"({info['examples'][0]}: {reason}) (fix: {fix})")


def check_root(root: str | Path, cfg: DataConfig | None = None, max_files: int = 0,
               progress: bool = False) -> dict:
    """Validate a CSL-Daily-layout root; the report's ``usable`` is True when train has a usable sequence.

    ``cfg`` supplies the file names and thresholds (``root`` overrides ``cfg.root``);
    ``max_files`` > 0 reads only that many pose files (train first), for a quick look.
    """
    from tqdm import tqdm

    cfg = cfg or DataConfig()
    root = Path(root)
    report: dict = {"root": str(root), "conf_thresh": cfg.conf_thresh, "errors": [], "warnings": []}
    if not root.is_dir():
        report["errors"].append(f"data root not found: {root} (fix: pass the CSL-Daily folder, "
                                "or make one with `python run.py data-synth --out DIR`)")
        return {**report, "usable": False}
    names, annotations, splits = _layout(root, cfg, report["errors"])
    todo = _order(names, splits, max_files)
    tally = _Tally()
    for name in tqdm(todo, desc="check", unit="file", disable=not progress or None):
        try:
            tally.add(name, read_npy(root / cfg.pose_dir / f"{name}.npy"), cfg)
        except DataError as e:
            tally.reasons[name], tally.details[name] = "unreadable", str(e)
    rows = _split_rows(splits, annotations, names, tally)
    report["layout"] = {"pose_dir": str(root / cfg.pose_dir), "npy_files": len(names),
                        "annotations": len(annotations), "splits": {s: len(v) for s, v in splits.items()}}
    report["files"] = _file_summary(tally, len(todo), partial=len(todo) < len(names))
    report["splits"] = rows
    report["frames"] = _frame_stats(list(tally.lengths.values()), cfg.source_fps)
    report["confident"] = {p: tally.confident[p] / max(1, tally.frames * len(r)) for p, r in PARTS.items()}
    report["pack"] = _pack(root, cfg, tally, partial=len(todo) < len(names))
    report["warnings"] = _warnings(root, cfg, tally, splits, annotations, rows, report["pack"])
    error = None if report["errors"] else _train_error(root, cfg, rows.get("train"))
    if error:
        report["errors"].append(error)
    report["usable"] = not report["errors"]
    return report


def _file_summary(tally: _Tally, checked: int, partial: bool) -> dict:
    reasons = Counter(tally.reasons.values())
    return {
        "checked": checked, "partial": partial, "dtypes": dict(tally.dtypes),
        "ok_shape": len(tally.lengths), "bad_shape": reasons["bad shape"], "unreadable": reasons["unreadable"],
        "sizes": dict(tally.sizes), "bad_size_row": len(tally.bad_size_row),
        "bad_size_row_examples": _examples(tally.bad_size_row),
        "score_min": float(tally.score_min) if np.isfinite(tally.score_min) else None,
        "score_max": float(tally.score_max) if np.isfinite(tally.score_max) else None,
        "scores_out_of_range": tally.scores_out_of_range, "scores_nonfinite": tally.scores_nonfinite,
        "nan_frames": tally.nan_frames, "files_with_nan_frames": len(tally.nan_files),
        "empty_frames": tally.empty_frames, "frames": tally.frames,
    }


# ---------------------------------------------------------------------------- text


def format_report(report: dict, errors: bool = True) -> str:
    """The report as aligned text for a terminal or a log (``errors=False``: leave the errors out)."""
    lines = [f"data-check {report['root']}"]
    if "layout" in report:
        lines += _layout_lines(report) + _file_lines(report["files"]) + _split_lines(report["splits"])
        lines += _frame_lines(report["frames"]) + _confident_lines(report) + _pack_lines(report["pack"])
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines += [f"error: {e}" for e in report["errors"]] if errors else []
    train = report.get("splits", {}).get("train", {})
    lines.append(f"result: usable (train: {train.get('kept', 0)} sequences)" if report["usable"]
                 else "result: NOT usable (see the errors)")
    return "\n".join(lines)


def _layout_lines(report: dict) -> list[str]:
    lay = report["layout"]
    splits = " / ".join(f"{s} {n}" for s, n in lay["splits"].items()) or "-"
    return ["layout", f"  pose files    {lay['npy_files']} .npy in {lay['pose_dir']}",
            f"  annotations   {lay['annotations']} entries", f"  splits        {splits}"]


def _file_lines(f: dict) -> list[str]:
    partial = " (partial: --max-files)" if f["partial"] else ""
    dtypes = ", ".join(f"{d} {n}" for d, n in f["dtypes"].items()) or "-"
    sizes = ", ".join(f"{s} {n}" for s, n in f["sizes"].items()) or "-"
    lo, hi = f["score_min"], f["score_max"]
    scores = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "-"
    return [f"files: {f['checked']} checked{partial}",
            f"  shape [T,134,3] {f['ok_shape']} ok, {f['bad_shape']} bad shape, {f['unreadable']} unreadable"
            f"; dtype {dtypes}",
            f"  size row        {sizes}; wrong in {f['bad_size_row']}",
            f"  scores          range {scores}; outside [0, {SCORE_MAX}] {f['scores_out_of_range']}, "
            f"NaN/inf {f['scores_nonfinite']}",
            f"  frames          NaN frames {f['nan_frames']} (in {f['files_with_nan_frames']} files), "
            f"no confident keypoint {f['empty_frames']} of {f['frames']}"]


def _split_lines(rows: dict) -> list[str]:
    lines = [f"  {'split':<8}{'listed':>8}{'kept':>8}{'skipped':>9}{'frames':>9}"]
    for split, r in rows.items():
        skipped = sum(v["count"] for v in r["skipped"].values())
        lines.append(f"  {split:<8}{r['listed']:>8}{r['kept']:>8}{skipped:>9}{r['kept_frames']:>9}"
                     + (f"   ({r['unchecked']} not checked)" if r["unchecked"] else ""))
        for reason, v in sorted(r["skipped"].items(), key=lambda kv: -kv[1]["count"]):
            lines.append(f"      {reason}: {v['count']} (e.g. {', '.join(v['examples'][:3])})")
    return ["splits (kept = usable sequences; frames of the kept ones)"] + lines


def _frame_lines(s: dict) -> list[str]:
    if not s["sequences"]:
        return ["frames per sequence: no readable sequence"]
    return [f"frames per sequence ({s['sequences']} files): min {s['min']} / median {s['median']:g} / "
            f"mean {s['mean']:.1f} / max {s['max']}; total {s['total']} "
            f"({s['seconds'] / 60:.1f} min at {s['fps']:g} fps)"]


def _confident_lines(report: dict) -> list[str]:
    parts = "  ".join(f"{p.replace('_', ' ')} {v:.3f}" for p, v in report["confident"].items())
    return [f"confident keypoints (score >= {report['conf_thresh']:g}), fraction over all frames:",
            f"  {parts}"]


def _pack_lines(pack: dict) -> list[str]:
    if not pack["exists"]:
        return [f"pack: none at {pack['path']} (optional; python run.py data-pack makes one)"]
    state = "agrees with the files" if not pack["problems"] else "does NOT agree with the files"
    return [f"pack: {pack['path']}: {pack['sequences']} sequences, {pack['frames']} frames; {state}"]
