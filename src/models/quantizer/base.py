"""What every quantiser of the package offers, and the small pieces they share.

A quantiser maps latents (G, N, D) of G groups (streams, or parts of streams) to codes and
back; :class:`Quantizer` is that interface (:class:`~.residual.ResidualQuantizer` with EMA
codebooks, :class:`~.fsq.ResidualFSQ` on a fixed grid). Under torch.distributed the codebook
statistics are all-reduced and restarts broadcast from rank 0 (``all_reduce``, ``broadcast``).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class QuantizedResult:
    """Output of a quantiser: ``quantized`` carries the straight-through gradient to the input."""

    quantized: torch.Tensor      # (..., D)
    codes: torch.Tensor          # (..., levels) long
    commit_loss: torch.Tensor    # (G,) or (S,): per group / stream, mean over levels
    usage_loss: torch.Tensor     # (G,) or (S,)


class Quantizer(typing.Protocol):
    """The interface of a group quantiser (``MultiStreamRVQ`` holds one or two of them)."""

    caps: list[int]   # levels coded per group

    def target(self, z: torch.Tensor) -> torch.Tensor:
        """(G, N, D) latents -> what the levels approximate (the latent, or a projection of it)."""

    def __call__(self, z: torch.Tensor, num_active: torch.Tensor | None = None) -> QuantizedResult:
        """The training and evaluation forward: quantized (G, N, D), codes (G, N, levels), losses (G,)."""

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """(G, N, D) -> codes (G, N, levels); -1 where a group does not code a level."""

    def approximate(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (G, N, k) -> the first k levels' sum in :meth:`target`'s space."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (G, N, k) -> latents (G, N, D)."""


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    if distributed():
        dist.all_reduce(t)
    return t


def broadcast(t: torch.Tensor) -> torch.Tensor:
    if distributed():
        dist.broadcast(t, src=0)
    return t


class StraightThrough(torch.autograd.Function):
    """The value of ``value + (x - x.detach())`` (``value`` itself) and its gradient (the
    identity to x), without the two (G, N, D) temporaries of writing it so."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return value.clone() if value.requires_grad else value.view_as(value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


def deeper(left: torch.Tensor, target: torch.Tensor, threshold: torch.Tensor, splits: int) -> torch.Tensor:
    """Adaptive depth: the rows (G, N) whose residual ``left`` (G, N, d) is still at least
    ``threshold`` (G,) of the norm of ``target`` (G, N, d), i.e. that code the next level.

    With split latents (``splits`` consecutive groups per stream) the parts of a stream decide
    together, on the stream's whole residual, so that a chunk keeps whole levels."""
    left, whole = left.square().sum(-1), target.square().sum(-1)
    if splits > 1:
        g, n = left.shape
        left, whole = (t.view(g // splits, splits, n).sum(1).repeat_interleave(splits, 0) for t in (left, whole))
    return left >= threshold.square()[:, None] * whole


def runs(on: list[bool]) -> list[slice]:
    """The runs of consecutive True entries, as slices: [F, T, T, T, F] -> [slice(1, 4)]."""
    starts = [i for i, v in enumerate(on) if v and (i == 0 or not on[i - 1])]
    ends = [i + 1 for i, v in enumerate(on) if v and (i + 1 == len(on) or not on[i + 1])]
    return [slice(a, b) for a, b in zip(starts, ends)]


def lookup(embed: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Codewords of ``codes`` (G, N) in ``embed`` (G, K, D) -> (G, N, D).

    Whole rows by index_select, not a gather of every element (docs/quantizer.md)."""
    groups, k, dim = embed.shape
    rows = codes + torch.arange(0, groups * k, k, device=codes.device)[:, None] if groups > 1 else codes
    return embed.reshape(groups * k, dim).index_select(0, rows.reshape(-1)).view(*codes.shape, dim)
