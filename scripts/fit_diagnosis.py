"""Where a trained tokenizer loses a stream: the encoder, the codebooks, or the decoder.

For each split, every chunk of whole sequences (no augmentation) is decoded four ways and
scored per stream in pixels, as eval-rvq scores it:

- ``codes``: the model's own codes (what the tokens carry);
- ``latent``: the unquantised latent (what the encoder keeps, the decoder can use);
- ``kmeans``: residual k-means codebooks of the model's size fitted to the *training* split's
  latents (the same bits, codebooks fitted offline): better than ``codes`` means the learned
  codebooks do not fit the latents; no better means the latent geometry itself is the limit;
- ``chunk mean``: every frame replaced by its chunk's mean pose (the oracle of the issue).

Streams coded from a temporal context are decoded without it here (the first chunk's way):
read the hands and the face, not the body, for a context model.

    python scripts/fit_diagnosis.py --checkpoint <run>/ckpt_best.pt --root <folder> --splits train val
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src import cli  # noqa: E402
from src.data import keypoints as kp  # noqa: E402
from src.data.dataset import PoseDataset, collate  # noqa: E402
from src.inference import load_tokenizer  # noqa: E402
from src.metrics.evaluate import chunk_units  # noqa: E402
from src.metrics.pixel_error import chunk_mean_oracle, mpjpe_sums  # noqa: E402
from src.models.quantizer import kmeans, sq_distances  # noqa: E402


def chunks(cfg, split: str):
    dataset = PoseDataset(dataclasses.replace(cfg.data, max_frames=0), split)
    batch = collate([dataset[i] for i in range(len(dataset))])
    return batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask] > 0, chunk_units(batch)


def residual_kmeans(fit: torch.Tensor, levels: list[int], size: int, iters: int = 20) -> list[torch.Tensor]:
    """Per stream (dim 1), residual k-means codebooks fitted on ``fit`` (N, S, D): [level][s] (K, D)."""
    torch.manual_seed(0)
    books, residual = [], fit.clone()
    for level in range(max(levels)):
        level_books = []
        for s in range(fit.shape[1]):
            if level >= levels[s]:
                level_books.append(None)
                continue
            book = kmeans(residual[:, s], size, iters)
            residual[:, s] -= book[sq_distances(residual[:, s], book).argmin(-1)]
            level_books.append(book)
        books.append(level_books)
    return books


def code_with(books: list[list[torch.Tensor | None]], z: torch.Tensor) -> torch.Tensor:
    out, residual = torch.zeros_like(z), z.clone()
    for level_books in books:
        for s, book in enumerate(level_books):
            if book is not None:
                picked = book[sq_distances(residual[:, s], book).argmin(-1)]
                out[:, s] += picked
                residual[:, s] -= picked
    return out


def px(recon: torch.Tensor, x: torch.Tensor, observed: torch.Tensor, unit: torch.Tensor) -> list[float]:
    sums, counts = mpjpe_sums(recon, x, observed, unit)
    return (sums / counts.clamp_min(1)).tolist()


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--root", help="data root (default: the checkpoint's)")
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--kmeans-iters", type=int, default=20)
    cli.add_threads_arg(p, from_config=False)
    args = p.parse_args(argv)

    def body() -> int:
        cli.apply_threads(args.threads)
        model, cfg = load_tokenizer(args.checkpoint)
        if args.root:
            cfg.data.root = args.root
        levels = [cfg.model.rvq.stream_codes(name) for name in kp.STREAM_NAMES]
        data = {split: chunks(cfg, split) for split in dict.fromkeys(["train", *args.splits])}
        latents = {split: model.encode_latent(x, observed) for split, (x, observed, _) in data.items()}
        books = residual_kmeans(latents["train"], levels, cfg.model.rvq.codebook_size, args.kmeans_iters)
        print(f"MPJPE px per stream ({', '.join(kp.STREAM_NAMES)}); k-means: {'+'.join(map(str, levels))} codes "
              f"of {cfg.model.rvq.codebook_size} per stream fitted on {len(latents['train'])} train latents")
        for split in args.splits:
            x, observed, unit = data[split]
            z = latents[split]
            rows = {"codes": model.decode(model.decode_codes(model.quantizer.encode(z))),
                    "latent": model.decode(z),
                    "kmeans": model.decode(code_with(books, z)),
                    "chunk mean": chunk_mean_oracle(x, observed)}
            print(f"{split} ({len(x)} chunks)")
            for name, recon in rows.items():
                print(f"  {name:<11}" + "".join(f"{v:8.2f}" for v in px(recon, x, observed, unit)))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
