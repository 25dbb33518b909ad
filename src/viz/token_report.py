"""Token figures of a set of records: one timeline per video and the codebook usage of all."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.data.keypoints import STREAM_NAMES
from src.tokens.rle import rle_decode
from src.viz.tokens import plot_codebook_usage, plot_token_timeline


def record_code_counts(records: list[dict], num_levels: int | None = None,
                       codebook_size: int | None = None) -> dict[str, np.ndarray]:
    """Code counts per stream ``[levels, K]`` over ``records`` (NC runs decoded with ``rle_decode``).

    Levels and codebook size default to the records' ``meta`` (else the largest seen).
    A malformed record raises ValueError naming the video.
    """
    decoded = []
    for i, rec in enumerate(records):
        try:
            decoded.append(rle_decode(rec["tokens"], where="tokens"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"record {i} ({rec.get('video_name', '?')}): {e}") from None
    codes = [c for d in decoded for chunks in d.values() for chunk in chunks for c in chunk]
    metas = [r.get("meta", {}) for r in records]
    k = codebook_size or max([m.get("codebook_size", 0) for m in metas] + [max(codes, default=0) + 1])
    levels = num_levels or max([m.get("num_levels", 0) for m in metas]
                               + [len(chunk) for d in decoded for chunks in d.values() for chunk in chunks])
    counts = {s: np.zeros((levels, k), dtype=np.int64) for s in STREAM_NAMES}
    for d in decoded:
        for s, chunks in d.items():
            for chunk in chunks:
                counts[s][np.arange(len(chunk)), chunk] += 1
    return counts


def timeline_path(out_dir: str | Path, video_name: str) -> Path:
    """``timeline_<video>.png``, with characters a file name should not hold replaced."""
    return Path(out_dir) / f"timeline_{re.sub(r'[^A-Za-z0-9._-]', '_', video_name)}.png"


def usage_source(records: list[dict]) -> str:
    """What codebook_usage.png counts when it decodes ``records``: raw codes, unless their RLE
    was thresholded or levels were dropped (then the token file's codes)."""
    metas = [r.get("meta", {}) for r in records]
    thresholds = sorted({float(m.get("rle_threshold") or 0) for m in metas} - {0.0})
    lossy = [f"RLE threshold {', '.join(f'{t:g}' for t in thresholds)}"] if thresholds else []
    lossy += ["adaptive depth"] if any(m.get("adaptive_depth") or m.get("hand_codes") for m in metas) else []
    if not lossy:
        return "raw codes (lossless RLE decodes to them)"
    return f"codes in the token file ({', '.join(lossy)}; raw codes: eval-rvq)"


def write_token_plots(records: list[dict], out_dir: str | Path, max_records: int = 5,
                      progress: bool = True, raw_counts: dict[str, np.ndarray] | None = None) -> list[Path]:
    """Timelines of the first ``max_records`` records (0 = all) and ``codebook_usage.png``
    over all of them; returns the paths written.

    ``raw_counts`` ({stream: (levels, K)}, e.g. ``ExportStats.raw_code_counts``) are the
    encoder's own picks, the figure eval-rvq reports; without them the records' tokens are
    decoded and counted, and the title says which codes those are.
    """
    if not records:
        raise ValueError("no token records to plot")
    shown = records[:max_records] if max_records > 0 else records
    paths = [plot_token_timeline(r, timeline_path(out_dir, r["video_name"]))
             for r in tqdm(shown, desc="timelines", unit="seq", disable=not progress or None)]
    if raw_counts:
        counts, source = raw_counts, "raw codes (before RLE)"
    else:
        counts, source = record_code_counts(records), usage_source(records)
    title = f"codebook use over {len(records)} sequences: {source}"
    coded = records[0].get("meta", {}).get("codes_per_stream") or {}
    return paths + [plot_codebook_usage(counts, Path(out_dir) / "codebook_usage.png", title, coded)]
