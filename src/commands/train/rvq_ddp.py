"""train-rvq-ddp: train with DDP under torchrun (gloo on CPU, nccl on CUDA).

train-rvq's arguments and loop, one process per device, launched by torchrun."""
from __future__ import annotations

import argparse

from src.cli import run_command
from src.commands.train import rvq


def build_parser() -> argparse.ArgumentParser:
    """train-rvq's arguments, under this command's name."""
    return rvq.build_parser(distributed=True)


def run(args: argparse.Namespace) -> int:
    """train-rvq's run, with the process group required."""
    return rvq.run(args, distributed=True)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
