"""Pack every ``<name>.npy`` of a root into one memory-mapped array plus an index.

Per-file loading of ~20k small files is slow on a cold cache; one contiguous array read
through ``np.load(mmap_mode="r")`` is not. The index maps name -> (offset, length) and
records each file's size and mtime, so a reader can tell a stale pack (files changed since)
and fall back to the files, and a checksum of each sequence's content, so a reader can tell
a corrupt pack (or a file rewritten with its stamps restored). Both files are written under temporary names and renamed; the
index goes last, so a pack that has an index is complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from src.data import keypoints as kp
from src.files import temp_path, write_text
from src.data.source import (NPY_ERRORS, PACK_ARRAY, PACK_DIR, PACK_INDEX, PACK_VERSION, DataError,
                             content_checksum, file_stamps, read_npy)


def _shapes(pose_dir: Path, names: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    lengths, bad = {}, {}
    for name in names:
        try:
            arr = np.load(pose_dir / f"{name}.npy", mmap_mode="r")
        except NPY_ERRORS as e:
            bad[name] = f"unreadable ({e.__class__.__name__})"
            continue
        if arr.ndim != 3 or arr.shape[1:] != (kp.NUM_ROWS, 3):
            bad[name] = f"bad shape {list(arr.shape)}"
        else:
            lengths[name] = arr.shape[0]
    return lengths, bad


def pack_dir_of(root: str | Path, out_dir: str | Path | None = None) -> Path:
    """Where a pack of ``root`` goes: ``out_dir``, else ``<root>/packed`` (found there automatically)."""
    return Path(out_dir) if out_dir else Path(root) / PACK_DIR


def write_pack(root: str | Path, out_dir: str | Path | None = None, pose_dir: str = "frames_512x512",
               progress: bool = True) -> dict:
    """Pack ``<root>/<pose_dir>/*.npy``; returns the index (with skipped files and reasons)."""
    from tqdm import tqdm

    pose_path = Path(root) / pose_dir
    if not pose_path.is_dir():
        raise DataError(f"pose folder not found: {pose_path}")
    out = pack_dir_of(root, out_dir)
    stamps = file_stamps(pose_path)  # before reading: a file rewritten meanwhile makes the pack stale
    names = list(stamps)
    if not names:
        raise DataError(f"no .npy files in {pose_path}")
    lengths, bad = _shapes(pose_path, names)
    if not lengths:
        raise DataError(f"no [T, {kp.NUM_ROWS}, 3] pose array in {pose_path} to pack "
                        f"(e.g. {names[0]}.npy: {bad[names[0]]})")
    total = sum(lengths.values())
    out.mkdir(parents=True, exist_ok=True)

    tmp_array = temp_path(out / PACK_ARRAY)
    try:
        # Appended sequence by sequence to a plain file (not through a memory map, whose written
        # pages would all stay in the process's resident set): memory stays one sequence's.
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                  "shape": (total, kp.NUM_ROWS, 3)}
        items, offset = {}, 0
        with open(tmp_array, "wb") as f:
            np.lib.format.write_array_header_2_0(f, header)
            for name in tqdm(lengths, desc="pack", unit="seq", disable=not progress or None):
                n = lengths[name]
                seq = read_npy(pose_path / f"{name}.npy").astype("<f4", copy=False)
                f.write(np.ascontiguousarray(seq).data)
                items[name] = [offset, n, content_checksum(seq)]
                offset += n
            f.flush()
            os.fsync(f.fileno())
        (out / PACK_INDEX).unlink(missing_ok=True)  # an old index must never describe the new array
        os.replace(tmp_array, out / PACK_ARRAY)
    finally:
        tmp_array.unlink(missing_ok=True)

    index = {"version": PACK_VERSION, "total_frames": total, "items": items, "skipped": bad,
             "stamps": stamps}
    write_text(out / PACK_INDEX, json.dumps(index))
    return index
