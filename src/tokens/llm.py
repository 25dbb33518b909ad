"""Sign tokens as the prefix of a Hugging Face causal LM: the vocabulary and model-ready examples.

A training example reads ``[bos] <T><F:c12><F:c1031>...<T>... <SEP> text [eos]``: one id
per sign token, ``<T>`` at the start of every chunk (no chunk index, so the vocabulary is
fixed before any data: streams x codes per chunk x codebook size, the NC runs, ``<T>`` and
``<SEP>``), and labels -100 over ``bos``, the prefix and ``<SEP>`` so that the loss covers
the text only. ``<T>`` stays because an RLE chunk may hold no stream token at all (every
stream inside an NC run) and the model still has to see that time passed.

``transformers``/``tokenizers`` are optional: only the functions that take a tokenizer
need them, and :func:`require_hf` says what to install.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from src.data.keypoints import STREAM_NAMES
from src.tokens.rle import is_int, is_nc, nc_length
from src.tokens.template import SEP, build_vocabulary, entries_to_tokens

HF_PACKAGES = ("transformers", "tokenizers")
IGNORE = -100  # the label value Hugging Face losses skip


def require_hf() -> None:
    """Raise ImportError with the install line when ``transformers``/``tokenizers`` are missing."""
    missing = [p for p in HF_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(f"{' and '.join(missing)} not installed: pip install transformers tokenizers")


@dataclass(frozen=True)
class SignVocab:
    """The sign-token vocabulary of one tokenizer checkpoint (independent of any data)."""

    codebook_size: int
    codes_per_stream: dict[str, int]  # most codes a chunk has per stream (records may hold fewer)
    max_run: int                      # longest NC run: <S:NCx1> .. <S:NCx{max_run}>

    def tokens(self) -> list[str]:
        """Every sign token, in a stable order (see :func:`build_vocabulary`)."""
        return build_vocabulary(self.codes_per_stream, self.codebook_size, self.max_run)

    @classmethod
    def create(cls, codebook_size: int, codes_per_stream: int | dict[str, int], max_run: int,
               where: str = "codes_per_stream") -> SignVocab:
        """One count for every stream, or a {stream: count} dict."""
        return cls(int(codebook_size), _per_stream(codes_per_stream, where), int(max_run))

    @classmethod
    def from_meta(cls, meta: dict, where: str = "meta") -> SignVocab:
        """From an exported record's ``meta``: ``codebook_size``, ``max_run`` and the codes per
        stream (``codes_per_stream`` or ``num_levels``, an int or one per stream)."""
        for key in ("codebook_size", "max_run"):
            if not is_int(meta.get(key)):
                raise ValueError(f"{where}.{key}: expected an int, got {meta.get(key)!r} (re-export the tokens)")
        key = "codes_per_stream" if "codes_per_stream" in meta else "num_levels"
        return cls.create(meta["codebook_size"], meta.get(key), meta["max_run"], f"{where}.{key}")

    @classmethod
    def from_config(cls, cfg: Any) -> SignVocab:
        """From a checkpoint's config: the quantiser's codebook size and codes per stream."""
        rvq = cfg.model.rvq
        counts = {s: rvq.stream_codes(s) for s in STREAM_NAMES}
        return cls.create(rvq.codebook_size, counts, cfg.export.max_run, "model.rvq.stream_levels")


def _per_stream(value: object, where: str) -> dict[str, int]:
    """An int for every stream, or a {stream: int} dict naming each stream once."""
    counts = dict.fromkeys(STREAM_NAMES, value) if is_int(value) else value
    if not isinstance(counts, dict) or sorted(counts) != sorted(STREAM_NAMES) or \
            not all(is_int(n) and n >= 1 for n in counts.values()):
        raise ValueError(f"{where}: expected an int >= 1 or one per stream {STREAM_NAMES}, got {value!r}")
    return {s: int(counts[s]) for s in STREAM_NAMES}


def vocab_of(records: list[dict], where: str) -> SignVocab:
    """The sign vocabulary every record's meta agrees on; ValueError naming the first that differs."""
    if not records:
        raise ValueError(f"{where}: no records")
    vocab = SignVocab.from_meta(records[0].get("meta", {}), f"{where}[0].meta")
    for k, rec in enumerate(records[1:], 1):
        other = SignVocab.from_meta(rec.get("meta", {}), f"{where}[{k}].meta")
        if other != vocab:
            raise ValueError(f"{where}[{k}].meta: {other} differs from the first record's {vocab}")
    return vocab


def prefix_tokens(entries: list[dict], vocab: SignVocab, where: str = "tokens") -> list[str]:
    """A record's RLE entries as LLM prefix tokens (``<T>`` per chunk); every token is in ``vocab``.

    A stream may carry fewer codes than ``vocab`` allows (adaptive depth), never more.
    """
    for t, entry in enumerate(entries):
        for stream in entry.keys() - {"t"}:
            _check_fits(entry[stream], vocab, stream, f"{where}[{t}].{stream}")
    return entries_to_tokens(entries, vocab.codebook_size, numbered=False)


def _check_fits(value: object, vocab: SignVocab, stream: str, path: str) -> None:
    if is_nc(value):
        size, limit, what = nc_length(value, path), vocab.max_run, "chunks in an NC run"
    else:
        size, limit, what = len(value) if isinstance(value, list) else 0, vocab.codes_per_stream.get(stream), "codes"
    if limit is not None and size > limit:
        raise ValueError(f"{path}: {size} {what}, the sign vocabulary allows {limit}")


def add_sign_tokens(tokenizer: Any, vocab: SignVocab) -> int:
    """Add the whole sign vocabulary to a Hugging Face tokenizer; return how many were new.

    Tokens are added unnormalised (a lowercasing normaliser must not turn ``<F:c12>`` into
    ``<f:c12>``) and not special (``decode(skip_special_tokens=True)`` keeps them). Call
    ``model.resize_token_embeddings(len(tokenizer))`` afterwards.
    """
    require_hf()
    from tokenizers import AddedToken

    return tokenizer.add_tokens([AddedToken(t, normalized=False) for t in vocab.tokens()])


def sign_ids(tokenizer: Any, tokens: list[str]) -> list[int]:
    """One id per sign token; ValueError if the tokenizer does not know one."""
    ids = tokenizer.convert_tokens_to_ids(tokens)
    unk = tokenizer.unk_token_id
    missing = [t for t, i in zip(tokens, ids) if i is None or (i == unk and t != tokenizer.unk_token)]
    if missing:
        raise ValueError(f"sign token {missing[0]} is not in the tokenizer: call add_sign_tokens(tokenizer, vocab) first")
    return ids


def build_example(tokenizer: Any, tokens: list[str], text: str | None = None,
                  bos: bool = True, eos: bool = True) -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask`` and ``labels`` for prefix tokens (from :func:`prefix_tokens`).

    With ``text``: ``[bos] prefix <SEP> text [eos]`` for training, labels = ids on the text
    and ``eos``, -100 elsewhere. Without: ``[bos] prefix <SEP>``, all labels -100, ready for
    ``generate`` (a streaming caller appends ``sign_ids`` of each new chunk and ``<SEP>``
    when the video ends). ``bos``/``eos`` apply only where the tokenizer has those tokens.
    """
    head = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
    prefix = head + sign_ids(tokenizer, [*tokens, SEP])
    target: list[int] = []
    if text is not None:
        if SEP in text:
            raise ValueError(f"text contains {SEP}, so the prefix/text split would be ambiguous")
        target = tokenizer(text, add_special_tokens=False)["input_ids"]
        target += [tokenizer.eos_token_id] if eos and tokenizer.eos_token_id is not None else []
    ids = prefix + target
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(prefix) + target}


def record_example(tokenizer: Any, record: dict, vocab: SignVocab, with_text: bool = True) -> dict[str, list[int]]:
    """:func:`build_example` of an exported record (its ``tokens`` and, if asked, its ``text``)."""
    name = record.get("video_name", "record")
    text = record.get("text") if with_text else None
    if with_text and not isinstance(text, str):
        raise ValueError(f"{name}: no text to train on (only records with a 'text' field can)")
    return build_example(tokenizer, prefix_tokens(record["tokens"], vocab, f"{name}.tokens"), text)


def pad_batch(examples: list[dict[str, list[int]]], pad_id: int, left: bool = False) -> dict[str, Any]:
    """Pad examples into LongTensors (labels padded with -100); ``left=True`` for ``generate``."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for e in examples:
        n = width - len(e["input_ids"])
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE)):
            row = e.get(key, [IGNORE] * len(e["input_ids"]))
            batch[key].append([fill] * n + row if left else row + [fill] * n)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
