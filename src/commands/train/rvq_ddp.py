"""train-rvq-ddp: the same training under torchrun with DDP (gloo on CPU, nccl on CUDA)."""
from __future__ import annotations

from src.commands.train.rvq import main as train_main


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, distributed=True)


if __name__ == "__main__":
    raise SystemExit(main())
