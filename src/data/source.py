"""Reading a CSL-Daily-layout root: split lists, annotations, and pose arrays.

Pose arrays come from ``frames_512x512/<name>.npy`` or, when present, from a packed
memory-mapped array (see :mod:`src.data.pack`); both give identical arrays.
"""
from __future__ import annotations

import json
import logging
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.data import keypoints as kp
from src.data.pose import observed_mask, unit_length, video_size

log = logging.getLogger(__name__)

PACK_DIR = "packed"  # default pack folder under the root
PACK_ARRAY = "poses.npy"
PACK_INDEX = "index.json"
PACK_VERSION = 3    # 3: each item is [offset, length, crc32 of the float32 bytes]
NPY_ERRORS = (OSError, ValueError, EOFError)  # what np.load raises on a bad file (EOFError: zero bytes)
COORD_LIMIT = 100   # confident coordinates beyond this many frame sizes are not pixels


class DataError(RuntimeError):
    """The dataset layout is unusable; the message says what and where."""


def read_json(path: Path, what: str) -> dict:
    """Load a JSON file with an error that names the file and the fix."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path} (expected the CSL-Daily layout, see README)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); fix: save it as UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """``np.load`` of one pose file; any unreadable file (empty, truncated, not .npy) is a DataError."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except NPY_ERRORS as e:
        raise DataError(f"{path}: cannot read pose array ({e.__class__.__name__}: {e})") from None


def content_checksum(array: np.ndarray) -> int:
    """CRC-32 of an array's float32 bytes (about 0.1 ms for a 150-frame sequence)."""
    return zlib.crc32(np.ascontiguousarray(array, dtype=np.float32))


class PoseSource:
    """Name -> raw ``[T, 134, 3]`` float32 array, from a pack if there is one, else per file.

    A packed sequence is checked against its checksum in the index the first time it is
    loaded (the dataset's scan loads each once, so workers inherit the checked names); on a
    mismatch the pack is dropped, with a warning, and every sequence is read from its file.
    """

    def __init__(self, root: str | Path, pose_dir: str = "frames_512x512", pack_dir: str = ""):
        self.root = Path(root)
        self.pose_dir = self.root / pose_dir
        pack = Path(pack_dir) if pack_dir else self.root / PACK_DIR
        self.pack_dir = pack if (pack / PACK_INDEX).is_file() else None
        self._index: dict[str, tuple[int, int, int]] = {}
        self._checked: set[str] = set()
        self._array: np.ndarray | None = None
        if self.pack_dir is not None:
            try:
                meta = read_json(self.pack_dir / PACK_INDEX, "pack index")
                problem = pack_problem(self.pack_dir, self.pose_dir, meta)
            except DataError as e:
                problem = f"unreadable index ({e})"
            if problem:
                if not self.pose_dir.is_dir():
                    raise DataError(f"{self.pack_dir}: pack not usable ({problem}) and no pose folder "
                                    f"{self.pose_dir} to fall back to (fix: re-pack from the .npy files)")
                # A stale pack would silently train on old arrays: read the files instead.
                log.warning("%s: pack not used, %s; reading per-file .npy "
                            "(fix: python run.py data-pack --root %s)", self.pack_dir, problem, self.root)
                self.pack_dir = None
            else:
                self._index = {k: (int(v[0]), int(v[1]), int(v[2])) for k, v in meta["items"].items()}
                self._check_sample()

    def _check_sample(self, count: int = 8) -> None:
        """Compare a few files with their packed copies: a file rewritten with its size and mtime
        restored is invisible to the stamps (``data-check`` compares every file)."""
        names = sorted(self._index)
        for name in names[::max(1, len(names) // count)][:count]:
            path = self.pose_dir / f"{name}.npy"
            try:
                differs = path.is_file() and content_checksum(read_npy(path)) != self._index[name][2]
            except DataError:
                differs = True
            if differs:
                log.warning("%s: pack not used, %s differs from its packed copy; reading per-file .npy "
                            "(fix: python run.py data-pack --root %s)", self.pack_dir, path, self.root)
                self.pack_dir, self._index = None, {}
                return

    @property
    def packed(self) -> bool:
        return self.pack_dir is not None

    def _pack(self) -> np.ndarray:
        # Opened lazily so that DataLoader workers each map the file themselves.
        if self._array is None:
            self._array = np.load(self.pack_dir / PACK_ARRAY, mmap_mode="r")
        return self._array

    def has(self, name: str) -> bool:
        return name in self._index or (self.pose_dir / f"{name}.npy").is_file()

    def file(self, name: str) -> Path:
        """The ``.npy`` file of ``name`` (for messages; a packed sequence is read from the pack)."""
        return self.pose_dir / f"{name}.npy"

    def load(self, name: str) -> np.ndarray:
        """The raw pose array of ``name`` (a fresh float32 copy)."""
        if name in self._index:
            start, length, crc = self._index[name]
            array = np.array(self._pack()[start:start + length], dtype=np.float32)
            if name in self._checked or content_checksum(array) == crc:
                self._checked.add(name)
                return array
            if not self.pose_dir.is_dir():
                raise DataError(f"{self.pack_dir}: packed {name} does not match its checksum (the pack is "
                                f"corrupt) and there is no {self.pose_dir} to read instead (fix: re-pack it)")
            # One corrupt sequence makes every other one suspect: read all from the files.
            log.warning("%s: pack not used from here on, packed %s does not match its checksum (corrupt); "
                        "reading per-file .npy (fix: python run.py data-pack --root %s)",
                        self.pack_dir, name, self.root)
            self.pack_dir, self._index = None, {}
        return read_npy(self.pose_dir / f"{name}.npy").astype(np.float32, copy=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}  # never pickle the memmap into workers


def file_stamps(pose_dir: Path) -> dict[str, list[int]]:
    """``name -> [size in bytes, mtime in ns]`` of every ``.npy`` in ``pose_dir`` (stat only, no reads)."""
    with os.scandir(pose_dir) as entries:
        stats = {e.name[:-4]: e.stat() for e in entries if e.name.endswith(".npy") and e.is_file()}
    return {name: [st.st_size, st.st_mtime_ns] for name, st in sorted(stats.items())}


def index_problem(meta: object) -> str | None:
    """What is wrong with the structure of a pack index, or None (version, items, stamps)."""
    if not isinstance(meta, dict):
        return f"index is a JSON {type(meta).__name__}, not an object"
    if meta.get("version") != PACK_VERSION:
        return f"index of version {meta.get('version')}, not {PACK_VERSION}"
    items, stamps = meta.get("items"), meta.get("stamps")
    if not isinstance(items, dict) or not isinstance(stamps, dict) or not isinstance(meta.get("total_frames"), int):
        return "index without items, stamps or total_frames"
    for name, item in items.items():
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(v, int) and v >= 0 for v in item)):
            return f"index entry {name!r} is {item!r}, not [offset, length, checksum]"
    return None


def pack_problem(pack_dir: Path, pose_dir: Path, meta: object) -> str | None:
    """Why the pack in ``pack_dir`` (index ``meta``) must not be used, or None when it is current.

    The index records every file's size and mtime at packing time; any file added, removed
    or rewritten since makes the pack stale. Without a pose folder the pack is all there is.
    Content is checked per sequence against the index's checksums (:meth:`PoseSource.load`).
    """
    problem = index_problem(meta)
    if problem:
        return problem
    try:
        array = np.load(pack_dir / PACK_ARRAY, mmap_mode="r")
    except NPY_ERRORS as e:
        return f"cannot open {PACK_ARRAY} ({e.__class__.__name__})"
    ends = [start + length for start, length, _ in meta["items"].values()]
    if array.shape[1:] != (kp.NUM_ROWS, 3) or array.shape[0] != meta["total_frames"] \
            or max(ends, default=0) > array.shape[0]:
        return f"{PACK_ARRAY} of shape {list(array.shape)} does not match the index"
    if not pose_dir.is_dir():
        return None
    now, then = file_stamps(pose_dir), meta["stamps"]
    if now != then:
        added, removed = now.keys() - then.keys(), then.keys() - now.keys()
        changed = [n for n in now.keys() & then.keys() if now[n] != then[n]]
        return (f"stale: {len(added)} files added, {len(removed)} removed, {len(changed)} changed "
                f"since packing (e.g. {sorted(added | removed | set(changed))[0]})")
    return None


@dataclass
class SkipReport:
    """Names left out of a split, by reason."""

    kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, name: str, reason: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(name)

    def summary(self) -> str:
        skipped = sum(self.reasons.values())
        parts = ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common())
        return f"kept {self.kept}, skipped {skipped}" + (f" ({parts})" if parts else "")


def usability(raw: np.ndarray, conf_thresh: float, min_frames: int, min_valid_frac: float) -> str | None:
    """Why a raw sequence is unusable (a short reason), or None when it is fine."""
    if raw.ndim != 3 or raw.shape[1:] != (kp.NUM_ROWS, 3):
        return "bad shape"
    if raw.shape[0] < max(1, min_frames):
        return "too short"
    with np.errstate(invalid="ignore"):
        ok = (raw[:, [kp.L_SHOULDER, kp.R_SHOULDER], 2] >= conf_thresh).all(axis=1)
        ok &= np.isfinite(raw[:, [kp.L_SHOULDER, kp.R_SHOULDER]]).all(axis=(1, 2))
    if ok.mean() < min_valid_frac:
        return "too little usable signal"
    # whole-array ops (reductions over the last axis of 2-3 values are ~10x slower, and this
    # runs on every sequence of every scan)
    x, y, score = raw[..., 0], raw[..., 1], raw[..., 2]
    with np.errstate(invalid="ignore"):
        confident = (score >= conf_thresh) & np.isfinite(x) & np.isfinite(y)   # (T, 134)
        limit = COORD_LIMIT * max(video_size(raw))
        far = (np.abs(x) > limit) | (np.abs(y) > limit)
    confident[:, kp.SIZE_ROW] = False
    if (far & confident).any():
        return "coordinates out of range"
    if unit_length(raw[..., :2], observed_mask(raw, conf_thresh)) is None:
        return "no unit length"
    return None


def read_splits(root: Path, split_file: str) -> dict[str, list[str]]:
    """The split file as ``{split: [name, ...]}``; anything else is a DataError naming the file and split."""
    path = root / split_file
    splits = read_json(path, "split file")
    if not isinstance(splits, dict):
        raise DataError(f"{path}: expected a JSON object of splits, got a {type(splits).__name__} "
                        '(fix: {"train": ["<name>", ...], "val": [...], "test": [...]})')
    for split, names in splits.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{path}: split '{split}' is {type(names).__name__} {str(names)[:40]!r}, not a list "
                            f'of names (fix: "{split}": ["<name>", ...])')
        outside = next((n for n in names if not plain_name(n)), None)
        if outside is not None:
            raise DataError(f"{path}: split '{split}' names {outside!r}, which is not a plain file name inside "
                            "the root (fix: list names as <name> for <pose_dir>/<name>.npy, without folders)")
    return splits


def plain_name(name: str) -> bool:
    """A sequence name that can only mean a file directly in the pose folder: no folder part,
    no ``..``, not absolute, no NUL (a split file must not read files outside the dataset)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def split_names(root: Path, split_file: str, split: str) -> list[str]:
    """Names listed for ``split`` in the split file (an error names the known splits)."""
    splits = read_splits(root, split_file)
    if split not in splits:
        raise DataError(f"{root / split_file}: no split '{split}' (has {', '.join(splits)})")
    return splits[split]


def scan_split(source: PoseSource, annotations: dict, names: list[str], conf_thresh: float,
               min_frames: int, min_valid_frac: float, progress: bool = False
               ) -> tuple[dict[str, int], SkipReport]:
    """Keep the names that have an annotation, a readable pose array, and enough signal.

    Returns the kept names (in split order) with their frame counts, and the skip report.
    """
    from tqdm import tqdm

    report, kept = SkipReport(), {}
    for name in tqdm(names, desc="scan", disable=not progress or None, leave=False):
        if name not in annotations:
            report.skip(name, "not in annotations")
        elif not source.has(name):
            report.skip(name, "no pose file")
        else:
            try:
                raw = source.load(name)
                reason = usability(raw, conf_thresh, min_frames, min_valid_frac)
            except DataError:
                reason = "unreadable"
            if reason:
                report.skip(name, reason)
            else:
                kept[name] = raw.shape[0]
    report.kept = len(kept)
    return kept, report
