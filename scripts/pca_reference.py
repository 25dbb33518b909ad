"""A linear reference for the tokenizer: per-stream PCA of whole chunks.

Fits, for each stream, a PCA of the flattened chunk (L frames x points x 2, stream-local
units) on the train split, then reports the MPJPE in pixels of the rank-k reconstruction
on another split, measured like ``eval-rvq`` (observed points, true centre and unit).
It is not a tokenizer (the coefficients are continuous); it shows what a linear map of the
chunk can keep with k numbers per chunk and stream.

    python scripts/pca_reference.py --config configs/real_sample.yaml --root <folder> --split val --dims 8 16 32 64
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src import cli  # noqa: E402
from src.config import Config  # noqa: E402
from src.data import keypoints as kp  # noqa: E402
from src.data.dataset import PoseDataset, collate  # noqa: E402
from src.metrics.evaluate import chunk_units  # noqa: E402
from src.metrics.recon import mpjpe_sums  # noqa: E402
from src.runtime import set_threads  # noqa: E402


def split_chunks(cfg: Config, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every chunk of a split, whole sequences, no augmentation -> x (N, L, P, 2), observed, unit (N,)."""
    dataset = PoseDataset(cfg.data, split)
    batch = collate([dataset[i] for i in range(len(dataset))])
    return batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask] > 0, chunk_units(batch)


def pca_mpjpe(train: torch.Tensor, x: torch.Tensor, observed: torch.Tensor, unit: torch.Tensor,
              dims: list[int]) -> dict[int, dict[str, float]]:
    """MPJPE px per stream of each rank-k PCA (fitted on ``train`` chunks) on ``x`` -> {k: {stream: px}}."""
    result: dict[int, dict[str, float]] = {k: {} for k in dims}
    for i, (name, sl) in enumerate(kp.STREAM_SLICES.items()):
        a = train[:, :, sl].flatten(1).double()
        mean = a.mean(0)
        basis = torch.linalg.svd(a - mean, full_matrices=False).Vh
        b = x[:, :, sl].flatten(1).double() - mean
        only = torch.zeros_like(observed)
        only[:, :, sl] = observed[:, :, sl]
        for k in dims:
            recon = torch.zeros_like(x)
            recon[:, :, sl] = (b @ basis[:k].T @ basis[:k] + mean).view_as(x[:, :, sl]).to(x.dtype)
            sums, counts = mpjpe_sums(recon, x, only, unit)
            result[k][name] = float(sums[i] / counts[i].clamp_min(1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/real_sample.yaml", help="YAML config naming the data")
    p.add_argument("--root", help="data root in the CSL-Daily layout (replaces data.root)")
    p.add_argument("--split", default="val", help="split to measure on (the PCA is fitted on train)")
    p.add_argument("--dims", nargs="+", default=["8", "16", "32", "64"], help="numbers of components")
    cli.add_threads_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides (anywhere)")
    args = p.parse_intermixed_args(argv)  # overrides before, between or after the options
    # --dims takes every word after it, so key=value items written after it land there too.
    args.overrides += [d for d in args.dims if "=" in d]
    try:
        dims = [int(d) for d in args.dims if "=" not in d]
    except ValueError:
        p.error(f"--dims takes whole numbers, got {' '.join(args.dims)}")
    if not dims or min(dims) < 1:
        p.error("--dims needs at least one number >= 1")

    def body() -> int:
        cfg = cli.config_from_args(args)
        set_threads(cfg.threads)
        cfg.data.max_frames = 0  # whole sequences, as eval-rvq measures them
        train, _, _ = split_chunks(cfg, "train")
        x, observed, unit = split_chunks(cfg, args.split)
        print(f"PCA fitted on {len(train)} train chunks; MPJPE px on {len(x)} {args.split} chunks")
        print(f"{'dims':>6}" + "".join(f"{name:>8}" for name in kp.STREAM_NAMES))
        for k, row in pca_mpjpe(train, x, observed, unit, dims).items():
            print(f"{k:>6}" + "".join(f"{row[name]:8.2f}" for name in kp.STREAM_NAMES))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
