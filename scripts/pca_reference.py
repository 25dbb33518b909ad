"""References for the tokenizer that learn nothing but a fit: per-stream PCA and k-means of whole chunks.

Fits, for each stream, a PCA of the flattened chunk (L frames x points x 2, stream-local
units) on the train split, then reports the MPJPE in pixels of the rank-k reconstruction
on another split, measured like ``eval-rvq`` (observed points, true centre and unit).
It is not a tokenizer (the coefficients are continuous); it shows what a linear map of the
chunk can keep with k numbers per chunk and stream.

With ``--codes LEVELSxSIZE ...`` it fits residual k-means codebooks of the flattened chunk
instead (LEVELS codes of SIZE entries per chunk and stream, as the tokenizer's residual
levels) and reports them on train and on the split: a code of the tokenizer's bits without
an encoder, and its gap between the chunks it was fitted on and new ones.

    python scripts/pca_reference.py --config configs/real_sample.yaml --root <folder> --split val --dims 8 16 32 64
    python scripts/pca_reference.py --config configs/real_sample.yaml --root <folder> --split val --codes 1x1024 2x1024
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
from src.metrics.pixel_error import mpjpe_sums  # noqa: E402
from src.models.quantizer import kmeans, sq_distances  # noqa: E402
from src.runtime import set_threads  # noqa: E402


def split_chunks(cfg: Config, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every chunk of a split, whole sequences, no augmentation -> x (N, L, P, 2), observed, unit (N,)."""
    dataset = PoseDataset(cfg.data, split)
    batch = collate([dataset[i] for i in range(len(dataset))])
    return batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask] > 0, chunk_units(batch)


def _stream_mpjpe(recon: torch.Tensor, x: torch.Tensor, observed: torch.Tensor, unit: torch.Tensor,
                  index: int, sl: slice) -> float:
    """MPJPE px of one stream's points (``recon`` holds that stream's rows)."""
    only = torch.zeros_like(observed)
    only[:, :, sl] = observed[:, :, sl]
    sums, counts = mpjpe_sums(recon, x, only, unit)
    return float(sums[index] / counts[index].clamp_min(1))


def pca_mpjpe(train: torch.Tensor, x: torch.Tensor, observed: torch.Tensor, unit: torch.Tensor,
              dims: list[int]) -> dict[int, dict[str, float]]:
    """MPJPE px per stream of each rank-k PCA (fitted on ``train`` chunks) on ``x`` -> {k: {stream: px}}."""
    result: dict[int, dict[str, float]] = {k: {} for k in dims}
    for i, (name, sl) in enumerate(kp.STREAM_SLICES.items()):
        a = train[:, :, sl].flatten(1).double()
        mean = a.mean(0)
        basis = torch.linalg.svd(a - mean, full_matrices=False).Vh
        b = x[:, :, sl].flatten(1).double() - mean
        for k in dims:
            recon = torch.zeros_like(x)
            recon[:, :, sl] = (b @ basis[:k].T @ basis[:k] + mean).view_as(x[:, :, sl]).to(x.dtype)
            result[k][name] = _stream_mpjpe(recon, x, observed, unit, i, sl)
    return result


def kmeans_mpjpe(train: torch.Tensor, train_obs: torch.Tensor, train_unit: torch.Tensor, x: torch.Tensor,
                 observed: torch.Tensor, unit: torch.Tensor, levels: int, size: int,
                 iters: int = 20, seed: int = 0) -> dict[str, tuple[float, float]]:
    """MPJPE px per stream of residual k-means codes of whole chunks (``levels`` codebooks of
    ``size``, fitted on ``train``) -> {stream: (on train, on x)}."""
    torch.manual_seed(seed)
    result = {}
    for i, (name, sl) in enumerate(kp.STREAM_SLICES.items()):
        fit, new = train[:, :, sl].flatten(1), x[:, :, sl].flatten(1)
        coded_fit, coded_new = torch.zeros_like(fit), torch.zeros_like(new)
        for _ in range(levels):
            book = kmeans(fit - coded_fit, size, iters)
            coded_fit += book[sq_distances(fit - coded_fit, book).argmin(-1)]
            coded_new += book[sq_distances(new - coded_new, book).argmin(-1)]
        scores = []
        for coded, target, obs, u in ((coded_fit, train, train_obs, train_unit), (coded_new, x, observed, unit)):
            recon = torch.zeros_like(target)
            recon[:, :, sl] = coded.view_as(target[:, :, sl])
            scores.append(_stream_mpjpe(recon, target, obs, u, i, sl))
        result[name] = (scores[0], scores[1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/real_sample.yaml", help="YAML config naming the data")
    p.add_argument("--root", help="data root in the CSL-Daily layout (replaces data.root)")
    p.add_argument("--split", default="val", help="split to measure on (the PCA is fitted on train)")
    p.add_argument("--dims", nargs="+", default=["8", "16", "32", "64"], help="numbers of components")
    p.add_argument("--codes", nargs="+", default=[], metavar="LEVELSxSIZE",
                   help="residual k-means codes instead of PCA, e.g. 1x1024 2x1024 (levels x codebook size)")
    cli.add_threads_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides (anywhere)")
    args = p.parse_intermixed_args(argv)  # overrides before, between or after the options
    # --dims takes every word after it, so key=value items written after it land there too.
    args.overrides += [d for d in args.dims + args.codes if "=" in d]
    try:
        dims = [int(d) for d in args.dims if "=" not in d]
        codes = [tuple(int(v) for v in c.lower().split("x")) for c in args.codes if "=" not in c]
    except ValueError:
        p.error(f"--dims takes whole numbers and --codes LEVELSxSIZE, got {' '.join(args.dims + args.codes)}")
    if not dims or min(dims) < 1:
        p.error("--dims needs at least one number >= 1")
    if any(len(c) != 2 or min(c) < 1 for c in codes):
        p.error(f"--codes takes LEVELSxSIZE with both >= 1, e.g. 2x1024, got {' '.join(args.codes)}")

    def body() -> int:
        cfg = cli.config_from_args(args)
        set_threads(cfg.threads)
        cfg.data.max_frames = 0  # whole sequences, as eval-rvq measures them
        train, train_obs, train_unit = split_chunks(cfg, "train")
        x, observed, unit = split_chunks(cfg, args.split)
        if codes:
            print(f"residual k-means fitted on {len(train)} train chunks; MPJPE px on train / on {len(x)} "
                  f"{args.split} chunks")
            print(f"{'codes':>8}" + "".join(f"{name:>14}" for name in kp.STREAM_NAMES))
            for levels, size in codes:
                row = kmeans_mpjpe(train, train_obs, train_unit, x, observed, unit, levels, size)
                print(f"{levels}x{size:<6}" + "".join(f"{row[n][0]:7.2f} /{row[n][1]:5.2f}" for n in kp.STREAM_NAMES))
            return 0
        print(f"PCA fitted on {len(train)} train chunks; MPJPE px on {len(x)} {args.split} chunks")
        print(f"{'dims':>6}" + "".join(f"{name:>8}" for name in kp.STREAM_NAMES))
        for k, row in pca_mpjpe(train, x, observed, unit, dims).items():
            print(f"{k:>6}" + "".join(f"{row[name]:8.2f}" for name in kp.STREAM_NAMES))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
