"""The quantiser's CPU kernels: the usage term with a hand-written gradient, the bf16 choices
of the training search, and the first pass of the streaming shortlist.

Each is a plain function of tensors, used by :class:`~src.models.quantizer.codebook.Codebook`;
docs/quantizer.md holds what each one measured.
"""
from __future__ import annotations

import contextlib
import typing

import torch

from src.hardware import cpu_caps


# the shortlist's first pass on CPU: torch's weight-only int8 matmul (bf16 in and out)
INT8_FIRST_PASS = hasattr(torch.ops.aten, "_weight_int8pack_mm")


def bf16_usage_grad() -> bool:
    """The usage term's gradient matmul (N x K by K x D per level) in bf16 where the CPU has bf16
    matmuls in hardware (src/hardware.py), for a regulariser's gradient rounded to 3 digits."""
    return cpu_caps().bf16


def bf16_distances() -> bool:
    """The training step's distance matmul of the residual levels (N x D by D x K) with its fp32
    inputs rounded to bf16 inside oneDNN (fp32 accumulation and output, as TF32 on GPUs), on CPUs
    with bf16 matmuls in hardware. Not level 0: trained latents sit far from the origin, where
    rounding x.e to 3 digits swaps many codes; residuals are small, and the few codes that
    change are near-ties (docs/quantizer.md). Only the training forward: encode, export, the
    stream and evaluation search in fp32."""
    return cpu_caps().bf16 and hasattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision")


@contextlib.contextmanager
def fp32_matmul_as_bf16(on: bool) -> typing.Iterator[None]:
    """While open (and ``on``), fp32 CPU matmuls round their inputs to bf16 (oneDNN's fpmath mode)."""
    if not on:
        yield
        return
    flags = torch.backends.mkldnn.matmul
    before, flags.fp32_precision = flags.fp32_precision, "bf16"
    try:
        yield
    finally:
        flags.fp32_precision = before


def first_pass_tables(embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codewords (G, K, D) -> the shortlist's first-pass codewords: each group's codewords minus
    their mean (the mean's share of x.e is the same for every code, so it drops out of a
    nearest-code search, and the products to round get smaller), on CPU in int8 with one bf16
    scale per code (torch's weight-only int8 kernel), elsewhere in bf16 (scales None)."""
    centred = embed - embed.mean(1, keepdim=True)
    # the kernel gave wrong sums for rows of 8 values (torch 2.13): only whole blocks of 32
    if INT8_FIRST_PASS and embed.device.type == "cpu" and embed.shape[-1] % 32 == 0:
        scale = centred.abs().amax(-1).clamp_min(1e-12) / 127
        return torch.round(centred / scale[..., None]).to(torch.int8), scale.to(torch.bfloat16)
    return centred.to(torch.bfloat16), None


def first_pass_products(xb: torch.Tensor, first: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """bf16 rows (G, N, D) times the first-pass codewords of :func:`first_pass_tables` -> (G, N, K)."""
    if scale is None:
        return torch.bmm(xb, first.transpose(1, 2))
    return torch.stack([torch._weight_int8pack_mm(xb[g], first[g], scale[g]) for g in range(len(first))])


def usage_forward(dists: torch.Tensor, d_min: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
    """KL(u || uniform) of the soft assignment (see :class:`UsageKL`), and what its backward needs.

    Overwrites ``dists`` (G, N, K) with the unnormalised probabilities exp(l - max l) of the
    logits l = d / (-t s) (``d_min`` (G, N): each row's smallest distance, its largest
    logit): the distances are not needed afterwards, and every pass over (G, N, K) made in
    place saves a fresh 4 bytes per entry (at 4096 rows x 1024 codes, 16 MiB a pass).
    Subtracting before dividing is also the more exact order: ``d - d_min`` is formed from
    the centred distances the row std needs anyway. Returns the loss (G,), the unnormalised
    probabilities, their row sums z (G, N, 1), the usage u (G, K) and the scale -t s (G, N, 1).
    """
    num_rows, k = dists.shape[1], dists.shape[-1]
    scale, z = dists.new_empty(dists.shape[:2] + (1,)), dists.new_empty(dists.shape[:2] + (1,))
    # By blocks of rows, so that the five passes over a block run in cache, not from memory.
    for d, lo, s, zs in zip(dists.split(_ROW_BLOCK, 1), d_min.split(_ROW_BLOCK, 1), scale.split(_ROW_BLOCK, 1),
                            z.split(_ROW_BLOCK, 1)):
        mean = d.mean(-1, keepdim=True)
        centred = d.sub_(mean)
        # The unbiased std, as ``d.std(-1)`` to float rounding; torch's std is slower on CPU.
        torch.mul(torch.linalg.vector_norm(centred, dim=-1, keepdim=True).clamp_min_(1e-8 * (k - 1) ** 0.5),
                  -temperature / (k - 1) ** 0.5, out=s)
        # (d - mean) - (d_min - mean) is exactly 0 at the nearest code, so its weight is exactly 1.
        torch.sum(centred.sub_(lo[..., None] - mean).div_(s).exp_(), -1, keepdim=True, out=zs)
    exps = dists
    usage = torch.bmm(z.reciprocal().transpose(1, 2), exps)[:, 0] / num_rows   # mean of the rows' probabilities
    return (usage * torch.log(usage * k + 1e-12)).sum(-1), exps, z, usage, scale


_ROW_BLOCK = 256   # rows per block of the usage passes: 1 MiB at 1024 codes, in a core's L2 cache


def _usage_grad_logits(grad: torch.Tensor, exps: torch.Tensor, z: torch.Tensor, usage: torch.Tensor,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """z times d loss / d logits (G, N, K), through the log, the mean over rows and the softmax,
    written into ``exps`` (the unnormalised probabilities; the caller divides by z per row), or
    with ``dtype`` into a new tensor of that type (the cast made in the same pass)."""
    scaled = usage * exps.shape[-1]
    g = grad[:, None] * (torch.log(scaled + 1e-12) + scaled / (scaled + 1e-12)) / exps.shape[1]  # dL/dp (G, K)
    mean_g = torch.bmm(exps, g[..., None]) / z                  # sum_k p g per row (G, N, 1)
    # softmax backward p (g - sum_k p g), times z, in place by blocks of rows, through one
    # reused (rows, K) buffer: a fresh temporary per block costs fresh pages (slower than the pass).
    factor = exps.new_empty(exps.shape[0], min(_ROW_BLOCK, exps.shape[1]), exps.shape[2])
    out = exps if dtype is None else torch.empty_like(exps, dtype=dtype)
    for block, o, m in zip(exps.split(_ROW_BLOCK, 1), out.split(_ROW_BLOCK, 1), mean_g.split(_ROW_BLOCK, 1)):
        f = torch.sub(g[:, None, :], m, out=factor[:, :block.shape[1]])
        # a cast in a separate pass over the cached block: torch.mul(..., out=o) of another
        # dtype made a temporary of the whole product
        block.mul_(f) if out is exps else o.copy_(f.mul_(block))
    return out


class UsageKL(torch.autograd.Function):
    """KL(u || uniform) per group of the soft assignment ``u`` of a batch's distances (G, N, K),
    with a hand-written backward: autograd's gradient (the row std held constant) to float rounding.

    Distances are standardised per row (scale-free), so ``temperature`` 0.1 puts most of a
    row's mass on its few nearest codes: ``u`` tracks the real usage, and its gradient pulls
    encoder outputs towards the codes the batch uses least. :class:`LevelLosses` computes the
    same term fused with the commitment, as training uses it.
    """

    @staticmethod
    def forward(ctx, dists: torch.Tensor, temperature: float) -> torch.Tensor:
        d = dists.detach().clone()
        loss, exps, z, usage, scale = usage_forward(d, d.min(-1).values, temperature)
        ctx.save_for_backward(exps, z, usage, scale)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        exps, z, usage, scale = ctx.saved_tensors
        return _usage_grad_logits(grad, exps, z, usage).div_(z * scale), None


class LevelLosses(torch.autograd.Function):
    """One level's commitment ``mean (x - q)^2`` (G,) and usage KL (G,), differentiated
    straight to the latents x (G, N, D); q is the (detached) codewords and the distances
    ``|e|^2 - 2 x.e`` were computed without autograd (they also give the codes).

    The training step's profile was dominated by the usage term (softmax over every code,
    the autograd passes around it, the distance matmul's backward) and then by fresh
    (N, K) and (N, D) temporaries (first touches of new pages cost more than the passes).
    Here every (N, K) pass is made in place in the distances' own memory (consumed), the
    per-row factor -2 / (-t s z) is applied to the (N, D) product instead of the (N, K)
    gradient, and the usage gradient is formed in the forward: it is linear in the
    upstream gradient (one number per group), so the forward computes it for 1 and the
    backward only scales it. The (N, K) probabilities are then free before the next level
    allocates its own distances (which reuse their memory), not held until the backward.
    Values and gradients equal autograd's (the row std held constant) to float rounding.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor, embed: torch.Tensor, dists: torch.Tensor,
                d_min: torch.Tensor, temperature: float, pick: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        diff = x - q
        flat = diff.view(diff.shape[0], -1)
        commit = torch.bmm(flat[:, None], flat[..., None]).view(-1) / flat.shape[1]   # one read, no square temporary
        if pick is not None:   # the usage of the rows ``pick`` (RVQConfig.usage_rows)
            dists, d_min = dists[:, pick], d_min[:, pick]
        usage, exps, z, u, scale = usage_forward(dists, d_min, temperature)
        grad_usage = None
        if ctx.needs_input_grad[0]:
            low = bf16_usage_grad() and x.device.type == "cpu" and x.dtype == torch.float32
            logits_grad = _usage_grad_logits(torch.ones_like(usage), exps, z, u, torch.bfloat16 if low else None)
            grad_usage = torch.bmm(logits_grad, embed.to(logits_grad.dtype)).float().mul_(-2.0 / (scale * z))
            if pick is not None:
                grad_usage = torch.zeros_like(x).index_copy_(1, pick, grad_usage)
        ctx.save_for_backward(diff, grad_usage)
        return commit, usage

    @staticmethod
    def backward(ctx, grad_commit: torch.Tensor, grad_usage: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        diff, grad_x = ctx.saved_tensors
        grad_x = grad_x.mul_(grad_usage[:, None, None])   # in place: autograd refuses a second backward
        grad_x.addcmul_(diff, grad_commit[:, None, None] * (2.0 / diff[0].numel()))
        return grad_x, None, None, None, None, None, None
