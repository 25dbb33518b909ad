"""eval-rd: rate-distortion report of several checkpoints: table and plot of px vs tokens/s.

Rate-distortion report: evaluate several checkpoints on one split (no training)
and write a table (rd.md), the figures (rd.json) and a plot of MPJPE per stream against
tokens per second after RLE, with the chunk oracles as lines (rd.png)."""
from __future__ import annotations

import argparse
from src.cli import UsageError, add_threads_arg, apply_threads, parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("eval-rd", __doc__.split(":", 1)[1].strip())
    p.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints written by train-rvq; CKPT@F=1,LH=1 codes fewer levels from the same weights")
    p.add_argument("--labels", nargs="+", help="one label per checkpoint (default: <run folder>/<file>)")
    p.add_argument("--root", help="data root (default: each checkpoint's own)")
    p.add_argument("--split", default="val", help="split to evaluate")
    p.add_argument("--out", required=True, help="folder for rd.json, rd.md and rd.png")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_threads_arg(p, from_config=False)
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    if args.labels and len(args.labels) != len(args.checkpoints):
        raise UsageError(f"--labels: {len(args.labels)} labels for {len(args.checkpoints)} checkpoints")

    apply_threads(args.threads)
    from pathlib import Path

    from src.pipelines.rd import rd_markdown, rd_report

    result = rd_report(args.checkpoints, args.out, args.root, args.split, args.device, args.batch_size,
                       args.labels)
    print(rd_markdown(result["rows"], result["split"], result["root"]))
    out = Path(args.out)
    print(f"written: {out / 'rd.json'}, {out / 'rd.md'}, {out / 'rd.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
