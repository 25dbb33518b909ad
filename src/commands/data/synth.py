"""data-synth: write a synthetic signer dataset in the CSL-Daily layout."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from src.cli import UsageError, run_command
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


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    if args.num < 0 or args.seed < 0:
        raise UsageError("--num and --seed must be >= 0")

    try:
        counts = write_synthetic_dataset(args.out, args.num, args.seed, args.min_frames, args.max_frames)
    except ValueError as err:
        raise UsageError(str(err))
    annotations = json.loads((args.out / "annotations.json").read_text(encoding="utf-8"))
    frames = sum(a["num_frames"] for a in annotations.values())
    splits = ", ".join(f"{name} {n}" for name, n in counts.items())
    print(f"wrote {len(annotations)} sequences to {args.out} ({splits}; {frames} frames)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
