"""Run-length "no change" (NC) codec for per-chunk sign tokens.

One entry per chunk, ready for JSONL: ``{"t": 3, "F": [12, 7], "LH": ["NC", 4]}``. A
stream's value is its codes per residual level, or ``["NC", k]``: the stream repeats its
last explicit codes (the run's anchor) for chunks t..t+k-1, and entries t+1..t+k-1 omit it.
"""
from __future__ import annotations

from numbers import Integral

from src.data.keypoints import STREAM_NAMES

NC = "NC"

Codes = dict[str, list[list[int]]]


def is_int(x: object) -> bool:
    """True for Python and numpy integers but not bools (a bool code is a bug upstream)."""
    return isinstance(x, Integral) and not isinstance(x, bool)


def is_nc(value: object) -> bool:
    """True if a stream value is meant as an NC marker (a list starting with a string)."""
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], str)


def nc_length(value: list, path: str) -> int:
    """Run length ``k`` of a well-formed ``["NC", k]`` marker; ValueError otherwise."""
    if len(value) != 2 or value[0] != NC or not is_int(value[1]):
        raise ValueError(f"{path}: malformed NC marker {value!r}, expected ['NC', k]")
    if value[1] < 1:
        raise ValueError(f"{path}: NC run length must be >= 1, got {value[1]}")
    return int(value[1])


def check_codes(
    value: object, path: str, codebook_size: int | None = None, num_levels: int | None = None
) -> list[int]:
    """Validate one chunk's per-level codes and return them as plain ints."""
    if not isinstance(value, list) or not value or not all(is_int(c) for c in value):
        raise ValueError(f"{path}: expected a non-empty list of int codes, got {value!r}")
    if num_levels is not None and len(value) > num_levels:
        raise ValueError(f"{path}: {len(value)} levels, at most {num_levels} allowed")
    bad = [c for c in value if c < 0 or (codebook_size is not None and c >= codebook_size)]
    if bad:
        raise ValueError(f"{path}: code {bad[0]} out of range [0, {codebook_size or 'inf'})")
    return [int(c) for c in value]


def count_codes(codes: Codes) -> int:
    """Number of codes in a sequence (all streams, chunks and levels): tokens without RLE."""
    return sum(len(chunk) for chunks in codes.values() for chunk in chunks)


def count_tokens(entries: list[dict]) -> int:
    """Number of stream tokens in RLE entries (codes + NC markers, time tokens excluded)."""
    return sum(1 if is_nc(v) else len(v) for e in entries for k, v in e.items() if k != "t")


def chunk_token_counts(entries: list[dict]) -> dict[str, list[int]]:
    """Stream tokens each chunk costs in RLE entries: its codes, 1 for an NC marker starting a
    run, 0 inside a run. Per stream, the counts sum to :func:`count_tokens`."""
    streams = [s for s in STREAM_NAMES if s in entries[0]] if entries else []
    return {s: [0 if s not in e else 1 if is_nc(e[s]) else len(e[s]) for e in entries] for s in streams}


def rle_encode(
    codes: Codes, unchanged: dict[str, list[bool]] | None = None, max_run: int | None = None
) -> list[dict]:
    """Encode a sequence's codes as per-chunk entries with NC runs.

    Lossless mode (``unchanged=None``): a chunk is NC iff its codes equal the stream's
    anchor. Thresholded mode: it is also NC where ``unchanged[stream][t]`` is true (t=0
    ignored) and then decodes to the anchor (lossy by design). ``max_run`` caps a run's
    length; longer runs become several NC entries, so the NC vocabulary stays finite.
    """
    n = _num_chunks(codes)
    if max_run is not None and (not is_int(max_run) or max_run < 1):
        raise ValueError(f"max_run must be None or an int >= 1, got {max_run!r}")
    if unchanged is not None and set(unchanged) != set(codes):
        raise ValueError(f"unchanged has streams {sorted(unchanged)}, codes has {sorted(codes)}")
    columns = {
        s: _encode_stream(s, codes[s], None if unchanged is None else unchanged[s], max_run)
        for s in STREAM_NAMES
        if s in codes
    }
    return [{"t": t, **{s: c[t] for s, c in columns.items() if c[t] is not None}} for t in range(n)]


def _num_chunks(codes: Codes) -> int:
    if not isinstance(codes, dict) or not codes:
        raise ValueError("codes: expected a non-empty dict of streams")
    unknown = [s for s in codes if s not in STREAM_NAMES]
    if unknown:
        raise ValueError(f"codes: unknown stream {unknown[0]!r}, expected one of {STREAM_NAMES}")
    lengths = {s: len(chunks) for s, chunks in codes.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"codes: streams need the same number (>= 1) of chunks, got {lengths}")
    return next(iter(lengths.values()))


def _encode_stream(
    name: str, chunks: list[list[int]], unchanged: list[bool] | None, max_run: int | None
) -> list[list | None]:
    """Per chunk: its codes, an NC marker starting a run, or None (covered by a run)."""
    chunks = [check_codes(c, f"codes.{name}[{t}]") for t, c in enumerate(chunks)]
    if unchanged is not None and len(unchanged) != len(chunks):
        raise ValueError(f"unchanged.{name}: {len(unchanged)} flags for {len(chunks)} chunks")
    flags, anchor = [False], chunks[0]
    for t in range(1, len(chunks)):
        # Codes equal to the anchor are NC in either mode: that costs no fidelity.
        flags.append(chunks[t] == anchor or (unchanged is not None and bool(unchanged[t])))
        anchor = anchor if flags[-1] else chunks[t]
    return _place_runs(chunks, flags, max_run)


def _place_runs(chunks: list[list[int]], flags: list[bool], max_run: int | None) -> list:
    out: list = list(chunks)
    t = 1
    while t < len(flags):
        k = 0
        while t + k < len(flags) and flags[t + k] and (max_run is None or k < max_run):
            k += 1
        if k:
            out[t : t + k] = [[NC, k]] + [None] * (k - 1)
        t += max(k, 1)
    return out


def rle_decode(entries: list[dict], where: str = "entries") -> Codes:
    """Invert :func:`rle_encode`: NC chunks get their anchor's codes.

    Raises ValueError naming the failing ``{where}[t].stream`` on malformed input.
    """
    _check_entries(entries, where)
    streams = [s for s in STREAM_NAMES if s in entries[0]]
    return {s: _decode_stream(entries, s, where) for s in streams}


def _check_entries(entries: list[dict], where: str) -> None:
    """Entries are dicts with t = 0, 1, 2, ... and only streams that chunk 0 defines."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: expected a non-empty list of chunk entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}[{i}]: expected a dict, got {type(entry).__name__}")
        if "t" not in entry:
            raise ValueError(f"{where}[{i}]: missing t")
        if not is_int(entry["t"]) or entry["t"] != i:
            raise ValueError(f"{where}[{i}].t: expected {i}, got {entry['t']!r}")
        for key in entry:
            if key != "t" and key not in STREAM_NAMES:
                raise ValueError(f"{where}[{i}]: unknown key {key!r}")
            if key not in entries[0]:
                raise ValueError(f"{where}[{i}].{key}: stream absent from chunk 0, no anchor codes")


def _decode_stream(entries: list[dict], stream: str, where: str) -> list[list[int]]:
    out: list[list[int]] = []
    anchor: list[int] | None = None
    left = 0  # chunks the current run still covers after this one
    for t, entry in enumerate(entries):
        path = f"{where}[{t}].{stream}"
        if stream not in entry:
            if left == 0:
                raise ValueError(f"{path}: missing and not covered by an NC run")
            left -= 1
        elif left:
            raise ValueError(f"{path}: overlaps an NC run that covers {left} more chunk(s)")
        elif is_nc(entry[stream]):
            k = nc_length(entry[stream], path)
            if anchor is None:
                raise ValueError(f"{path}: NC before any explicit code")
            if t + k > len(entries):
                raise ValueError(f"{path}: NC run of {k} goes past the end ({len(entries)} chunks)")
            left = k - 1
        else:
            anchor = check_codes(entry[stream], path)
        out.append(list(anchor))
    return out
