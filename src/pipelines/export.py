"""Token export: a split -> tokenized sequences -> validated JSONL records, with statistics.

``export-tokens``, ``viz-tokens --checkpoint`` and the demo share :func:`export_tokens`.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.config import (Config, ConfigError, apply_overrides, config_differences, depth_thresholds, load_config,
                        to_dict)
from src.data.dataset import PoseDataset, require_root
from src.data.keypoints import STREAM_NAMES
from src.data.source import DataError, split_names
from src.hardware import resolve_precision
from src.inference import Tokenized, set_adaptive_depth, tokenize
from src.metrics.codebook_health import code_counts
from src.models.tokenizer import SignTokenizer
from src.tokens.records import validate_record, write_jsonl_atomic
from src.tokens.select import unchanged_chunks
from src.tokens.sequence import TokenSettings, codes_to_streams, sequence_record
from src.tokens.llm import SignVocab, prefix_tokens, vocab_of
from src.tokens.template import llm_example
from src.files import write_json

log = logging.getLogger(__name__)

# The keys that say where the data is; with export.* the only ones an export may change
# (the model and how the data is processed must stay those of the checkpoint).
DATA_LOCATION_KEYS = ("data.root", "data.split_file", "data.annotation_file", "data.pose_dir", "data.pack_dir")

Failure = tuple[str, str]  # (video name, reason)


def _settable(key: str) -> bool:
    return key.startswith("export.") or key in DATA_LOCATION_KEYS


def export_config(cfg: Config, config_path: str | None = None, overrides: list[str] | tuple = (),
                  root: str | None = None) -> Config:
    """The checkpoint's config with export settings and data location replaced.

    From ``config_path`` only ``export.*`` and :data:`DATA_LOCATION_KEYS` are taken (the rest
    is ignored, with a warning where it differs); an override of any other key is a
    ConfigError; ``root`` replaces ``data.root`` last.
    """
    cfg = dataclasses.replace(cfg)  # shallow: sub-configs are replaced, never mutated
    cfg.data, cfg.export = dataclasses.replace(cfg.data), dataclasses.replace(cfg.export)
    if config_path:
        given = load_config(config_path)
        ignored = [k for k in config_differences(to_dict(cfg), to_dict(given)) if not _settable(k)]
        cfg.export = given.export
        for key in DATA_LOCATION_KEYS:
            name = key.split(".", 1)[1]
            setattr(cfg.data, name, getattr(given.data, name))
        if ignored:
            log.warning("%s: ignored %s (model and data processing come from the checkpoint)",
                        config_path, ", ".join(ignored[:6]) + (" ..." if len(ignored) > 6 else ""))
    bad = [o.split("=", 1)[0] for o in overrides if "=" in o and not _settable(o.split("=", 1)[0].strip())]
    if bad:
        raise ConfigError(f"override '{bad[0]}' not allowed here: only export.* and "
                          f"{', '.join(DATA_LOCATION_KEYS)} (the rest comes from the checkpoint)")
    apply_overrides(cfg, list(overrides))
    if root is not None:
        cfg.data.root = str(root)
    return cfg


def token_settings(cfg: Config) -> TokenSettings:
    """How this config's codes become tokens."""
    return TokenSettings(cfg.data.fps, cfg.data.chunk_len, cfg.model.rvq.codebook_size,
                         cfg.model.rvq.codes_per_stream,
                         cfg.export.enable_rle, cfg.export.max_run, cfg.export.max_chunks)


@dataclass
class ExportStats:
    """Token counts over the exported sequences (time tokens not counted)."""

    split: str
    codes_per_chunk: int           # over all streams, when no level is dropped (adaptive depth, hand_codes)
    rle: str                       # "lossless", "thresholded <x>" or "off"
    adaptive_depth: str            # "off", "threshold <stream> <x>, ...", "hands share <n> codes"
    codes_per_stream: dict[str, int]   # codes per chunk each stream can code
    attempted: int = 0
    exported: int = 0
    chunks: int = 0
    codes: int = 0                 # codes kept (after adaptive depth) = tokens before RLE
    tokens: int = 0                # codes + NC markers after RLE
    stream_codes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAM_NAMES, 0))
    # How often each code was picked, before RLE: {stream: (codes per stream, K)}
    raw_code_counts: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, counts: dict[str, int], codes: np.ndarray, codebook_size: int) -> None:
        """Add one exported sequence: its token counts and codes (C, S, codes per stream; -1 where
        a stream codes no level or adaptive depth dropped it)."""
        per_stream = code_counts(codes, codebook_size)
        for s, name in enumerate(STREAM_NAMES):
            own = self.codes_per_stream[name]   # a level adaptive depth never reached still counts (0s)
            self.raw_code_counts[name] = self.raw_code_counts.get(name, 0) + per_stream[s, :own]
            self.stream_codes[name] += int((codes[:, s] >= 0).sum())
        self.exported += 1
        self.chunks += counts["chunks"]
        self.codes += counts["codes"]
        self.tokens += counts["tokens"]

    @property
    def success_rate(self) -> float:
        return self.exported / self.attempted if self.attempted else 0.0

    def per_chunk(self, count: int) -> float:
        return count / self.chunks if self.chunks else 0.0

    @property
    def compression(self) -> float:
        """1 - tokens after RLE / before."""
        return 1.0 - self.tokens / self.codes if self.codes else 0.0

    def lines(self) -> list[str]:
        ratio = f"{self.codes / self.tokens:.2f}x" if self.tokens else "n/a"
        streams = ", ".join(f"{s} {self.per_chunk(n):.2f}" for s, n in self.stream_codes.items())
        return [
            f"exported {self.exported}/{self.attempted} sequences of split '{self.split}' "
            f"({self.success_rate:.1%}), {self.chunks} chunks",
            f"tokens per chunk: {self.per_chunk(self.codes):.2f} before RLE, {self.per_chunk(self.tokens):.2f} "
            f"after (compression {self.compression:.1%}, {ratio}; RLE {self.rle})",
            f"codes per chunk: {self.per_chunk(self.codes):.2f} of {self.codes_per_chunk} "
            f"(per stream: {streams}; adaptive depth {self.adaptive_depth})",
        ]


def summary_lines(stats: ExportStats, failures: list[Failure], max_listed: int = 10) -> list[str]:
    """The statistics, then the skipped sequences with their reasons (the first ``max_listed``)."""
    lines = stats.lines()
    if failures:
        lines.append(f"skipped {len(failures)}:")
        lines += [f"  {name}: {reason}" for name, reason in failures[:max_listed]]
        if len(failures) > max_listed:
            lines.append(f"  ... and {len(failures) - max_listed} more")
    return lines


def _new_stats(cfg: Config, split: str) -> ExportStats:
    ex = cfg.export
    rle = "off" if not ex.enable_rle else f"thresholded {ex.rle_threshold:g}" if ex.rle_threshold > 0 else "lossless"
    t = depth_thresholds(cfg)
    parts = ([] if t is None else ["threshold " + ", ".join(f"{name} {v:g}" for name, v in t.items() if v > 0)]) + \
        ([f"hands share {ex.hand_codes} codes"] if ex.hand_codes else [])
    depth = "; ".join(parts) or "off"
    return ExportStats(split, cfg.model.rvq.codes_per_chunk, rle, depth,
                       {name: cfg.model.rvq.stream_codes(name) for name in STREAM_NAMES})


def _meta(cfg: Config, split: str, checkpoint: str, precision: str) -> dict:
    ex = cfg.export
    # With split latents a stream's codes per chunk are level-major: code j is level
    # j // splits of part j % splits (num_levels counts codes, not levels).
    rvq = cfg.model.rvq
    return {"checkpoint": checkpoint, "split": split, "splits": rvq.splits,
            "codes_per_stream": {name: rvq.stream_codes(name) for name in STREAM_NAMES},
            "adaptive_depth": ex.adaptive_depth,
            "depth_threshold": ex.depth_threshold if ex.adaptive_depth else None,
            "hand_codes": ex.hand_codes,
            "rle_threshold": ex.rle_threshold, "max_run": ex.max_run, "precision": precision,
            **({"precision_requested": ex.precision} if precision != ex.precision else {})}


def tokenized_record(tok: Tokenized, cfg: Config, meta: dict, text: str | None = None
                     ) -> tuple[dict, dict[str, int]]:
    """One tokenized sequence -> its validated record and token counts."""
    ex, settings = cfg.export, token_settings(cfg)
    unchanged = None
    if ex.enable_rle and ex.rle_threshold > 0:
        kept = codes_to_streams(tok.codes)
        unchanged = unchanged_chunks(tok.sample["x"], tok.sample["conf"], ex.rle_threshold, kept, tok.recon)
    meta = {**meta, "num_frames": int(tok.sample["num_frames"])}
    record, counts = sequence_record(tok.name, tok.codes, settings, meta, unchanged, text)
    validate_record(record, settings.num_levels, settings.codebook_size)
    return record, counts


def _scan_failures(names: list[str], dataset: PoseDataset) -> list[Failure]:
    """Names the dataset scan left out, with the scan's reason where its report kept one."""
    reason_of = {n: r for r, examples in dataset.report.examples.items() for n in examples}
    kept = set(dataset.names)
    return [(n, reason_of.get(n, "skipped by the data scan")) for n in names if n not in kept]


def _text(dataset: PoseDataset, name: str) -> str | None:
    text = dataset.annotations.get(name, {}).get("text")
    return text if isinstance(text, str) else None


def _reason(name: str, err: Exception) -> str:
    msg = str(err)
    return msg[len(name) + 2:] if msg.startswith(f"{name}: ") else msg


def _load(dataset: PoseDataset, indices: range, failures: list[Failure]) -> list[dict]:
    """Samples of ``indices``; one that cannot be loaded goes to ``failures`` instead."""
    samples = []
    for i in indices:
        try:
            samples.append(dataset[i])
        except (DataError, ValueError) as e:
            failures.append((dataset.names[i], _reason(dataset.names[i], e)))
    return samples


def export_tokens(model: SignTokenizer, cfg: Config, split: str, num_samples: int = 0, checkpoint: str = "",
                  device: str | torch.device = "cpu", batch_size: int = 16, progress: bool = True
                  ) -> tuple[list[dict], ExportStats, list[Failure]]:
    """Tokenize the first ``num_samples`` sequences of ``split`` (0 = all) into records.

    Whole sequences are exported (``data.max_frames`` is ignored). A sequence that cannot
    be loaded or exported is skipped and returned in the failures with its reason; each
    record is validated against the schema before it is returned.
    """
    data_cfg = dataclasses.replace(cfg.data, max_frames=0)
    names = split_names(require_root(data_cfg.root), data_cfg.split_file, split)
    names = names[:num_samples] if num_samples > 0 else names
    dataset = PoseDataset(data_cfg, split, names=names, progress=progress)
    precision = resolve_precision(cfg.export.precision, device, "export.precision=bf16")
    set_adaptive_depth(model, cfg)   # this export's settings, not the checkpoint's
    failures, stats = _scan_failures(names, dataset), _new_stats(cfg, split)
    meta = _meta(cfg, split, checkpoint, precision)
    stats.attempted, records = len(names), []
    with tqdm(total=len(dataset), desc=f"export {split}", unit="seq", disable=not progress or None) as bar:
        for start in range(0, len(dataset), batch_size):
            indices = range(start, min(start + batch_size, len(dataset)))
            samples = _load(dataset, indices, failures)
            for tok in tokenize(model, samples, device, precision) if samples else []:
                try:
                    record, counts = tokenized_record(tok, cfg, meta, _text(dataset, tok.name))
                except ValueError as e:
                    failures.append((tok.name, str(e)))
                    continue
                records.append(record)
                stats.add(counts, tok.codes, cfg.model.rvq.codebook_size)
            bar.update(len(indices))
    return records, stats, failures


def llm_paths(out: str | Path) -> tuple[Path, Path]:
    """``<stem>.vocab.json`` and ``<stem>.llm.jsonl`` next to the token file ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.vocab.json"), out.with_name(f"{out.stem}.llm.jsonl")


def write_llm_files(records: list[dict], out: str | Path, settings: TokenSettings) -> tuple[Path, Path, int]:
    """Write the sign-token vocabulary (a JSON list for ``add_tokens``) and one LLM training
    line per record with a non-empty text; returns both paths and the number of lines.

    The LLM prefix starts each chunk with ``<T>`` (no chunk index), so the vocabulary is
    fixed by the quantiser alone (see ``src/tokens/llm.py``).
    """
    vocab_path, llm_path = llm_paths(out)
    # The records' meta names each stream's own code count; settings only the largest.
    vocab = (vocab_of(records, str(out)) if records
             else SignVocab.create(settings.codebook_size, settings.num_levels, settings.max_run))
    examples = [{"video_name": r["video_name"],
                 **llm_example("".join(prefix_tokens(r["tokens"], vocab, f"{r['video_name']}.tokens")), r["text"])}
                for r in records if r.get("text")]
    vocab_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(vocab_path, vocab.tokens())
    return vocab_path, llm_path, write_jsonl_atomic(llm_path, examples)
