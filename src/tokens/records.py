"""JSONL token records: one line per video, with its schema check and atomic I/O."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from src.files import atomic_path, remove_stale_temps
from src.tokens.rle import check_codes, is_int, is_nc, rle_decode
from src.tokens.template import template_to_entries

def _is_positive_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "video_name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "fps": (_is_positive_number, "a number > 0"),
    "chunk_len": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "tokens": (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list"),
    "rle": (lambda v: isinstance(v, bool), "a bool"),
    "template": (lambda v: isinstance(v, str), "a string"),
    "meta": (lambda v: isinstance(v, dict), "a dict"),
}
_OPTIONAL = {"text": (lambda v: isinstance(v, str), "a string")}


def make_record(
    video_name: str,
    fps: float,
    chunk_len: int,
    entries: list[dict],
    template: str,
    rle: bool,
    meta: dict,
    text: str | None = None,
) -> dict:
    """One JSONL line: a video's token entries, their template and free-form ``meta``."""
    rec = {
        "video_name": video_name,
        "fps": fps,
        "chunk_len": chunk_len,
        "tokens": entries,
        "rle": rle,
        "template": template,
        "meta": dict(meta),
    }
    if text is not None:
        rec["text"] = text
    return rec


def validate_record(
    rec: dict, num_levels: int | None = None, codebook_size: int | None = None
) -> None:
    """Raise ValueError naming the failing field (e.g. ``tokens[3].LH: ...``).

    Code range and level count are checked when ``codebook_size``/``num_levels`` are
    given; the template is checked to parse back to ``tokens`` when ``codebook_size`` is.
    """
    _check_fields(rec)
    tokens = rec["tokens"]
    rle_decode(tokens, where="tokens")  # t, stream keys, NC shapes and run structure
    for t, entry in enumerate(tokens):
        for stream, value in entry.items():
            if stream == "t":
                continue
            path = f"tokens[{t}].{stream}"
            if not is_nc(value):
                check_codes(value, path, codebook_size, num_levels)
            elif not rec["rle"]:
                raise ValueError(f"{path}: NC marker in a record with rle=false")
    if codebook_size is not None:
        _check_template(rec["template"], tokens, codebook_size)


def _check_fields(rec: dict) -> None:
    if not isinstance(rec, dict):
        raise ValueError(f"record: expected a dict, got {type(rec).__name__}")
    unknown = [k for k in rec if k not in _FIELDS and k not in _OPTIONAL]
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field")
    missing = [k for k in _FIELDS if k not in rec]
    if missing:
        raise ValueError(f"{missing[0]}: missing")
    for name, (ok, what) in {**_FIELDS, **_OPTIONAL}.items():
        if name in rec and not ok(rec[name]):
            raise ValueError(f"{name}: expected {what}, got {rec[name]!r}")


def _check_template(template: str, tokens: list[dict], codebook_size: int) -> None:
    try:
        parsed = template_to_entries(template, codebook_size)
    except ValueError as e:
        raise ValueError(f"template: {e}") from e
    if parsed != tokens:
        diffs = (i for i, (a, b) in enumerate(zip(parsed, tokens)) if a != b)
        i = next(diffs, min(len(parsed), len(tokens)))
        raise ValueError(f"template: does not parse back to tokens (first difference: tokens[{i}])")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write one JSON object per line, all or nothing; return the number of lines.

    The temp file sits in the target's folder so that ``os.replace`` is an atomic rename:
    a reader never sees a half-written file, and a failure leaves the old file intact.
    """
    path = Path(path)
    if path.parent.is_dir():
        remove_stale_temps(path.parent, path.name)  # left by a write that was killed
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file (blank lines skipped); bad lines raise naming file and line."""
    records = []
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    # split, not splitlines: a text field may hold U+2028, which splitlines breaks at
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: bad JSON ({e.msg}, column {e.colno})") from e
        if not isinstance(rec, dict):
            kind = type(rec).__name__
            raise ValueError(f"{path}:{lineno}: expected a JSON object, not {kind}")
        records.append(rec)
    return records
