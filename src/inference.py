"""Inference helpers shared by export, evaluation, visualisation and the benchmark.

A checkpoint carries its config, so ``load_tokenizer(path)`` is all a command needs.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.config import Config, ConfigError, ExportConfig, depth_thresholds, validate
from src.data import keypoints as kp
from src.data.dataset import collate
from src.hardware import cpu_caps
from src.models.stitch import stitch_chunks
from src.models.tokenizer import SignTokenizer
from src.train.checkpoint import config_from_checkpoint, load_checkpoint, load_model_state


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu",
                   stream_levels: dict[str, int] | None = None) -> tuple[SignTokenizer, Config]:
    """Rebuild the model from the config stored in the checkpoint; eval mode.

    ``stream_levels`` lowers the residual levels some streams code (a lower rate from the same
    weights, e.g. for a rate-distortion curve); it cannot add levels the model never trained.
    """
    state = load_checkpoint(path, device)
    cfg = config_from_checkpoint(state, path)
    for name, levels in (stream_levels or {}).items():
        trained = cfg.model.rvq.stream_levels.get(name)
        if trained is None or not 1 <= levels <= min(trained, cfg.model.rvq.levels):
            raise ConfigError(f"{path}: stream {name} can code 1..{trained} levels, not {levels}")
        cfg.model.rvq.stream_levels[name] = levels
    model = SignTokenizer.from_config(cfg)
    load_model_state(model, state["model"], path)
    return set_adaptive_depth(model.to(device).eval(), cfg), cfg


def set_adaptive_depth(model: SignTokenizer, cfg: Config) -> SignTokenizer:
    """``cfg.export``'s adaptive depth (``export.adaptive_depth`` with ``export.depth_threshold``,
    and ``export.hand_codes``) set on ``model``'s quantiser, or unset: every way of coding
    chunks (export, stream, evaluation) then drops the same levels, and decodes, and takes its
    context from, what it kept. The consumers that take a config (export, the streaming
    tokenizer) set it so on the model they are given."""
    try:   # export.hand_codes 0: as the hands trained (model.rvq.hand_codes; 0 there too: every level)
        model.quantizer.set_depth(depth_thresholds(cfg), cfg.export.hand_codes or cfg.model.rvq.hand_codes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return model


def parse_levels(text: str) -> dict[str, int]:
    """``"F=1,LH=2"`` -> ``{"F": 1, "LH": 2}`` (streams named as in the tokens)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        if name not in kp.STREAM_NAMES or not value.strip().isdigit():
            raise ConfigError(f"--levels: expected STREAM=N with STREAM in {', '.join(kp.STREAM_NAMES)}, got {item!r}")
        out[name] = int(value)
    return out


def depth_setting(cfg: Config, text: str) -> ExportConfig:
    """``cfg.export`` with adaptive depth from ``text``: ``off``, one threshold for every stream
    (``0.3``) or per stream (``LH=0.32,RH=0.32``), checked as the config file's would be."""
    if text.strip().lower() == "off":
        return dataclasses.replace(cfg.export, adaptive_depth=False)
    value: float | dict[str, float]
    try:
        value = float(text) if "=" not in text else {
            name.strip(): float(v) for name, v in (item.split("=", 1) for item in text.split(",") if item.strip())}
    except ValueError:
        raise ConfigError(f"--depth-threshold: expected off, a number or STREAM=X,..., got {text!r}") from None
    trial = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, adaptive_depth=True, depth_threshold=value))
    validate(trial)
    return trial.export


@dataclass
class Tokenized:
    """One sequence through the tokenizer. C chunks, L frames, P = 242 stream points."""

    name: str
    codes: np.ndarray         # (C, S, codes per stream) int
    residuals: np.ndarray     # (C, S, levels) norm left after each level / latent norm
    recon: np.ndarray         # (C, L, P, 2) local units, stitched at chunk borders if cfg.stitch
    sample: dict              # the dataset sample (x, conf, frame_mask, centres, unit, num_frames)


def precision_context(device: str | torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """``bf16``: autocast the encoder and decoder (the quantiser keeps fp32 itself); ``fp32``: as is."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return contextlib.nullcontext()


class PackedLinear(torch.nn.Module):
    """A linear layer computed in bf16 from a weight prepacked once for oneDNN.

    Its outputs are those of ``nn.Linear`` with bf16 weights under autocast, bit for bit (the
    same oneDNN kernels, tested); it skips the reorder of the weight into the kernel's blocked
    layout that oneDNN otherwise repeats on every call (~20% of a streamed chunk's matmuls).
    """

    def __init__(self, linear: torch.nn.Linear, rows: int = 64):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        # oneDNN's own layout (an opaque tensor, CPU only): a plain attribute, kept out of state_dict;
        # ``rows`` is the batch it picks the layout for (a chunk's frame tokens: 50 by default)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        if not x.is_contiguous():
            # torch's linear takes another kernel for a strided input (other bits): keep its
            return torch.nn.functional.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def can_prepack(device: str | torch.device) -> bool:
    """oneDNN's prepacked bf16 linear runs on this device (CPUs with bf16 hardware, src/hardware.py)."""
    return torch.device(device).type == "cpu" and cpu_caps().prepack


def shared_copy(model: SignTokenizer, but: set[int] = frozenset()) -> SignTokenizer:
    """A copy of ``model``'s modules that shares every parameter and buffer with it, except
    the tensors whose ids are in ``but`` (copied)."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()] if id(t) not in but}
    return copy.deepcopy(model, memo=shared)


def bf16_weights(model: SignTokenizer, prepack: bool | None = None) -> SignTokenizer:
    """A copy of ``model`` whose linear layers hold their weights and biases in bf16; every
    other tensor (codebooks, norms, embeddings) is shared, not copied.

    Under ``precision_context(device, "bf16")`` it computes exactly what ``model`` does, bit
    for bit: autocast rounds the same fp32 weights to the same bf16 values, but on every call.
    For one streamed chunk that re-cast of all weights made bf16 slower than fp32. The copy
    holds the weights of the moment it is made. With ``prepack`` (default: where oneDNN
    has it) the layers are :class:`PackedLinear`: the same bits, without the per-call reorder.
    """
    linear = {id(t) for m in model.modules() if isinstance(m, torch.nn.Linear) for t in m.parameters()}
    twin = shared_copy(model, but=linear)
    device = next(model.parameters()).device
    prepack = can_prepack(device) if prepack is None else prepack
    for parent in list(twin.modules()):
        for name, m in list(parent.named_children()):
            if not isinstance(m, torch.nn.Linear):
                continue
            if prepack:
                setattr(parent, name, PackedLinear(m))
                continue
            for key, p in list(m.named_parameters(recurse=False)):
                setattr(m, key, torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False))
    return twin


@torch.no_grad()
def tokenize(model: SignTokenizer, samples: list[dict], device: str | torch.device = "cpu",
             precision: str = "fp32") -> list[Tokenized]:
    """Codes and reconstructions of dataset samples (each must carry its ``name``)."""
    batch = collate(samples).to(device)
    x, conf = batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask]
    with precision_context(device, precision):
        codes, residuals, recon = model.tokenize(x, conf, batch.chunk_mask)
        recon = recon.float()
        if model.cfg.stitch:
            recon = stitch_chunks(recon, batch.chunk_mask)
    out, start = [], 0
    for sample, n in zip(samples, batch.chunk_mask.sum(1).tolist()):
        rows = slice(start, start + n)
        out.append(Tokenized(sample["name"], codes[rows].cpu().numpy(), residuals[rows].cpu().numpy(),
                             recon[rows].cpu().numpy(), sample))
        start += n
    return out
