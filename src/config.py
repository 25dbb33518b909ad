"""Typed configuration: dataclass defaults <- YAML file <- dotted command-line overrides.

This is the only module that reads YAML. Values are coerced to each field's type, so
``1e-4`` is a float (plain PyYAML reads it as a string) and ``no`` is not a boolean
unless the field is one. Unknown keys fail with a close-match suggestion.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class AugmentConfig:
    mirror: bool = True              # left/right mirror with keypoint and stream swap
    mirror_prob: float = 0.5
    time_warp: bool = True           # speed jitter by resampling
    time_warp_max: float = 0.2       # speed factor drawn from [1 - max, 1 + max]
    dropout_prob: float = 0.05       # per keypoint and frame, score set to 0
    part_dropout_prob: float = 0.2   # per sequence: the face or one hand unseen for 10-60 frames
    jitter_px: float = 0.0           # per sequence: gaussian noise of sigma U(0, jitter_px) px on the input,
    #                                  scored against the clean pose (estimators jitter; the codes should not)


@dataclass
class DataConfig:
    root: str = "CSL-Daily"          # CSL-Daily layout; relative paths are from the working dir
    split_file: str = "split_files.json"
    annotation_file: str = "annotations.json"
    pose_dir: str = "frames_512x512"
    pack_dir: str = ""               # packed memmap folder; "" = <root>/packed when it exists
    fps: int = 30                    # model frame rate
    source_fps: int = 30             # frame rate of the .npy files
    chunk_len: int = 10
    max_frames: int = 0              # 0 = whole sequence; else random crop (train) / first frames (eval)
    conf_thresh: float = 0.3         # keypoints below this score are missing
    min_frames: int = 4
    min_valid_frac: float = 0.5      # of frames with both shoulders confident; else skipped
    lowpass_sigma: float = 0.0       # Gaussian smoothing over time, in frames; 0 = off
    causal: bool = False             # each frame normalised from frames up to it only (src/data/causal.py)
    causal_warmup: int = 10          # causal mode: the first N frames share the estimates at frame N
    # none | face | head: points coded relative to their own mean pose, side information as the
    # centres (the face; "head" adds the body's head and shoulders). The mean is over the sequence,
    # or in the causal mode over every frame up to each chunk's last (docs/design.md).
    reference: str = "head"
    # Several roots at once ({folder: weight}; {} = data.root alone): each root's own split file
    # and annotations; training draws each sequence of a root ``weight`` times per epoch on
    # average, validation reports every root as well as all together.
    roots: dict[str, float] = field(default_factory=dict)
    # share of each root's training split used (a seeded draw, the same every run; a smaller
    # share is a subset of a larger one): learning curves against the amount of data; 1 = all
    train_fraction: float = 1.0
    num_workers: int = 4
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class RVQConfig:
    levels: int = 2
    codebook_size: int = 1024
    distance: str = "euclidean"      # euclidean | cosine (latent put on the unit sphere)
    ema_decay: float = 0.99
    laplace_eps: float = 1e-5
    commitment_beta: float = 0.25
    # a code that no training row picked in this many rows (the global batch's, counted per
    # codebook) is restarted; in rows, not steps, so that a small batch (a CPU run's ~30 rows per
    # step) keeps the codes a larger one would: 20 steps of ~32 rows re-seeded about half of
    # every codebook each time (docs/fitting.md, section 8)
    dead_after_rows: int = 16384
    init: str = "kmeans"             # kmeans | sample | random (first batch)
    kmeans_iters: int = 10
    usage_temperature: float = 0.1   # soft assignment temperature, in units of each row's distance std
    # rows per level and step the usage term is estimated from, drawn at random when a batch has
    # more (its passes over every code and its gradient matmul then cost this many rows); 0 = all
    usage_rows: int = 1024
    quantizer_dropout: float = 0.0   # probability that a sample trains with a random number of levels
    # > 0: the hands train as export.hand_codes codes them: each chunk keeps this many hand levels
    # between both hands, split to leave the least residual (also what validation decodes); 0 = all
    hand_codes: int = 0
    # epochs between refits of the EMA codebooks to the training split's latents by residual k-means
    # (scripts/fit_diagnosis.py: the EMA codebooks trail the latents); 0 = off
    refit_every: int = 0
    # Streams quantised by finite scalar quantisation (src/models/quantizer/fsq.py) in
    # place of EMA codebooks, on the grid ``fsq_levels`` (values per number; its product must be
    # codebook_size). [] = fours (and a two): 1024 -> [4, 4, 4, 4, 4], 256 -> [4, 4, 4, 4].
    fsq_streams: list[str] = field(default_factory=lambda: ["F"])
    fsq_levels: list[int] = field(default_factory=list)
    splits: int = 1                  # parts of each stream's latent with codebooks of their own; a chunk
    #                                  then has levels x splits codes per stream (level-major order)
    # Residual levels each stream codes (at most ``levels``): the rate is set per stream.
    # 1+2+2+2+1 = 8 codes per chunk, the specification's 4-8 (24 tokens per second at most).
    stream_levels: dict[str, int] = field(
        default_factory=lambda: {"F": 1, "LH": 2, "RH": 2, "B": 2, "FB": 1})

    @property
    def fsq_grid(self) -> list[int]:
        """``fsq_levels``, or for [] the grid of fours (and a two) of a power-of-two codebook_size
        ([] when it is not one)."""
        if self.fsq_levels:
            return list(self.fsq_levels)
        bits = self.codebook_size.bit_length() - 1
        if self.codebook_size < 2 or 1 << bits != self.codebook_size:
            return []
        return [4] * (bits // 2) + [2] * (bits % 2)

    @property
    def codes_per_stream(self) -> int:
        """Codes per chunk of the stream with the most: ``levels`` levels of ``splits`` parts each."""
        return self.levels * self.splits

    def stream_codes(self, stream: str) -> int:
        """Codes per chunk of one stream: its levels (capped at ``levels``) x ``splits``."""
        return min(self.stream_levels[stream], self.levels) * self.splits

    @property
    def codes_per_chunk(self) -> int:
        """Codes per chunk over all streams, before run-length coding."""
        return sum(self.stream_codes(s) for s in self.stream_levels)


@dataclass
class ModelConfig:
    width: int = 128
    enc_layers: int = 2
    dec_layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    type_embedding: str = "add"      # add | concat
    type_dim: int = 32               # width of the concatenated stream embedding
    pool: str | dict[str, str] = "attention"  # attention | mean | flatten (frames side by side; decoder
    #                                  mirrors), or one per stream: {F: attention, LH: flatten, ...}
    latent_dim: int = 128
    linear_path: bool = False        # a linear map of the whole chunk beside the encoder's and decoder's
    #                                  transformer (added to the latent and to the decoded pose)
    stitch: bool = True              # decode sequences with chunk borders stitched (src/models/stitch.py); losses score that
    stats_sequences: int = 1000      # training sequences read for the per-point mean/std standardisation
    context: str = "none"            # none | previous: code each chunk from the previous chunk's decoded
    #                                  last frame (causal predictive coding, src/models/tokenizer.py)
    context_passes: int = 3          # training passes of a context model (errors of passes - 1 chunks seen)
    context_streams: list[str] = field(default_factory=lambda: ["F", "LH", "RH", "B", "FB"])  # the streams
    #                                  a context model codes from the context (the others as without)
    fb_from_parts: bool = True       # FB's arms and hands start from the decoded body and hands (placed at
    #                                  the body's wrists); FB's code decodes the correction (docs/design.md)
    rvq: RVQConfig = field(default_factory=RVQConfig)


@dataclass
class LossConfig:
    huber_delta: float = 1.0
    stream_weights: dict[str, float] = field(
        default_factory=lambda: {"F": 1.0, "LH": 1.0, "RH": 1.0, "B": 1.0, "FB": 1.0})
    lambda_vq: float = 1.0
    lambda_tem: float = 0.5          # temporal alpha
    temporal_mode: str = "velocity"  # velocity (reconstructed motion, across chunk borders) | latent
    lambda_usage: float = 0.1
    lambda_nce: float = 0.0          # InfoNCE between part streams and the full body; off
    nce_temperature: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int | Literal["auto"] = 32  # sequences per step and process; "auto" on CUDA
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    amp: bool = True                 # bf16 autocast on CUDA; CPU stays fp32 unless amp_cpu
    amp_cpu: bool = False
    compile: bool = False
    device: str = "auto"             # auto | cpu | cuda
    seed: int = 42
    log_every: int = 50              # steps
    log_every_s: float = 30.0        # also a log line this often within an epoch when there is no progress bar; 0 = off
    val_every: int = 1               # epochs
    ckpt_every: int = 5              # epochs
    codebook_every: int = 5          # epochs between codebook usage histograms (health: every validation)
    token_samples_every: int = 1     # epochs; 0 = off
    # epochs between evaluations of the training split itself (no augmentation, as val): the
    # fitting curve beside the validation curve (train_fit in metrics.jsonl); 0 = off
    fit_every: int = 0
    keep_last: int = 0               # periodic ckpt_epoch<N>.pt kept, newest first (0 = all); last and best always
    num_token_samples: int = 5


@dataclass
class ExportConfig:
    enable_rle: bool = True
    rle_threshold: float = 0.0       # 0 = lossless; else mean keypoint change (eyelid units)
    max_run: int = 32
    max_chunks: int = 2048
    adaptive_depth: bool = False
    # a stream codes its next level only while its residual is at least this share of its latent's
    # norm: one value for every stream, or per stream ({LH: 0.32, RH: 0.32}; streams not named code all)
    depth_threshold: float | dict[str, float] = 0.05
    hand_codes: int = 0              # > 0: the two hands share this many codes per chunk, split chunk by
    #                                  chunk to leave the least residual (a fixed rate); 0 = as trained
    #                                  (model.rvq.hand_codes; 0 there too: each hand all its levels)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast encoder/decoder (CPUs with bf16 units,
    #                                  GPUs); the quantiser stays fp32; a few % of codes can differ


@dataclass
class Config:
    experiment_name: str = "signstream"
    save_path: str = "checkpoints"
    threads: int = 0                 # intra-op CPU threads; 0 = torch's default (one per core)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


class ConfigError(ValueError):
    """A config key or value that does not fit the schema."""


class _Loader(yaml.SafeLoader):
    """YAML 1.2-style scalars: only true/false are booleans, and 1e-4 is a float."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$|^[-+]?(?:\d+\.\d*|\.\d+)$"),
    list("-+0123456789."))


def parse_scalar(text: str) -> Any:
    """Read one command-line value the way the YAML file would be read."""
    return yaml.load(text, Loader=_Loader) if text.strip() else ""


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(typ):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(typ)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(typ):
            return value
        raise ConfigError(f"{key}: expected one of {list(typing.get_args(typ))}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (etype,) = typing.get_args(typ)
        return [_coerce(v, etype, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, vtype = typing.get_args(typ)
        return {str(k): _coerce(v, vtype, f"{key}.{k}") for k, v in value.items()}
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(typ)}, got {value!r}")


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(typ))
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(typ))
    return getattr(typ, "__name__", str(typ))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str, name: str, options: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, options, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(options)}"
    return ConfigError(f"unknown config key '{key}'{hint}")


# Mappings whose keys are the user's (folders), set whole; the others (keyed by stream) merge key by key.
_OPEN_MAPPINGS = {"data.roots"}


def _merge(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set fields of dataclass ``obj`` from a nested mapping, with checks and coercion."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = _hints(type(obj))
    for name, value in values.items():
        key = prefix + str(name)
        if name not in hints:
            raise _unknown(key, str(name), list(hints))
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _merge(current, value, key + ".")
        elif isinstance(current, dict) and isinstance(value, dict) and key not in _OPEN_MAPPINGS:
            merged = dict(current)
            for k, v in value.items():
                if k not in current:
                    raise _unknown(f"{key}.{k}", str(k), list(current))
                merged[k] = v
            setattr(obj, name, _coerce(merged, hints[name], key))
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``a.b=c`` strings in order; values are parsed as YAML scalars, then type-checked."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
        key, text = item.split("=", 1)
        nested: dict[str, Any] = {}
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parse_scalar(text)
        _merge(cfg, nested)
    return cfg


def from_dict(values: dict[str, Any]) -> Config:
    """Build a config from a (possibly partial) nested mapping over the defaults."""
    cfg = Config()
    _merge(cfg, values or {})
    return cfg


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file; unreadable text or bad syntax is a one-line ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); fix: save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: YAML syntax error at {where}{problem} (fix: indent with spaces, "
                          "not tabs, and close every bracket and quote)") from None


REPO = Path(__file__).resolve().parents[1]


def find_config(path: str | os.PathLike) -> Path:
    """``path`` as given (relative to the working directory), else relative to the repository,
    so ``--config configs/demo.yaml`` works from any folder."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute() and (REPO / p).is_file():
        return REPO / p
    where = f" (nor {REPO / p})" if not p.is_absolute() else ""
    raise ConfigError(f"config file not found: {p}{where}")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if given), then the overrides; then the ranges are checked."""
    if path is not None:
        values = read_yaml(find_config(path)) or {}
        try:
            cfg = from_dict(values)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    else:
        cfg = Config()
    return validate(apply_overrides(cfg, overrides or []), path)


# key -> (test, what the value must be); a test reads the whole config, so ties between keys fit.
_RANGES: dict[str, tuple[typing.Callable[[Config], bool], str]] = {
    "data.fps": (lambda c: c.data.fps >= 1, ">= 1"),
    "data.source_fps": (lambda c: c.data.source_fps >= 1, ">= 1"),
    "data.chunk_len": (lambda c: c.data.chunk_len >= 1, ">= 1 frame"),
    "data.max_frames": (lambda c: c.data.max_frames >= 0, ">= 0 (0 = whole sequences)"),
    "data.min_frames": (lambda c: c.data.min_frames >= 1, ">= 1"),
    "data.min_valid_frac": (lambda c: 0 <= c.data.min_valid_frac <= 1, "in [0, 1]"),
    "data.conf_thresh": (lambda c: math.isfinite(c.data.conf_thresh), "a finite score"),
    "data.lowpass_sigma": (lambda c: c.data.lowpass_sigma >= 0, ">= 0 frames"),
    "data.reference": (lambda c: c.data.reference in ("none", "face", "head"), "none, face or head"),
    "data.num_workers": (lambda c: c.data.num_workers >= 0, ">= 0"),
    "threads": (lambda c: c.threads >= 0, ">= 0 (0 = torch's default)"),
    "data.augment.mirror_prob": (lambda c: 0 <= c.data.augment.mirror_prob <= 1, "in [0, 1]"),
    "data.augment.time_warp_max": (lambda c: 0 <= c.data.augment.time_warp_max < 1, "in [0, 1)"),
    "data.augment.dropout_prob": (lambda c: 0 <= c.data.augment.dropout_prob <= 1, "in [0, 1]"),
    "data.augment.jitter_px": (lambda c: c.data.augment.jitter_px >= 0, ">= 0 px"),
    "model.width": (lambda c: c.model.width >= 1, ">= 1"),
    "model.heads": (lambda c: c.model.heads >= 1 and c.model.width % c.model.heads == 0,
                    "a divisor of model.width (each head gets width / heads channels)"),
    "model.enc_layers": (lambda c: c.model.enc_layers >= 1, ">= 1"),
    "model.dec_layers": (lambda c: c.model.dec_layers >= 1, ">= 1"),
    "model.mlp_ratio": (lambda c: c.model.mlp_ratio > 0, "> 0"),
    "model.dropout": (lambda c: 0 <= c.model.dropout < 1, "in [0, 1)"),
    "model.latent_dim": (lambda c: c.model.latent_dim >= 1, ">= 1"),
    "model.stats_sequences": (lambda c: c.model.stats_sequences >= 1, ">= 1"),
    "model.rvq.levels": (lambda c: c.model.rvq.levels >= 1, ">= 1"),
    "model.rvq.codebook_size": (lambda c: c.model.rvq.codebook_size >= 2, ">= 2 codes"),
    "model.context_streams": (lambda c: bool(c.model.context_streams)
                              and set(c.model.context_streams) <= set(c.model.rvq.stream_levels),
                              "a non-empty list of stream names (F, LH, RH, B, FB)"),
    "model.rvq.fsq_streams": (lambda c: set(c.model.rvq.fsq_streams) <= set(c.model.rvq.stream_levels),
                              "a list of stream names (F, LH, RH, B, FB)"),
    "model.rvq.fsq_levels": (lambda c: not c.model.rvq.fsq_streams or (
        c.model.rvq.fsq_grid and min(c.model.rvq.fsq_grid) >= 2
        and math.prod(c.model.rvq.fsq_grid) == c.model.rvq.codebook_size),
        "values >= 2 whose product is model.rvq.codebook_size when model.rvq.fsq_streams names a stream "
        "([] works for a power-of-two codebook_size)"),
    "model.rvq.splits": (lambda c: c.model.rvq.splits >= 1 and c.model.latent_dim % c.model.rvq.splits == 0,
                         "a divisor of model.latent_dim"),
    "model.rvq.ema_decay": (lambda c: 0 <= c.model.rvq.ema_decay < 1, "in [0, 1)"),
    "model.rvq.laplace_eps": (lambda c: c.model.rvq.laplace_eps > 0, "> 0"),
    "model.rvq.dead_after_rows": (lambda c: c.model.rvq.dead_after_rows >= 1, ">= 1"),
    "model.rvq.kmeans_iters": (lambda c: c.model.rvq.kmeans_iters >= 0, ">= 0"),
    "model.rvq.usage_temperature": (lambda c: c.model.rvq.usage_temperature > 0, "> 0"),
    "model.rvq.usage_rows": (lambda c: c.model.rvq.usage_rows >= 0, ">= 0 (0 = every row)"),
    "model.rvq.quantizer_dropout": (lambda c: 0 <= c.model.rvq.quantizer_dropout <= 1, "in [0, 1]"),
    "model.rvq.refit_every": (lambda c: c.model.rvq.refit_every >= 0, ">= 0"),
    "data.roots": (lambda c: all(w > 0 for w in c.data.roots.values())
                   and len({Path(r).name for r in c.data.roots}) == len(c.data.roots),
                   "{folder: weight} with weights > 0 and folders of distinct names"),
    "data.train_fraction": (lambda c: 0 < c.data.train_fraction <= 1, "in (0, 1]"),
    "train.fit_every": (lambda c: c.train.fit_every >= 0, ">= 0"),
    "train.keep_last": (lambda c: c.train.keep_last >= 0, ">= 0 (0 = keep every periodic checkpoint)"),
    "loss.huber_delta": (lambda c: c.loss.huber_delta > 0, "> 0"),
    "loss.stream_weights": (lambda c: all(w >= 0 for w in c.loss.stream_weights.values()), "all >= 0"),
    "loss.nce_temperature": (lambda c: c.loss.nce_temperature > 0, "> 0"),
    "train.epochs": (lambda c: c.train.epochs >= 1, ">= 1"),
    "train.batch_size": (lambda c: c.train.batch_size == "auto" or c.train.batch_size >= 1, ">= 1 or 'auto'"),
    "train.lr": (lambda c: c.train.lr > 0, "> 0"),
    "train.weight_decay": (lambda c: c.train.weight_decay >= 0, ">= 0"),
    "train.warmup_steps": (lambda c: c.train.warmup_steps >= 0, ">= 0"),
    "train.min_lr_ratio": (lambda c: 0 <= c.train.min_lr_ratio <= 1, "in [0, 1]"),
    "train.grad_clip": (lambda c: c.train.grad_clip > 0, "> 0"),
    "train.log_every": (lambda c: c.train.log_every >= 1, ">= 1 step"),
    "train.log_every_s": (lambda c: c.train.log_every_s >= 0, ">= 0 seconds (0 = off)"),
    "train.val_every": (lambda c: c.train.val_every >= 1, ">= 1 epoch"),
    "train.ckpt_every": (lambda c: c.train.ckpt_every >= 1, ">= 1 epoch"),
    "train.codebook_every": (lambda c: c.train.codebook_every >= 1, ">= 1 epoch"),
    "train.token_samples_every": (lambda c: c.train.token_samples_every >= 0, ">= 0 (0 = off)"),
    "train.num_token_samples": (lambda c: c.train.num_token_samples >= 1, ">= 1"),
    "export.rle_threshold": (lambda c: c.export.rle_threshold >= 0, ">= 0"),
    "export.max_run": (lambda c: c.export.max_run >= 1, ">= 1"),
    "export.max_chunks": (lambda c: c.export.max_chunks >= 1, ">= 1"),
    "export.hand_codes": (lambda c: c.export.hand_codes == 0 or c.export.hand_codes >= 2, "0 (off) or >= 2"),
    "model.rvq.hand_codes": (lambda c: c.model.rvq.hand_codes == 0 or (
        c.model.rvq.hand_codes >= 2 and not {"LH", "RH"} & set(c.model.rvq.fsq_streams)),
        "0 (off) or >= 2, with the hands on EMA codebooks (not in model.rvq.fsq_streams)"),
    "export.depth_threshold": (lambda c: all(v >= 0 for v in _depth_per_stream(c).values())
                               and set(_depth_per_stream(c)) <= set(c.model.rvq.stream_levels),
                               ">= 0: one value, or one per stream named as in model.rvq.stream_levels"),
}


def _depth_per_stream(cfg: Config) -> dict[str, float]:
    t = cfg.export.depth_threshold
    return dict(t) if isinstance(t, dict) else {name: t for name in cfg.model.rvq.stream_levels}


def depth_thresholds(cfg: Config) -> dict[str, float] | None:
    """``export.depth_threshold`` per stream where ``export.adaptive_depth`` is on, else None."""
    return _depth_per_stream(cfg) if cfg.export.adaptive_depth else None


def _lookup(cfg: Config, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return not isinstance(value, float) or math.isfinite(value)


def validate(cfg: Config, path: str | os.PathLike | None = None) -> Config:
    """Check every numeric setting's range; the first bad one is a ConfigError naming the key.

    NaN fails every comparison, and inf is refused everywhere, so neither slips through.
    ``path`` (the YAML file) is named in the fix.
    """
    where = f"in {path} or " if path else ""
    for key, (ok, must) in _RANGES.items():
        value = _lookup(cfg, key)
        if not _finite(value) or not ok(cfg):
            raise ConfigError(f"{key}={value!r} cannot work: it must be {must} (fix: set it {where}"
                              f"as {key}=<value> on the command line)")
    return cfg


def config_differences(a: dict, b: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two nested config dicts -> (value in a, value in b)."""
    diffs: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs.update(config_differences(va, vb, f"{prefix}{key}."))
        elif va != vb:
            diffs[f"{prefix}{key}"] = (va, vb)
    return diffs


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of the config (for YAML, checkpoints and logs)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    from src.files import write_text

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
