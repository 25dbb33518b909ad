"""verify-overfit16: sanity check: overfit 16 sequences, exit 0 if recon <= 0.2x.

Train on 16 sequences and check the reconstruction loss falls to <= 0.2x."""
from __future__ import annotations

import argparse
import json
import tempfile

from src.cli import add_threads_arg, parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("verify-overfit16", __doc__.split(":", 1)[1].strip() +
               " Prints one JSON line; exit status 0 only when the check passes.")
    p.add_argument("--root", help="CSL-Daily-layout folder (default: a fresh synthetic signer set)")
    p.add_argument("--config", default="configs/overfit16.yaml", help="YAML config of the overfit run")
    p.add_argument("--num", type=int, default=16, help="number of training sequences")
    add_threads_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    from src.config import load_config
    from src.tools.synth import write_synthetic_dataset
    from src.train.overfit import overfit_check

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = f"{tmp}/synthetic"
            # Lengths like the real sample's (median ~100 frames) keep the check under 3 minutes.
            write_synthetic_dataset(root, num=2 * args.num, seed=0, min_frames=60, max_frames=150)
        threads = [f"threads={args.threads}"] if args.threads is not None else []
        cfg = load_config(args.config, [f"data.root={root}", f"save_path={tmp}/runs", *args.overrides, *threads])
        result = overfit_check(cfg, args.num)
    result.pop("run_dir")
    print(json.dumps(result))
    return 0 if result["pass"] else 1


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
