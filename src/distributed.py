"""torch.distributed in ~20 lines (after nanoGPT): on iff torchrun set RANK."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class LaunchError(RuntimeError):
    """A distributed command started the wrong way; the message says how to launch it."""


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an explicit cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available (use train.device=cpu)")
    return torch.device(name)


def setup(device_name: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ:
        return DistInfo(device=pick_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # DDP imports torch._dynamo; imported after the group exists, it keeps ~10 references to
    # it, so destroy_process_group cannot free it and gloo's threads live on into interpreter
    # teardown, where a rank was seen to abort (SIGABRT) after a finished run.
    import torch._dynamo  # noqa: F401
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world_size, device)


def teardown() -> None:
    """Destroy the process group (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def ranks_agree(module: torch.nn.Module) -> bool:
    """True when every rank holds the same parameters and buffers (compares checksums)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    values = [t.detach().double().sum() for t in module.state_dict().values()]
    mine = torch.stack(values).to(next(module.parameters()).device)
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))
