"""Original vs reconstruction of one named sequence: find it, tokenize it, score it, render it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.config import Config, DataConfig
from src.data.dataset import PoseDataset, require_root
from src.data.keypoints import STREAM_NAMES
from src.data.source import DataError, read_splits
from src.data.sample import frame_units, to_pixels
from src.inference import tokenize
from src.metrics.pixel_error import mpjpe_sums
from src.models.tokenizer import SignTokenizer
from src.viz.skeleton import render_comparison


def find_sequence(data_cfg: DataConfig, name: str | None, split: str = "val") -> tuple[str, str]:
    """``(name, split)`` of a sequence listed in the split file: ``split`` is searched first,
    then the others; without a name, the first sequence of ``split``."""
    root = require_root(data_cfg.root)
    path = root / data_cfg.split_file
    splits = read_splits(root, data_cfg.split_file)
    if name is None:
        if not splits.get(split):
            raise DataError(f"{path}: split '{split}' is missing or empty (has {', '.join(splits)})")
        return splits[split][0], split
    for s in [split, *(s for s in splits if s != split)]:
        if name in splits.get(s, []):
            return name, s
    raise DataError(f"{path}: no sequence named '{name}' in any split ({', '.join(splits)})")


@dataclass
class Reconstruction:
    """One sequence and its reconstruction as pose arrays ``[T, 134, 3]`` in pixels."""

    name: str
    split: str
    original: np.ndarray
    recon: np.ndarray
    codes_per_chunk: float        # all streams, mean over the chunks (adaptive depth may drop levels)
    mpjpe_px: dict[str, float]    # per stream, over observed points, part centres excluded
    num_chunks: int


def _mpjpe_px(recon: np.ndarray, sample: dict) -> dict[str, float]:
    n = recon.shape[0]
    sums, counts = mpjpe_sums(torch.from_numpy(recon), torch.from_numpy(sample["x"]),
                              torch.from_numpy(sample["conf"]), frame_units(sample, n))
    return {s: float(v) for s, v in zip(STREAM_NAMES, (sums / counts.clamp_min(1)).tolist())}


def reconstruct(model: SignTokenizer, cfg: Config, name: str | None = None, split: str = "val",
                stream: str = "parts", device: str | torch.device = "cpu") -> Reconstruction:
    """Tokenize the whole sequence ``name`` and map original and reconstruction to pixels.

    The original is the sample's own (cleaned, normalised) input mapped back, so both
    sides went through the same ``to_pixels``; ``stream`` is ``parts`` or ``FB``.
    """
    data_cfg = dataclasses.replace(cfg.data, max_frames=0)
    name, split = find_sequence(data_cfg, name, split)
    sample = PoseDataset(data_cfg, split, names=[name])[0]
    tok = tokenize(model, [sample], device)[0]
    return Reconstruction(name, split, to_pixels(sample["x"], sample, stream), to_pixels(tok.recon, sample, stream),
                          float((tok.codes >= 0).sum() / len(tok.codes)), _mpjpe_px(tok.recon, sample),
                          tok.codes.shape[0])


def render_recon(rec: Reconstruction, out: str | Path, fps: int = 30, chunk_len: int = 10,
                 frame: int | None = None, max_frames: int | None = None, stream: str = "parts") -> Path:
    """Side-by-side render (GIF / MP4 / PNG by suffix of ``out``); returns the path written."""
    label = f"{rec.codes_per_chunk:.3g} codes per chunk" + (", FB stream" if stream == "FB" else "")
    return render_comparison(rec.original, rec.recon, out, fps=fps, chunk_len=chunk_len,
                             titles=("original", f"reconstruction ({label})"),
                             frame=frame, max_frames=max_frames)
