"""train-rvq: train the multi-stream RVQ tokenizer (one process)."""
from __future__ import annotations

import argparse
import sys

from src.cli import UsageError, add_config_args, add_threads_arg, config_from_args, parser, run_command


def build_parser(distributed: bool = False) -> argparse.ArgumentParser:
    """The command's arguments (train-rvq-ddp's with ``distributed``)."""
    name = "train-rvq-ddp" if distributed else "train-rvq"
    p = parser(name, __doc__.split(":", 1)[1].strip() if not distributed else
               "train the tokenizer with DDP; launch under torchrun --nproc_per_node=N")
    add_config_args(p)
    p.add_argument("--checkpoint", help="resume exactly from this checkpoint (ckpt_last.pt of a run)")
    p.add_argument("--extend-epochs", type=int, default=0, metavar="N",
                   help="with --checkpoint: train N epochs past it, the learning rate going from its value "
                        "there down to the floor on a cosine (a finished run stays at the floor); "
                        "train.epochs becomes the checkpoint's epoch + N")
    p.add_argument("--root", help="data root in the CSL-Daily layout (replaces data.root)")
    add_threads_arg(p)
    return p


def run(args: argparse.Namespace, distributed: bool = False) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    if args.extend_epochs < 0 or (args.extend_epochs and not args.checkpoint):
        raise UsageError("--extend-epochs N needs N >= 1 and --checkpoint (the run to extend)")
    from src.train.loop import NonFiniteLoss, train

    try:
        run_dir = train(config_from_args(args), args.checkpoint, require_distributed=distributed,
                        extend_epochs=args.extend_epochs)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if run_dir is not None:
        print(f"run folder: {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
