"""`run.py data-synth`: write a synthetic signer dataset in the CSL-Daily layout."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from src.cli import run
from src.data.synth import write_synthetic_dataset


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the data-synth command."""
    parser = argparse.ArgumentParser(
        prog="run.py data-synth",
        description="Write synthetic sign-language pose sequences (CSL-Daily layout) for demos and tests.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--num", type=int, default=200, metavar="N", help="number of sequences")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="sequence i depends only on (seed, i)")
    parser.add_argument("--min-frames", type=int, default=60, metavar="T", help="shortest sequence, frames")
    parser.add_argument("--max-frames", type=int, default=240, metavar="T", help="longest sequence, frames")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the dataset and print a one-line summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num < 0 or args.seed < 0:
        parser.error("--num and --seed must be >= 0")

    def body() -> int:
        try:
            counts = write_synthetic_dataset(args.out, args.num, args.seed, args.min_frames, args.max_frames)
        except ValueError as err:
            parser.error(str(err))
        annotations = json.loads((args.out / "annotations.json").read_text(encoding="utf-8"))
        frames = sum(a["num_frames"] for a in annotations.values())
        splits = ", ".join(f"{name} {n}" for name, n in counts.items())
        print(f"wrote {len(annotations)} sequences to {args.out} ({splits}; {frames} frames)")
        return 0

    return run(body)


if __name__ == "__main__":
    raise SystemExit(main())
