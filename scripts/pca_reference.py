"""References for the tokenizer that learn nothing but a fit: per-stream PCA and k-means of whole chunks.

Fits, for each stream, a PCA of the flattened chunk (L frames x points x 2, stream-local
units) on the train split, then reports the MPJPE in pixels of the rank-k reconstruction
on another split, measured like ``eval-rvq`` (observed points, true centre and unit).
It is not a tokenizer (the coefficients are continuous); it shows what a linear map of the
chunk can keep with k numbers per chunk and stream.

With ``--codes LEVELSxSIZE ...`` it fits residual k-means codebooks of the flattened chunk
instead (LEVELS codes of SIZE entries per chunk and stream, as the tokenizer's residual
levels) and reports them on train and on the split: a code of the tokenizer's bits without
an encoder, and its gap between the chunks it was fitted on and new ones. Points a chunk does
not observe are filled with its observed mean first (no codes spent on placeholders);
``--mirror`` fits each hand's codebooks on both hands (the other one mirrored), as training's
mirror augmentation shows the model both; ``--eval ROOT:SPLIT ...`` measures other roots
(fitted once on the config's train split, which ``data.roots`` may make several roots').

    python scripts/pca_reference.py --config configs/real_sample.yaml --root <folder> --split val --dims 8 16 32 64
    python scripts/pca_reference.py --config configs/real_sample.yaml --root <folder> --split val --codes 1x1024 2x1024
    python scripts/pca_reference.py --config configs/real_all.yaml "data.roots={<d>/real_pose_sample: 1, <d>/crowd_signs: 1, <d>/fingerspelling: 1}" \
        --codes 2x1024 3x1024 --mirror --eval <d>/real_pose_sample:val <d>/crowd_signs:val
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src import cli  # noqa: E402
from src.config import Config  # noqa: E402
from src.data import keypoints as kp  # noqa: E402
from src.data.dataset import collate, split_dataset  # noqa: E402
from src.metrics.evaluate import chunk_units  # noqa: E402
from src.metrics.pixel_error import chunk_mean_oracle, mpjpe_sums  # noqa: E402
from src.models.quantizer import kmeans, sq_distances  # noqa: E402
from src.runtime import set_threads  # noqa: E402


def split_chunks(cfg: Config, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every chunk of a split (of every root in ``data.roots``), whole sequences, no augmentation
    -> x (N, L, P, 2), observed, unit (N,) or (N, L)."""
    dataset = split_dataset(cfg.data, split)
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


def _filled(x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Unobserved points replaced by their chunk's observed mean (0 where never observed)."""
    return torch.where(observed[..., None], x, chunk_mean_oracle(x, observed))


def _mirrored_hand(x: torch.Tensor, name: str) -> torch.Tensor:
    """The other hand's rows of ``x``, mirrored (x -> -x in its wrist-centred frame), as hand ``name``."""
    other = x[:, :, kp.STREAM_SLICES["RH" if name == "LH" else "LH"]].clone()
    other[..., 0] = -other[..., 0]
    return other


def fit_codes(train: torch.Tensor, observed: torch.Tensor, levels: int, size: int, mirror: bool = False,
              iters: int = 20, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Residual k-means codebooks of whole flattened chunks per stream -> {stream: [(size, D)] * levels}.
    ``mirror``: each hand's codebooks see both hands."""
    torch.manual_seed(seed)
    train = _filled(train, observed)
    books = {}
    for name, sl in kp.STREAM_SLICES.items():
        fit = train[:, :, sl]
        if mirror and name in ("LH", "RH"):
            fit = torch.cat([fit, _mirrored_hand(train, name)])
        fit = fit.flatten(1)
        coded, books[name] = torch.zeros_like(fit), []
        for _ in range(levels):
            residual = fit - coded
            book = kmeans(residual, size, iters)
            coded += _nearest(residual, book)
            books[name].append(book)
    return books


def _nearest(rows: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """Each row's nearest codeword of ``book``."""
    return book[sq_distances(rows, book).argmin(-1)]


def _per_stream(recon: torch.Tensor, x: torch.Tensor, observed: torch.Tensor, unit: torch.Tensor) -> dict[str, float]:
    """MPJPE px of ``recon`` per stream."""
    sums, counts = mpjpe_sums(recon, x, observed, unit)
    return {name: float(sums[i] / counts[i].clamp_min(1)) for i, name in enumerate(kp.STREAM_NAMES)}


def codes_mpjpe(books: dict[str, list[torch.Tensor]], x: torch.Tensor, observed: torch.Tensor,
                unit: torch.Tensor) -> dict[str, float]:
    """MPJPE px per stream of ``x`` coded by :func:`fit_codes`' codebooks (nearest code, level by level)."""
    filled, recon = _filled(x, observed), torch.zeros_like(x)
    for name, sl in kp.STREAM_SLICES.items():
        rows = filled[:, :, sl].flatten(1)
        coded = torch.zeros_like(rows)
        for book in books[name]:
            coded += _nearest(rows - coded, book)
        recon[:, :, sl] = coded.view_as(x[:, :, sl])
    return _per_stream(recon, x, observed, unit)


def oracle_mpjpe(x: torch.Tensor, observed: torch.Tensor, unit: torch.Tensor) -> dict[str, float]:
    """MPJPE px per stream of the exact chunk-mean oracle (as ``eval-rvq`` reports it)."""
    return _per_stream(chunk_mean_oracle(x, observed), x, observed, unit)


def _only_root(cfg: Config, root: str) -> Config:
    """The config reading ``root`` alone."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root, roots={}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/real_sample.yaml", help="YAML config naming the data")
    p.add_argument("--root", help="data root in the CSL-Daily layout (replaces data.root)")
    p.add_argument("--split", default="val", help="split to measure on (the PCA is fitted on train)")
    p.add_argument("--dims", nargs="+", default=["8", "16", "32", "64"], help="numbers of components")
    p.add_argument("--codes", nargs="+", default=[], metavar="LEVELSxSIZE",
                   help="residual k-means codes instead of PCA, e.g. 1x1024 2x1024 (levels x codebook size)")
    p.add_argument("--mirror", action="store_true",
                   help="with --codes: fit each hand's codebooks on both hands (the other one mirrored)")
    p.add_argument("--eval", nargs="+", default=[], metavar="ROOT:SPLIT",
                   help="with --codes: measure these roots' splits instead of --split of the config's data")
    cli.add_threads_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides (anywhere)")
    args = p.parse_intermixed_args(argv)  # overrides before, between or after the options
    # --dims takes every word after it, so key=value items written after it land there too.
    args.overrides += [d for d in args.dims + args.codes + args.eval if "=" in d]
    evals = [tuple(e.rsplit(":", 1)) for e in args.eval if "=" not in e]
    if any(len(e) != 2 or not all(e) for e in evals):
        p.error(f"--eval takes ROOT:SPLIT, got {' '.join(args.eval)}")
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
        train = split_chunks(cfg, "train")
        if codes:
            sets = {"train": train} | ({f"{root}:{split}": split_chunks(_only_root(cfg, root), split)
                                        for root, split in evals} or {args.split: split_chunks(cfg, args.split)})
            print(f"residual k-means fitted on {len(train[0])} train chunks{' (hands mirrored too)' * args.mirror}; "
                  "MPJPE px per stream")
            print(f"{'codes':<8} {'set (chunks)':<44}" + "".join(f"{name:>7}" for name in kp.STREAM_NAMES))
            fitted = [(f"{levels}x{size}", fit_codes(train[0], train[1], levels, size, args.mirror))
                      for levels, size in codes]
            for label, books in [("oracle", None)] + fitted:
                for name, data in sets.items():
                    row = oracle_mpjpe(*data) if books is None else codes_mpjpe(books, *data)
                    print(f"{label:<8} {name[-36:] + f' ({len(data[0])})':<44}" + "".join(f"{row[n]:7.2f}" for n in kp.STREAM_NAMES))
            return 0
        x, observed, unit = split_chunks(cfg, args.split)
        train, _, _ = train
        print(f"PCA fitted on {len(train)} train chunks; MPJPE px on {len(x)} {args.split} chunks")
        print(f"{'dims':>6}" + "".join(f"{name:>8}" for name in kp.STREAM_NAMES))
        for k, row in pca_mpjpe(train, x, observed, unit, dims).items():
            print(f"{k:>6}" + "".join(f"{row[name]:8.2f}" for name in kp.STREAM_NAMES))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
