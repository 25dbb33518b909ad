"""A sequence's code array -> its JSONL record (RLE entries, template, meta, token counts)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.data.keypoints import STREAM_NAMES
from src.tokens.records import make_record
from src.tokens.rle import count_codes, count_tokens, rle_encode
from src.tokens.template import entries_to_template

ID_SCHEME = "global_id = level * codebook_size + code; streams F:c LH:a RH:b B:d FB:e"


@dataclass
class TokenSettings:
    """How codes become tokens (from the ``export`` config and the model's quantiser)."""

    fps: float
    chunk_len: int
    codebook_size: int
    num_levels: int
    enable_rle: bool = True
    max_run: int = 32
    max_chunks: int | None = None


def codes_to_streams(codes: np.ndarray) -> dict[str, list[list[int]]]:
    """codes (C, S, levels) -> {stream: per chunk, its codes}.

    Ids of -1 (levels a stream does not code, or that adaptive depth dropped) are left out.
    """
    return {name: [[c for c in row if c >= 0] for row in codes[:, s].tolist()] for s, name in enumerate(STREAM_NAMES)}


def sequence_record(name: str, codes: np.ndarray, settings: TokenSettings, meta: dict,
                    unchanged: dict[str, list[bool]] | None = None,
                    text: str | None = None) -> tuple[dict, dict[str, int]]:
    """Build the record of one sequence and its token counts before and after RLE.

    ``unchanged`` (thresholded RLE) marks chunks close enough to their run's anchor to
    count as unchanged; without it, only identical codes form runs (lossless).
    """
    streams = codes_to_streams(codes)
    if settings.enable_rle:
        entries = rle_encode(streams, unchanged, settings.max_run)
    else:
        entries = [{"t": t, **{s: streams[s][t] for s in STREAM_NAMES}} for t in range(codes.shape[0])]
    template = entries_to_template(entries, settings.codebook_size, settings.max_chunks)
    full_meta = {"codebook_size": settings.codebook_size, "num_levels": settings.num_levels,
                 "id_scheme": ID_SCHEME, "num_chunks": int(codes.shape[0]), **meta}
    record = make_record(name, settings.fps, settings.chunk_len, entries, template,
                         settings.enable_rle, full_meta, text)
    counts = {"chunks": int(codes.shape[0]), "codes": count_codes(streams), "tokens": count_tokens(entries)}
    return record, counts
