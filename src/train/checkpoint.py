"""Atomic, self-describing checkpoints: plain types and tensors only (``weights_only`` loads)."""
from __future__ import annotations

import logging
import random
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src.config import Config, ConfigError, from_dict
from src.files import atomic_path

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the mismatch."""


CHECKSUM_KEY = "checksum"  # CRC-32 over the payload (every other key), checked on load


def payload_checksum(state: Any) -> int:
    """CRC-32 over a checkpoint's content in a fixed order: tensors by their bytes, the rest by repr.

    Computed on the loaded values, not the file's bytes, so any flipped bit that changes a
    weight, an optimizer moment or a setting is caught (about 1 s per GB).
    """
    crc = 0

    def visit(value: Any) -> None:
        nonlocal crc
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            crc = zlib.crc32(f"{t.dtype}{list(value.shape)}".encode(), crc)
            crc = zlib.crc32(t.view(torch.uint8).numpy() if t.numel() else b"", crc)
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if value is state and key == CHECKSUM_KEY:
                    continue
                crc = zlib.crc32(repr(key).encode(), crc)
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            crc = zlib.crc32(f"[{len(value)}".encode(), crc)
            for item in value:
                visit(item)
        else:
            crc = zlib.crc32(repr(value).encode(), crc)

    visit(state)
    return crc


def save_checkpoint(path: str | Path, state: dict[str, Any], checksum: int | None = None) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves half a file.

    The payload's checksum is stored with it (:func:`load_checkpoint` verifies it); pass
    ``checksum`` (:func:`payload_checksum` of ``state``) to save one state under several names.
    """
    crc = payload_checksum(state) if checksum is None else checksum
    with atomic_path(path) as tmp:
        torch.save({**state, CHECKSUM_KEY: crc}, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with errors that say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: {first_line})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a SignStream checkpoint (a {type(state).__name__}, not a dict)")
    missing = [k for k in ("model", "config") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a SignStream checkpoint (missing {', '.join(missing)})")
    fix = "(fix: use another checkpoint of the run, e.g. ckpt_epoch<N>.pt or ckpt_best.pt)"
    if CHECKSUM_KEY not in state:
        if not written_before_checksums(state):
            raise CheckpointError(f"{path}: no checksum stored, though the version that wrote it stores one: "
                                  f"edited or damaged {fix}")
        log.warning("%s: written before checkpoints stored checksums; loaded unchecked", path)
    elif payload_checksum(state) != state[CHECKSUM_KEY]:
        raise CheckpointError(f"{path}: corrupt, its content does not match the checksum stored with it {fix}")
    return state


def written_before_checksums(state: dict[str, Any]) -> bool:
    """Whether a checkpoint comes from a version that stored no checksum. Checksums came before
    ``model.rvq.fsq_streams``: every version that stores that setting stores a checksum."""
    config = state.get("config")
    rvq = config.get("model", {}).get("rvq", {}) if isinstance(config, dict) else {}
    return isinstance(rvq, dict) and "fsq_streams" not in rvq


# The training-only EMA accumulators an inference checkpoint leaves out (rebuilt on load).
_EMA_SUM = ".embed_sum"
_UNUSED_STEPS = ".unused_steps"   # the restart counter of earlier versions (now unused_rows)


def inference_state(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint for tokenizing only: weights, codebooks and config, without the optimizer, RNG
    and the codebooks' EMA sums (rebuilt from the codebooks on load; resuming is not possible)."""
    model = {k: v for k, v in state["model"].items() if not k.endswith(_EMA_SUM)}
    return {"model": model, "config": state["config"], "epoch": state.get("epoch"), "step": state.get("step"),
            "metrics": state.get("metrics", {}), "inference_only": True}


def _with_ema_sums(state_dict: dict[str, torch.Tensor], eps: float) -> dict[str, torch.Tensor]:
    """An inference checkpoint's codebooks with their EMA sums put back (codeword x smoothed count)."""
    out = dict(state_dict)
    for key in [k for k in state_dict if k.endswith(".embed") and k[:-len(".embed")] + _EMA_SUM not in state_dict]:
        prefix = key[:-len(".embed")]
        sizes = state_dict.get(prefix + ".cluster_size")
        if sizes is None:
            continue
        total = sizes.sum(-1, keepdim=True)
        smoothed = (sizes + eps) / (total + sizes.shape[-1] * eps) * total
        out[prefix + _EMA_SUM] = state_dict[key] * smoothed[..., None]
    return out


def config_from_checkpoint(state: dict[str, Any], path: str | Path = "checkpoint") -> Config:
    """Rebuild the config the checkpoint was trained with.

    A checkpoint saved before ``data.reference`` existed coded every point without a reference
    pose: it reads as ``none``, not as today's default; one saved before
    ``model.rvq.fsq_streams`` had EMA codebooks on every stream: it reads as ``[]``; one saved
    before ``model.fb_from_parts`` decoded FB on its own: it reads as ``false``. Its
    ``model.rvq.dead_after_steps`` (restarts counted in steps) gives way to today's
    ``dead_after_rows``: a training setting, which coding never reads.
    """
    values = dict(state["config"])
    values["data"] = {"reference": "none", **values.get("data", {})}
    model = {"fb_from_parts": False, **values.get("model", {})}
    model["rvq"] = {"fsq_streams": [], **model.get("rvq", {})}
    model["rvq"].pop("dead_after_steps", None)
    values["model"] = model
    try:
        return from_dict(values)
    except ConfigError as e:
        raise CheckpointError(f"{path}: stored config does not fit this version ({e})") from None


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict`` with an error listing missing, unexpected and mis-shaped entries
    (an inference checkpoint's EMA sums are rebuilt first)."""
    rvq = getattr(getattr(model, "cfg", None), "rvq", None)
    state_dict = _with_ema_sums(state_dict, rvq.laplace_eps if rvq is not None else 1e-5)
    own = model.state_dict()
    for key in [k for k in state_dict if k.endswith(_UNUSED_STEPS) and k not in own]:
        # a codebook of a version that counted unused steps: rows are unknown, so every code
        # counts as just used (no restart until it goes unused for dead_after_rows)
        rows = key[:-len(_UNUSED_STEPS)] + ".unused_rows"
        if rows in own:
            state_dict[rows] = torch.zeros_like(state_dict.pop(key))
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(own[k].shape)}"
              for k in own.keys() & state_dict.keys() if own[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"shape mismatch {shapes[:5]}" if shapes else ""]
        hint = ("; it was made with the earlier frames of reference (254 stream points: nose-centred body, "
                "hips and legs coded), which this version no longer reads: retrain it"
                if "point_mean" in state_dict and state_dict["point_mean"].shape[0] == 254 else "")
        raise CheckpointError(f"{path}: model does not match the checkpoint: "
                              + "; ".join(p for p in parts if p) + hint)
    model.load_state_dict(state_dict)


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain lists."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((3, tuple(int(v) for v in py[:-1]), py[-1]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
