"""Make the shipped tokenizer from a training checkpoint: weights, codebooks and config only
(no optimizer, RNG or EMA sums, no folder of the training machine), checksummed, and checked to
give the same codes.

    python scripts/ship_model.py --checkpoint <run>/ckpt_best.pt --check-root <a real root> \
        --out checkpoints/pretrained/signstream_real.pt [export.adaptive_depth=true ...]

``export.*`` settings given after the options are stored with the model: every command that
loads it codes so (adaptive depth, the RLE threshold).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src import cli  # noqa: E402
from src.data.dataset import PoseDataset  # noqa: E402
from src.config import apply_overrides, to_dict, validate  # noqa: E402
from src.inference import load_tokenizer, set_adaptive_depth, tokenize  # noqa: E402
from src.train.checkpoint import config_from_checkpoint, inference_state, load_checkpoint, save_checkpoint  # noqa: E402

LIMIT_MIB = 16   # a file committed under checkpoints/pretrained/


def portable(state: dict, overrides: list[str] = ()) -> dict:
    """The stored config without the training machine's folders: data roots by their folder name
    (as configs/real_all.yaml names them), runs under the default save path; ``overrides``
    (``export.*`` only) applied."""
    bad = [o for o in overrides if not o.startswith("export.")]
    if bad:
        raise cli.ConfigError(f"{bad[0]}: only export.* settings can be stored with a shipped model")
    config = to_dict(validate(apply_overrides(config_from_checkpoint(state), list(overrides))))
    data = config["data"]
    data["root"] = Path(data["root"]).name
    data["roots"] = {Path(root).name: weight for root, weight in data.get("roots", {}).items()}
    config["save_path"] = "checkpoints"
    return {**state, "config": config}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a train-rvq checkpoint")
    p.add_argument("--out", default="checkpoints/pretrained/signstream_real.pt")
    p.add_argument("--check-root", required=True, help="a root whose val split the codes are compared on")
    p.add_argument("overrides", nargs="*", metavar="export.key=value", help="export settings stored with the model")
    args = p.parse_args(argv)

    def body() -> int:
        save_checkpoint(args.out, portable(inference_state(load_checkpoint(args.checkpoint)), args.overrides))
        size = Path(args.out).stat().st_size / 2 ** 20
        if size > LIMIT_MIB:
            raise cli.ConfigError(f"{args.out}: {size:.1f} MiB, over the {LIMIT_MIB} MiB a committed file may have")
        (b, cfg), (a, _) = load_tokenizer(args.out), load_tokenizer(args.checkpoint)
        set_adaptive_depth(a, cfg)   # as stored with the shipped model
        data = dataclasses.replace(cfg.data, root=args.check_root, max_frames=0)
        dataset = PoseDataset(data, "val")
        samples = [{"name": dataset.names[i], **dataset[i]} for i in range(len(dataset))]
        same = all(np.array_equal(x.codes, y.codes) for x, y in zip(tokenize(a, samples), tokenize(b, samples)))
        if not same:
            raise cli.ConfigError(f"{args.out}: its codes differ from {args.checkpoint}'s")
        print(f"wrote {args.out}: {size:.1f} MiB; codes equal to the training checkpoint's on "
              f"{len(samples)} sequences of {args.check_root}")
        return 0

    with torch.no_grad():
        return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
