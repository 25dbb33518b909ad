"""LLM text templates of sign tokens, their parser, and the sign-token vocabulary.

One chunk reads ``<T0><F:c12><F:c1031><LH:a37><RH:b8><B:d91><FB:e45>``: a time token,
then the streams in fixed order, each with its codes in level order. A code is written
as ``global_id = level * codebook_size + code`` so that a level-1 code can never be read
as a level-0 one; an NC run reads ``<LH:NCx3>``.

The LLM prefix (``src/tokens/llm.py``) starts each chunk with the unnumbered ``<T>``
instead, so that its vocabulary does not grow with the length of a video; the parser
reads both, and whitespace between tokens (a tokenizer's ``decode`` may add it).
"""
from __future__ import annotations

import re

from src.data.keypoints import STREAM_BY_NAME, STREAM_NAMES
from src.tokens.rle import NC, check_codes, is_int, is_nc, nc_length

SEP = "<SEP>"
CHUNK = "<T>"  # unnumbered chunk start of the LLM prefix

_ORDER = {"t": -1, **{s: i for i, s in enumerate(STREAM_NAMES)}}
_STREAM_ALT = "|".join(sorted(STREAM_NAMES, key=len, reverse=True))
# No leading zeros, so that every parsed token renders back to the same text.
_TOKEN = re.compile(
    rf"<T(?P<t>0|[1-9]\d*)?>"
    rf"|<(?P<stream>{_STREAM_ALT}):(?:NCx(?P<run>[1-9]\d*)|(?P<prefix>[a-z])(?P<gid>0|[1-9]\d*))>"
)
_SPACE = re.compile(r"\s*")


def _code_token(stream: str, global_id: int) -> str:
    return f"<{stream}:{STREAM_BY_NAME[stream].id_prefix}{global_id}>"


def _nc_token(stream: str, run: int) -> str:
    return f"<{stream}:{NC}x{run}>"


def _check_positive(**values: object) -> None:
    for name, v in values.items():
        if not is_int(v) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def entries_to_template(
    entries: list[dict], codebook_size: int, max_chunks: int | None = None
) -> str:
    """Render RLE entries as template text; ``t >= max_chunks`` (if given) raises."""
    return "".join(entries_to_tokens(entries, codebook_size, max_chunks))


def entries_to_tokens(
    entries: list[dict], codebook_size: int, max_chunks: int | None = None, numbered: bool = True
) -> list[str]:
    """The template's tokens one by one; ``numbered=False`` starts each chunk with ``<T>``."""
    _check_positive(codebook_size=codebook_size)
    out: list[str] = []
    for i, e in enumerate(entries):
        out += _entry_tokens(e, i, codebook_size, max_chunks, numbered)
    return out


def _entry_tokens(entry: dict, i: int, codebook_size: int, max_chunks: int | None,
                  numbered: bool) -> list[str]:
    t = entry.get("t")
    if not is_int(t) or t < 0:
        raise ValueError(f"entries[{i}].t: expected an int >= 0, got {t!r}")
    if max_chunks is not None and t >= max_chunks:
        raise ValueError(f"entries[{i}].t: {t} has no time token (max_chunks={max_chunks})")
    unknown = [k for k in entry if k not in _ORDER]
    if unknown:
        raise ValueError(f"entries[{i}]: unknown key {unknown[0]!r}")
    parts = [f"<T{t}>" if numbered else CHUNK]
    for s in STREAM_NAMES:
        if s in entry:
            parts += _stream_tokens(s, entry[s], codebook_size, f"entries[{i}].{s}")
    return parts


def _stream_tokens(stream: str, value: list, codebook_size: int, path: str) -> list[str]:
    if is_nc(value):
        return [_nc_token(stream, nc_length(value, path))]
    codes = check_codes(value, path, codebook_size)
    return [_code_token(stream, level * codebook_size + c) for level, c in enumerate(codes)]


def template_to_entries(text: str, codebook_size: int) -> list[dict]:
    """Parse template text back into the entries it was rendered from (exact inverse).

    Grammar: tokens, optionally separated by whitespace (never inside a token). ``<Tn>``
    starts chunk n; ``<T>`` starts the chunk after the previous one (0 first); then each
    stream present in the chunk, in the order F LH RH B FB, with either its codes in level
    order (``<F:c12><F:c1031>``: level = id // codebook_size) or one ``<F:NCx3>``.
    """
    _check_positive(codebook_size=codebook_size)
    entries: list[dict] = []
    pos = _SPACE.match(text).end()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unknown token {_snippet(text, pos)!r} at position {pos}")
        if m["stream"] is None:
            t = int(m["t"]) if m["t"] is not None else entries[-1]["t"] + 1 if entries else 0
            entries.append({"t": t})
        else:
            _add_stream_token(entries, m, codebook_size)
        pos = _SPACE.match(text, m.end()).end()
    return entries


def _snippet(text: str, pos: int) -> str:
    end = text.find(">", pos)
    return text[pos : end + 1] if 0 <= end < pos + 40 else text[pos : pos + 40]


def _add_stream_token(entries: list[dict], m: re.Match, codebook_size: int) -> None:
    """Append one stream token to the current chunk, enforcing order and levels."""
    stream, where = m["stream"], f"token {m.group()!r} at position {m.start()}"
    prefix = STREAM_BY_NAME[stream].id_prefix
    if m["prefix"] is not None and m["prefix"] != prefix:
        raise ValueError(f"unknown {where}: {stream} ids use prefix {prefix!r}")
    if not entries:
        raise ValueError(f"{where}: comes before any time token")
    entry = entries[-1]
    last = next(reversed(entry))
    if stream not in entry and _ORDER[stream] < _ORDER[last]:
        raise ValueError(f"{where}: streams must follow the order {STREAM_NAMES}")
    if stream in entry and (m["run"] is not None or last != stream or is_nc(entry[stream])):
        raise ValueError(f"{where}: {stream} is already complete in this chunk")
    if m["run"] is not None:
        entry[stream] = [NC, int(m["run"])]
        return
    codes = entry.setdefault(stream, [])
    level, code = divmod(int(m["gid"]), codebook_size)
    if level != len(codes):
        raise ValueError(f"{where}: level {level}, expected level {len(codes)}")
    codes.append(code)


def build_vocabulary(
    num_levels: int | dict[str, int], codebook_size: int, max_run: int, max_chunks: int | None = None
) -> list[str]:
    """Every sign token in a stable order: codes, NC runs, chunk tokens, then ``<SEP>``.

    ``num_levels`` is the most codes a chunk has per stream (one int for all, or per
    stream). Without ``max_chunks`` the chunk token is the single ``<T>`` of the LLM
    prefix, so the size is fixed before any data is seen; with it, the debug template's
    ``<T0>`` .. ``<T{max_chunks-1}>``. Unique strings, JSON-able, for ``add_tokens``.
    """
    levels = num_levels if isinstance(num_levels, dict) else dict.fromkeys(STREAM_NAMES, num_levels)
    if sorted(levels) != sorted(STREAM_NAMES):
        raise ValueError(f"num_levels: expected one count per stream {STREAM_NAMES}, got {sorted(levels)}")
    _check_positive(codebook_size=codebook_size, max_run=max_run,
                    **{f"num_levels[{s}]": n for s, n in levels.items()})
    if max_chunks is not None:
        _check_positive(max_chunks=max_chunks)
    vocab = [_code_token(s, g) for s in STREAM_NAMES for g in range(levels[s] * codebook_size)]
    vocab += [_nc_token(s, k) for s in STREAM_NAMES for k in range(1, max_run + 1)]
    vocab += [CHUNK] if max_chunks is None else [f"<T{t}>" for t in range(max_chunks)]
    return vocab + [SEP]


def llm_example(prefix: str, text: str) -> dict:
    """Training record for the LLM stage: sign-token ``prefix``, ``<SEP>``, target ``text``.

    ``loss_mask.text_span`` = ``[start, end)`` character offsets of ``text`` in ``input``.
    Labels are -100 for every token before and including ``<SEP>`` (all tokens ending at
    or before ``start``), so the loss covers the text only.
    """
    for name, value in (("prefix", prefix), ("text", text)):
        if SEP in value:
            raise ValueError(f"{name} contains {SEP}, so the prefix/text split would be ambiguous")
    start = len(prefix) + len(SEP)
    full = prefix + SEP + text
    span = [start, len(full)]
    return {"input": full, "prefix": prefix, "text": text, "loss_mask": {"text_span": span}}
