"""Atomic, self-describing checkpoints: plain types and tensors only (``weights_only`` loads)."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src.config import Config, ConfigError, from_dict


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the mismatch."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    missing = [k for k in ("model", "config") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a SignStream checkpoint (missing {', '.join(missing)})")
    return state


def config_from_checkpoint(state: dict[str, Any], path: str | Path = "checkpoint") -> Config:
    """Rebuild the config the checkpoint was trained with."""
    try:
        return from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: stored config does not fit this version ({e})") from None


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict`` with an error listing missing, unexpected and mis-shaped entries."""
    own = model.state_dict()
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
