"""data-synth: write a synthetic signer dataset in the CSL-Daily layout."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from src.cli import UsageError, run_command
from src.tools.synth import write_synthetic_dataset


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the data-synth command."""
    parser = argparse.ArgumentParser(
        prog="run.py data-synth",
        description="Write synthetic sign-language pose sequences (CSL-Daily layout) for demos and tests.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--num", type=int, default=None, metavar="N",
                        help="number of sequences (default 200; with --like-csl-daily 20,654)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="sequence i depends only on (seed, i)")
    parser.add_argument("--min-frames", type=int, default=60, metavar="T", help="shortest sequence, frames")
    parser.add_argument("--max-frames", type=int, default=None, metavar="T",
                        help="longest sequence, frames (default 240; with --like-csl-daily 400)")
    parser.add_argument("--split-fractions", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
                        help="shares of the splits (default 0.8 0.1 0.1; with --like-csl-daily CSL-Daily's)")
    parser.add_argument("--like-csl-daily", action="store_true",
                        help="a stand-in of CSL-Daily's size and shape: 20,654 sentence-length sequences of "
                             "60-400 frames split as CSL-Daily (18,401 / 1,077 / 1,176); written one sequence "
                             "at a time (bounded memory); ~7.6 GB")
    return parser


# CSL-Daily's release: sequences per split
CSL_DAILY_SPLITS = (18401, 1077, 1176)


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    like = args.like_csl_daily
    num = args.num if args.num is not None else (sum(CSL_DAILY_SPLITS) if like else 200)
    max_frames = args.max_frames if args.max_frames is not None else (400 if like else 240)
    fractions = args.split_fractions or (tuple(n / sum(CSL_DAILY_SPLITS) for n in CSL_DAILY_SPLITS) if like
                                         else (0.8, 0.1, 0.1))
    if num < 0 or args.seed < 0:
        raise UsageError("--num and --seed must be >= 0")

    try:
        counts = write_synthetic_dataset(args.out, num, args.seed, args.min_frames, max_frames, fractions)
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
