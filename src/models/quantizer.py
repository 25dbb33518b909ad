"""Residual vector quantisation with EMA codebooks, nested as in audiocraft's core_vq:

``Codebook`` (one level: EMA, data init, dead-code restart) -> ``ResidualQuantizer``
(levels) -> ``MultiStreamRVQ`` (the five streams F/LH/RH/B/FB).

Each stream has its own codebooks and id space. They are stored as a leading group axis
of each level's buffers (as vector-quantize-pytorch's grouped codebooks), so one level
of all streams is one batched matmul rather than five small ones.

All codebook state lives in registered buffers, so ``state_dict()`` is the whole
resumable state. Under torch.distributed the per-code counts and sums are all-reduced
inside the codebook before the EMA update, and dead-code replacements are drawn on rank 0
and broadcast, so every rank holds the same codebooks after every step.
"""
from __future__ import annotations

import contextlib
import typing
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from src.config import RVQConfig
from src.data import keypoints as kp
from src.hardware import cpu_caps


# Codebook.encode_shortlist's first pass on CPU: torch's weight-only int8 matmul (bf16 in and out)
_INT8_FIRST_PASS = hasattr(torch.ops.aten, "_weight_int8pack_mm")


def _bf16_usage_grad() -> bool:
    """The usage term's gradient matmul (N x K by K x D per level) in bf16 where the CPU has bf16
    matmuls in hardware (src/hardware.py), for a regulariser's gradient rounded to 3 digits."""
    return cpu_caps().bf16


def _bf16_distances() -> bool:
    """The training step's distance matmul of the residual levels (N x D by D x K) with its fp32
    inputs rounded to bf16 inside oneDNN (fp32 accumulation and output, as TF32 on GPUs), on CPUs
    with bf16 matmuls in hardware. Not level 0: trained latents sit far from the origin, where
    rounding x.e to 3 digits swapped 8-11% of a trained model's level-0 codes; residuals are
    small, and 0-0.2% of their codes changed, near-ties. Only the training forward: encode,
    export, the stream and evaluation search in fp32."""
    return cpu_caps().bf16 and hasattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision")


@contextlib.contextmanager
def _fp32_matmul_as_bf16(on: bool) -> typing.Iterator[None]:
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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def sq_distances(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """(N, D), (K, D) -> (N, K) squared euclidean distances, one matmul."""
    return x.pow(2).sum(-1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(-1)[None]


def _samples(x: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` rows drawn from ``x`` (without replacement when it has enough), with a jitter
    of 1% of the batch's own spread so that repeated draws do not start as twins.

    The jitter is scaled by the spread around the batch mean, not by the overall std:
    latents can sit far from the origin in a small cloud, and noise scaled by the offset
    would throw restarted codes out of the cloud, where they die again.
    """
    idx = torch.randperm(x.shape[0], device=x.device)[:num] if x.shape[0] >= num \
        else torch.randint(0, x.shape[0], (num,), device=x.device)
    spread = (x - x.mean(0)).std() if x.shape[0] > 1 else x.new_zeros(())
    return x[idx] + 0.01 * spread * torch.randn(num, x.shape[1], device=x.device, dtype=x.dtype)


def kmeans(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Lloyd's k-means from random samples; clusters that empty keep their previous centre."""
    centres = _samples(x, k)
    for _ in range(iters):
        assign = sq_distances(x, centres).argmin(-1)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


class Codebook(nn.Module):
    """One VQ level for ``groups`` independent codebooks of K codes (one per stream).

    Inputs are (G, N, D): group g is quantised with codebook g only. ``residual``: a level
    after the first, whose small inputs the training search may round to bf16 (``_bf16_distances``).
    """

    def __init__(self, dim: int, cfg: RVQConfig, groups: int = 1, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.size, self.decay, self.eps = cfg.codebook_size, cfg.ema_decay, cfg.laplace_eps
        self.dead_after, self.init, self.kmeans_iters = cfg.dead_after_steps, cfg.init, cfg.kmeans_iters
        self.temperature, self.usage_rows = cfg.usage_temperature, cfg.usage_rows
        if cfg.init not in ("kmeans", "sample", "random"):
            raise ValueError(f"model.rvq.init must be kmeans, sample or random, got {cfg.init!r}")
        embed = torch.randn(groups, cfg.codebook_size, dim) * dim ** -0.5
        self.register_buffer("initted", torch.tensor(cfg.init == "random"))
        self.register_buffer("embed", embed)                                      # (G, K, D)
        self.register_buffer("embed_sum", embed.clone())                          # (G, K, D)
        self.register_buffer("cluster_size", torch.ones(groups, cfg.codebook_size))
        self.register_buffer("unused_steps", torch.zeros(groups, cfg.codebook_size, dtype=torch.long))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._norms_key: tuple | None = None
        self._norms: torch.Tensor | None = None
        self._first_key: tuple | None = None
        self._first: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None

    def _embed_norms(self) -> torch.Tensor:
        """|e|^2 (G, K), recomputed only when the codebook changed (the streaming path reads
        every codebook once per chunk; recomputing the norms would double that).

        Under ``torch.compile`` the norms of the last eager call: a compiled streaming step holds
        the codebooks of the moment it was compiled (``src.streaming.compile_step``)."""
        if torch.compiler.is_compiling() and self._norms is not None:
            return self._norms
        key = (id(self.embed), self.embed._version, self.embed.device)
        if key != self._norms_key:
            self._norms, self._norms_key = self.embed.pow(2).sum(-1), key
        return self._norms

    @staticmethod
    def distances(x: torch.Tensor, embed: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Squared distances up to a per-row constant (|x|^2 is left out: it changes neither
        the nearest code nor a softmax over codes). (G, N, D), (G, K, D), (G, K) -> (G, N, K).

        Into a given output: the same values bit for bit, but torch's own allocating path of
        ``baddbmm`` took ~1.4x as long on CPU at 4096 x 1024 (a micro-benchmark, torch 2.13)."""
        out = torch.empty(x.shape[0], x.shape[1], embed.shape[1], dtype=x.dtype, device=x.device)
        return torch.baddbmm(norms[:, None, :], x, embed.transpose(1, 2), alpha=-2, out=out)

    def encode(self, x: torch.Tensor, groups: slice = slice(None)) -> torch.Tensor:
        """(G, N, D) -> (G, N) nearest code ids; with ``groups``, x holds only those groups.

        The distances are formed code-major, (G, K, N) = embed @ x^T: for a few rows (one
        streaming chunk) BLAS then streams the codebook once as a matrix-vector product,
        where x @ embed^T first repacks the whole codebook: 2x faster per level when the
        codebook is not in cache, for 1% fewer chunks/s in export at a batch of 1024.
        A slice of groups is a view of the codebooks: a group left out is never read.
        """
        norms = self._embed_norms()[groups, :, None]
        return torch.baddbmm(norms, self.embed[groups], x.transpose(1, 2), alpha=-2).argmin(1)

    def _shortlist_tables(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """What :meth:`encode_shortlist` needs besides the codebook, kept until it changes.

        The first pass's codewords: each group's codewords minus their mean (the mean's share
        of x.e is the same for every code, so it drops out of a nearest-code search, and the
        products to round get smaller), on CPU in int8 with one bf16 scale per code (a quarter
        of the fp32 bytes; torch's weight-only int8 kernel, 2x faster than bf16 for one row),
        elsewhere in bf16 (scales None). And each code's lowest id with the same codeword
        (G, K): equal codewords tie, and encode's argmin gives the first of them (a level of a
        fresh model holds 1024 zero codewords, more than any shortlist).
        """
        if torch.compiler.is_compiling() and self._first is not None:   # as in _embed_norms
            return self._first
        key = (id(self.embed), self.embed._version, self.embed.device)
        if key != self._first_key:
            centred = self.embed - self.embed.mean(1, keepdim=True)
            # the kernel gave wrong sums for rows of 8 values (torch 2.13): only whole blocks of 32
            if _INT8_FIRST_PASS and self.embed.device.type == "cpu" and self.embed.shape[-1] % 32 == 0:
                scale = centred.abs().amax(-1).clamp_min(1e-12) / 127
                first = (torch.round(centred / scale[..., None]).to(torch.int8), scale.to(torch.bfloat16))
            else:
                first = (centred.to(torch.bfloat16), None)
            ids = torch.arange(self.embed.shape[1], device=self.embed.device)
            lowest = []
            for group in self.embed:
                _, same = torch.unique(group, dim=0, return_inverse=True)
                least = torch.full_like(ids, len(ids)).scatter_reduce(0, same, ids, "amin")
                lowest.append(least[same])
            self._first, self._first_key = (*first, torch.stack(lowest)), key
        return self._first

    def encode_shortlist(self, x: torch.Tensor, groups: slice = slice(None), k: int = 16) -> torch.Tensor:
        """:meth:`encode` in two passes: approximate distances (int8 or bf16 codewords, see
        :meth:`_shortlist_tables`) pick each row's ``k`` nearest candidates, then fp32
        distances to those alone pick the code.

        The code is the fp32 nearest unless the fp32 nearest is not among the ``k`` first-pass
        nearest (an approximation error larger than the gap between candidates: counted in
        docs/streaming.md), or two fp32 distances differ in the last bits only. For the bf16 stream.
        """
        embed, norms = self.embed[groups], self._embed_norms()[groups]
        first, scale, lowest = self._shortlist_tables()
        first, xb = first[groups], x.to(torch.bfloat16).contiguous()
        if scale is None:
            prods = torch.bmm(xb, first.transpose(1, 2))                                  # (G, N, K)
        else:
            scale = scale[groups]
            prods = torch.stack([torch._weight_int8pack_mm(xb[g], first[g], scale[g]) for g in range(len(first))])
        cand = torch.sub(norms[:, None, :], prods, alpha=2).topk(k, -1, largest=False).indices  # (G, N, k)
        g, n, _ = cand.shape
        flat = cand.reshape(g, n * k)
        exact = norms.gather(1, flat).view(g, n, k) - 2 * (_lookup(embed, flat).view(g, n, k, -1) @ x[..., None]).squeeze(-1)
        code = cand.gather(2, exact.argmin(2, keepdim=True)).squeeze(2)
        return lowest[groups].gather(1, code)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(G, N) code ids -> (G, N, D) codewords; id -1 (a level the group does not code) gives 0."""
        return _lookup(self.embed, codes.clamp_min(0)) * (codes >= 0)[..., None].to(self.embed.dtype)

    def forward(self, x: torch.Tensor, active: torch.Tensor | None = None):
        """Quantise ``x`` (G, N, D); returns (codewords (detached), codes, commitment (G,), usage KL (G,)).

        ``active`` (N,) marks rows that use this level (quantizer dropout); only they count
        in the losses and the EMA statistics.
        """
        rows = x if active is None else x[:, active]
        if self.training and not bool(self.initted):
            # Every rank joins the init broadcast; a level no row uses yet starts from all rows.
            self._init_from((rows if rows.shape[1] else x).detach())
        if self.training:
            # The EMA update below rewrites the buffer in place; the usage backward needs the old values.
            embed = self.embed.clone()
            norms = embed.pow(2).sum(-1)
        else:
            embed, norms = self.embed, self._embed_norms()
        fast = (self.training and self.residual and _bf16_distances() and x.device.type == "cpu"
                and x.dtype == torch.float32)
        # no autograd: the usage term differentiates the distances itself (_LevelLosses)
        with torch.no_grad(), _fp32_matmul_as_bf16(fast):
            dists = self.distances(x, embed, norms)           # (G, N, K)
        nearest = dists.min(-1)                               # as argmin (first minimum), 2x faster on CPU
        codes = nearest.indices                               # (G, N)
        quantized = _lookup(embed, codes).detach()            # (G, N, D)
        d_rows, d_min, q_rows = (dists, nearest.values, quantized) if active is None else \
            (dists[:, active], nearest.values[:, active], quantized[:, active])
        if rows.shape[1]:
            # d_rows is consumed (overwritten) by the usage term: nothing below reads the distances.
            n = rows.shape[1]
            pick = torch.randperm(n, device=x.device)[:self.usage_rows] if 0 < self.usage_rows < n else None
            commit, usage = _LevelLosses.apply(rows, q_rows, embed, d_rows, d_min, self.temperature, pick)
        else:
            commit = usage = x.sum((1, 2)) * 0
        if self.training:
            self._ema_update(rows.detach(), codes if active is None else codes[:, active])
        return quantized, codes, commit, usage

    def usage_kl(self, dists: torch.Tensor) -> torch.Tensor:
        """KL(u || uniform) per group of the batch's soft assignment ``u`` (differentiable in x).

        Distances are standardised per row (scale-free), so ``temperature`` 0.1 puts most
        of a row's mass on its few nearest codes: ``u`` tracks the real usage, and its
        gradient pulls encoder outputs towards the codes the batch uses least.
        """
        if dists.shape[1] == 0:
            return dists.sum((1, 2)) * 0
        return _UsageKL.apply(dists, self.temperature)

    @torch.no_grad()
    def _init_from(self, x: torch.Tensor) -> None:
        make = (lambda v: kmeans(v, self.size, self.kmeans_iters)) if self.init == "kmeans" \
            else (lambda v: _samples(v, self.size))
        embed = _broadcast(torch.stack([make(group) for group in x]).contiguous())
        self.embed.copy_(embed)
        self.embed_sum.copy_(embed)
        self.cluster_size.fill_(1.0)
        self.initted.fill_(True)

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        groups, k = self.cluster_size.shape
        flat = (codes + torch.arange(groups, device=codes.device)[:, None] * k).reshape(-1)
        counts = torch.bincount(flat, minlength=groups * k).to(self.embed.dtype).view(groups, k)
        sums = torch.zeros(groups * k, x.shape[-1], dtype=self.embed.dtype, device=x.device)
        sums = sums.index_add_(0, flat, x.reshape(-1, x.shape[-1]).to(self.embed.dtype)).view_as(self.embed)
        # Sum over ranks: the EMA then sees the global batch, as one process would.
        _all_reduce(counts)
        _all_reduce(sums)
        # Warm-up of the decay (as TF's ExponentialMovingAverage): early latents move fast,
        # and a codebook lagging ~100 steps behind them leaves all but a few codes stranded.
        decay = min(self.decay, (1.0 + float(self.updates)) / (10.0 + float(self.updates)))
        self.updates.add_(1)
        self.cluster_size.lerp_(counts, 1 - decay)
        self.embed_sum.lerp_(sums, 1 - decay)
        total = self.cluster_size.sum(-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + k * self.eps) * total
        self.embed.copy_(self.embed_sum / smoothed[..., None])
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        self._restart_dead(x)

    @torch.no_grad()
    def _restart_dead(self, x: torch.Tensor) -> None:
        dead = self.unused_steps >= self.dead_after   # (G, K), the same on every rank
        if not bool(dead.any()):
            return
        # Rank 0 draws from its batch and shares, so all ranks restart to the same vectors
        # (every rank joins the broadcast, even one whose batch had no rows for this level).
        fresh = []
        for g, group_dead in enumerate(dead):
            num = int(group_dead.sum())
            if num:
                source = x[g] if x.shape[1] else self.embed[g]
                fresh.append(_samples(source, num))
        fresh = _broadcast(torch.cat(fresh).contiguous())
        self.embed[dead] = fresh
        self.embed_sum[dead] = fresh
        self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0


def _usage_forward(dists: torch.Tensor, d_min: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
    """KL(u || uniform) of the soft assignment (see ``Codebook.usage_kl``), and what its backward needs.

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
        # The unbiased std, as ``d.std(-1)`` to float rounding; torch's std is ~4x slower on CPU.
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
    # reused (rows, K) buffer: a fresh temporary per block costs fresh pages (~5x the pass).
    factor = exps.new_empty(exps.shape[0], min(_ROW_BLOCK, exps.shape[1]), exps.shape[2])
    out = exps if dtype is None else torch.empty_like(exps, dtype=dtype)
    for block, o, m in zip(exps.split(_ROW_BLOCK, 1), out.split(_ROW_BLOCK, 1), mean_g.split(_ROW_BLOCK, 1)):
        f = torch.sub(g[:, None, :], m, out=factor[:, :block.shape[1]])
        # a cast in a separate pass over the cached block: torch.mul(..., out=o) of another
        # dtype made a temporary of the whole product (4x slower)
        block.mul_(f) if out is exps else o.copy_(f.mul_(block))
    return out


class _UsageKL(torch.autograd.Function):
    """``Codebook.usage_kl`` as a function of the distances, with a hand-written backward: the
    same value, and autograd's gradient (the row std held constant) to float rounding."""

    @staticmethod
    def forward(ctx, dists: torch.Tensor, temperature: float) -> torch.Tensor:
        d = dists.detach().clone()
        loss, exps, z, usage, scale = _usage_forward(d, d.min(-1).values, temperature)
        ctx.save_for_backward(exps, z, usage, scale)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        exps, z, usage, scale = ctx.saved_tensors
        return _usage_grad_logits(grad, exps, z, usage).div_(z * scale), None


class _LevelLosses(torch.autograd.Function):
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
        usage, exps, z, u, scale = _usage_forward(dists, d_min, temperature)
        grad_usage = None
        if ctx.needs_input_grad[0]:
            low = _bf16_usage_grad() and x.device.type == "cpu" and x.dtype == torch.float32
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


class _StraightThrough(torch.autograd.Function):
    """The value of ``value + (x - x.detach())`` (``value`` itself) and its gradient (the
    identity to x), without the two (G, N, D) temporaries of writing it so."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return value.clone() if value.requires_grad else value.view_as(value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


def _runs(on: list[bool]) -> list[slice]:
    """The runs of consecutive True entries, as slices: [F, T, T, T, F] -> [slice(1, 4)]."""
    starts = [i for i, v in enumerate(on) if v and (i == 0 or not on[i - 1])]
    ends = [i + 1 for i, v in enumerate(on) if v and (i + 1 == len(on) or not on[i + 1])]
    return [slice(a, b) for a, b in zip(starts, ends)]


def _lookup(embed: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Codewords of ``codes`` (G, N) in ``embed`` (G, K, D) -> (G, N, D).

    Whole rows by index_select (~5x faster on CPU than a gather of every element)."""
    groups, k, dim = embed.shape
    rows = codes + torch.arange(0, groups * k, k, device=codes.device)[:, None] if groups > 1 else codes
    return embed.reshape(groups * k, dim).index_select(0, rows.reshape(-1)).view(*codes.shape, dim)


@dataclass
class QuantizedResult:
    """Output of a quantiser: ``quantized`` carries the straight-through gradient to the input."""

    quantized: torch.Tensor      # (..., D)
    codes: torch.Tensor          # (..., levels) long
    commit_loss: torch.Tensor    # (G,) or (S,): per group / stream, mean over levels
    usage_loss: torch.Tensor     # (G,) or (S,)


class ResidualQuantizer(nn.Module):
    """Levels of codebooks, each quantising what the previous ones left over.

    ``group_levels`` (G,) caps the levels of each group: past its cap a group's codeword is
    0, its code is -1 and it adds nothing to the losses (a stream coded at a lower rate).
    """

    def __init__(self, dim: int, cfg: RVQConfig, groups: int = 1, group_levels: list[int] | None = None):
        super().__init__()
        if cfg.distance not in ("euclidean", "cosine"):
            raise ValueError(f"model.rvq.distance must be euclidean or cosine, got {cfg.distance!r}")
        self.cosine = cfg.distance == "cosine"
        self.levels = nn.ModuleList(Codebook(dim, cfg, groups, residual=i > 0) for i in range(cfg.levels))
        caps = torch.tensor(group_levels if group_levels is not None else [cfg.levels] * groups)
        self.register_buffer("group_levels", caps.clamp(1, cfg.levels), persistent=False)
        self.caps = self.group_levels.tolist()
        # > 0: encode picks codes from this many candidates of an int8 or bf16 first pass, rescored
        # in fp32 (Codebook.encode_shortlist); set on the bf16 streaming copy only, never trained with.
        self.shortlist = 0

    @torch.no_grad()
    def refit(self, z: torch.Tensor, iters: int) -> None:
        """Replace every level's codebooks by residual k-means of the latents ``z`` (G, N, D) (the
        EMA state set to match, as if each code had been picked by its cluster's rows). The EMA
        codebooks trail latents that keep moving; fitted ones code the same bits far closer."""
        residual = self.target(z).clone()
        for i, level in enumerate(self.levels):
            for g in range(z.shape[0]):
                if self.caps[g] <= i:
                    continue
                rows = residual[g]
                book = kmeans(rows, level.size, iters)
                assign = sq_distances(rows, book).argmin(-1)
                counts = torch.bincount(assign, minlength=level.size).to(book.dtype)
                level.embed[g], level.cluster_size[g] = book, counts
                level.embed_sum[g] = book * counts[:, None]
                level.unused_steps[g] = 0
                residual[g] = rows - book[assign]
            level.initted.fill_(True)
        for buffer in self.buffers():   # ranks drew their own k-means starts: all take rank 0's codebooks
            _broadcast(buffer)

    def target(self, z: torch.Tensor) -> torch.Tensor:
        """(G, N, D) latents -> what the levels' codewords add up to approximate: the latents, or
        in cosine mode the latents on the unit sphere (the residual levels stay euclidean)."""
        return nn.functional.normalize(z, dim=-1) if self.cosine else z

    def forward(self, z: torch.Tensor, num_active: torch.Tensor | None = None) -> QuantizedResult:
        """z (G, N, D) -> quantized (G, N, D). ``num_active`` (N,) levels per row (quantizer dropout).

        Each level's codeword is detached and one straight-through estimator is applied at
        the end (the EnCodec/audiocraft fix), with the value of ``out + (x - x.detach())``:
        exactly the sum of codewords, bit for bit equal to ``decode(codes)``.
        """
        x = self.target(z)
        residual, out = x, None
        codes, commits, usages = [], [], []
        for i, level in enumerate(self.levels):
            active = None if num_active is None else num_active > i
            q, c, commit, usage = level(residual, active)
            if active is not None:
                q = q * active[None, :, None].to(q.dtype)
            on = self.group_levels > i
            if not bool(on.all()):
                q, c = q * on[:, None, None].to(q.dtype), torch.where(on[:, None], c, -1)
                commit, usage = commit * on, usage * on
            if i + 1 < len(self.levels):
                residual = residual - q
            out = q if out is None else out + q   # 0 + q is q: the first level needs no zeros
            codes.append(c)
            commits.append(commit)
            usages.append(usage)
        depth = self.group_levels.to(x.dtype)
        return QuantizedResult(_StraightThrough.apply(out, x), torch.stack(codes, -1),
                               torch.stack(commits).sum(0) / depth, torch.stack(usages).sum(0) / depth)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (G, N, D) -> codes (G, N, levels); the export and streaming path."""
        residual, codes, caps = self.target(z), [], self.caps
        for i, level in enumerate(self.levels):
            # Only the groups that code this level are compared with its codebooks (F and FB
            # code 1 of the default 2 levels: 2 of 5 codebooks of level 2 are never read).
            code = torch.full(residual.shape[:2], -1, dtype=torch.long, device=residual.device)
            for run in _runs([cap > i for cap in caps]):
                code[run] = (level.encode_shortlist(residual[run], run, self.shortlist) if self.shortlist
                             else level.encode(residual[run], run))
            codes.append(code)
            if i + 1 < len(self.levels):
                residual = residual - level.decode(code)
        return torch.stack(codes, -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (G, N, levels) -> (G, N, D), summing codewords in level order as the forward does."""
        embed = self.levels[0].embed
        out = torch.zeros(*codes.shape[:2], embed.shape[-1], dtype=embed.dtype, device=codes.device)
        for i, level in enumerate(self.levels[:codes.shape[-1]]):
            out = out + level.decode(codes[..., i])
        return out

    approximate = decode   # codewords live in the latent space itself (cf. ResidualFSQ)


class ResidualFSQ(nn.Module):
    """Residual finite scalar quantisation (FSQ, Mentzer et al. 2023; residual levels as
    vector-quantize-pytorch's ResidualFSQ): an implicit codebook in place of learned codewords.

    Per group, the latent (D) is projected to ``len(grid)`` numbers; level i rounds what the
    levels before it left over on a fixed grid of ``grid[j]`` values per number, at a scale
    of ``(grid - 1)^-i``; the sum is projected back to D. A code is the mixed-radix index of
    one level's rounded numbers: ``prod(grid)`` codes per token, none of which can die, so
    more bits per token cost no codebook state, no usage term and no distance matmul.
    The interface is :class:`ResidualQuantizer`'s; the losses it returns are zero.
    """

    def __init__(self, dim: int, cfg: RVQConfig, groups: int = 1, group_levels: list[int] | None = None):
        super().__init__()
        grid = torch.tensor(cfg.fsq_grid, dtype=torch.long)
        if not len(grid) or int(grid.prod()) != cfg.codebook_size:
            raise ValueError(f"model.rvq.fsq_levels {cfg.fsq_grid} must multiply to model.rvq.codebook_size "
                             f"{cfg.codebook_size}")
        d = len(grid)
        self.num_levels = cfg.levels
        self.project_in = nn.Parameter(torch.randn(groups, dim, d) * dim ** -0.5)
        self.bias_in = nn.Parameter(torch.zeros(groups, d))
        self.project_out = nn.Parameter(torch.randn(groups, d, dim) * d ** -0.5)
        self.bias_out = nn.Parameter(torch.zeros(groups, dim))
        caps = torch.tensor(group_levels if group_levels is not None else [cfg.levels] * groups)
        self.register_buffer("group_levels", caps.clamp(1, cfg.levels), persistent=False)
        self.caps = self.group_levels.tolist()
        basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), grid[:-1]]), 0)
        self.register_buffer("grid", grid, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        # FSQ's bound, tanh(u + shift) * half_l - offset, rounds to the L integers -(L // 2) .. (L - 1) // 2
        half_l = (grid.double() - 1) * (1 + 1e-3) / 2
        offset = (grid % 2 == 0).double() * 0.5
        for name, value in (("half_l", half_l), ("offset", offset), ("shift", torch.atanh(offset / half_l)),
                            ("half_w", (grid // 2).double())):
            self.register_buffer(name, value.float(), persistent=False)
        # Each level's step relative to the first: the residual after rounding fits the next grid.
        scales = (grid.double() - 1)[None] ** -torch.arange(cfg.levels, dtype=torch.double)[:, None]
        self.register_buffer("scales", scales.float(), persistent=False)   # (levels, d)
        # Codes seen per level (training batches), for the health report as the EMA codebooks'.
        self.register_buffer("unused_steps", torch.zeros(cfg.levels, groups, cfg.codebook_size, dtype=torch.long))

    def target(self, z: torch.Tensor) -> torch.Tensor:
        """(G, N, D) latents -> (G, N, d): what the levels' rounded numbers add up to approximate."""
        return torch.baddbmm(self.bias_in[:, None], z, self.project_in)

    def _round(self, u: torch.Tensor, straight_through: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """FSQ's bound and round of (G, N, d) -> values in [-1, 1] (with the identity gradient to
        ``u``'s bounded value when ``straight_through``) and codes (G, N)."""
        bounded = torch.tanh(u + self.shift) * self.half_l - self.offset
        rounded = bounded.round()
        if straight_through:
            rounded = _StraightThrough.apply(rounded.detach(), bounded)
        digits = rounded.detach() + self.half_w
        return rounded / self.half_w, (digits.long() * self.basis).sum(-1)

    def _values(self, codes: torch.Tensor, level: int) -> torch.Tensor:
        """(G, N) codes of one level -> (G, N, d) their scaled grid values; code -1 gives 0."""
        digits = codes.clamp_min(0)[..., None] // self.basis % self.grid
        return (digits - self.half_w) / self.half_w * self.scales[level] * (codes >= 0)[..., None]

    def _project_out(self, v: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias_out[:, None], v, self.project_out)

    def forward(self, z: torch.Tensor, num_active: torch.Tensor | None = None) -> QuantizedResult:
        """z (G, N, D) -> quantized (G, N, D), codes (G, N, levels), zero losses (G,)."""
        residual = self.target(z)
        out = torch.zeros_like(residual)
        codes = []
        for i in range(self.num_levels):
            if i >= max(self.caps):   # no group codes this level (the face: 1 of 2)
                codes.append(torch.full(residual.shape[:2], -1, dtype=torch.long, device=z.device))
                continue
            values, code = self._round(residual / self.scales[i])
            on = (self.group_levels > i)[:, None]
            if num_active is not None:
                on = on & (num_active > i)[None]
            values = values * self.scales[i] * on[..., None].to(values.dtype)
            code = torch.where(on, code, -1)
            residual = residual - values.detach()
            out = out + values   # the same values as decode(codes), bit for bit (tested)
            codes.append(code)
        codes = torch.stack(codes, -1)
        if self.training:
            self._count(codes)
        zero = z.new_zeros(z.shape[0])
        return QuantizedResult(self._project_out(out), codes, zero, zero)

    @torch.no_grad()
    def _count(self, codes: torch.Tensor) -> None:
        used = torch.zeros_like(self.unused_steps, dtype=torch.bool)
        for i in range(self.num_levels):
            c = codes[..., i]
            coded = c >= 0
            g = torch.arange(c.shape[0], device=c.device)[:, None].expand_as(c)
            used[i][g[coded], c[coded]] = True
        used = _all_reduce(used.to(torch.int32)) > 0
        self.unused_steps.add_(1).masked_fill_(used, 0)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (G, N, D) -> codes (G, N, levels); rounding only, no codebook is read."""
        residual, codes = self.target(z), []
        for i in range(self.num_levels):
            if i >= max(self.caps):
                codes.append(torch.full(residual.shape[:2], -1, dtype=torch.long, device=z.device))
                continue
            _, code = self._round(residual / self.scales[i], straight_through=False)
            code = torch.where((self.group_levels > i)[:, None], code, -1)
            residual = residual - self._values(code, i)
            codes.append(code)
        return torch.stack(codes, -1)

    def approximate(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (G, N, k) -> (G, N, d): the first k levels' values, in :meth:`target`'s space."""
        return sum((self._values(codes[..., i], i) for i in range(codes.shape[-1])),
                   torch.zeros(*codes.shape[:2], len(self.grid), device=codes.device))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (G, N, levels) -> (G, N, D)."""
        return self._project_out(self.approximate(codes))


class MultiStreamRVQ(nn.Module):
    """A residual quantiser whose groups are the five streams (own codebooks, own id space).

    Each stream codes ``cfg.stream_levels[stream]`` levels; its codes past those are -1.
    The streams of ``cfg.fsq_streams`` are quantised by :class:`ResidualFSQ` (``self.fsq``),
    the others by the EMA codebooks of :class:`ResidualQuantizer` (``self.rvq``).

    With ``splits`` > 1 each stream's latent is cut into that many parts, each quantised by
    codebooks of its own (a product of residual quantisers): group ``s * splits + p`` holds
    part p of stream s. A stream's codes are level-major, code ``level * splits + p``, so the
    first ``k * splits`` codes are the first k levels of every part.
    """

    def __init__(self, dim: int, cfg: RVQConfig):
        super().__init__()
        if cfg.splits < 1 or dim % cfg.splits:
            raise ValueError(f"model.rvq.splits must be >= 1 and divide model.latent_dim={dim}, got {cfg.splits}")
        self.num_levels, self.codebook_size, self.splits = cfg.levels, cfg.codebook_size, cfg.splits
        self.codes_per_stream = cfg.codes_per_stream
        names = [name for name in kp.STREAM_NAMES for _ in range(cfg.splits)]     # per group
        levels = [cfg.stream_codes(name) // cfg.splits for name in names]
        fsq = [name in cfg.fsq_streams for name in names]
        self.rvq = self.fsq = None
        self._parts: list[tuple[str, list[int]]] = []   # (attribute, its groups)
        for name, kind, groups in (("rvq", ResidualQuantizer, [g for g, f in enumerate(fsq) if not f]),
                                   ("fsq", ResidualFSQ, [g for g, f in enumerate(fsq) if f])):
            if groups:
                setattr(self, name, kind(dim // cfg.splits, cfg, len(groups), [levels[g] for g in groups]))
                self._parts.append((name, groups))
        order = [g for _, groups in self._parts for g in groups]
        # Results of the parts, concatenated, are put back in group order by this index (None: in order).
        self.register_buffer("order", None if order == sorted(order) else torch.tensor(order).argsort(),
                             persistent=False)

    def _each(self, fn: typing.Callable[[nn.Module, torch.Tensor], torch.Tensor], x: torch.Tensor,
              *more: torch.Tensor) -> torch.Tensor:
        """``fn(quantizer, x[its groups], ...)`` for each quantiser, back in group order: (G, ...)."""
        if len(self._parts) == 1:
            return fn(getattr(self, self._parts[0][0]), x, *more)
        return self._in_order([fn(getattr(self, name), x[groups], *(m[groups] for m in more))
                               for name, groups in self._parts])

    def _in_order(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The quantisers' results (their groups' rows, in ``_parts`` order) -> (G, ...) in group order."""
        out = torch.cat(parts)
        return out if self.order is None else out[self.order]

    def codebook(self, stream: str, code: int) -> dict[str, torch.Tensor]:
        """The buffers (views) behind one of a stream's codes per chunk, e.g. for health reports."""
        level, part = divmod(code, self.splits)
        g = kp.STREAM_NAMES.index(stream) * self.splits + part
        name, groups = next((name, groups) for name, groups in self._parts if g in groups)
        g = groups.index(g)
        if name == "fsq":   # an implicit codebook: no codewords, no restarts
            return {"unused_steps": self.fsq.unused_steps[level, g], "dead_after": None}
        cb = self.rvq.levels[level]
        return {"embed": cb.embed[g], "cluster_size": cb.cluster_size[g], "unused_steps": cb.unused_steps[g],
                "dead_after": cb.dead_after}

    def refit(self, z: torch.Tensor, iters: int) -> None:
        """The EMA codebooks refitted to the latents ``z`` (N, S, D) by residual k-means (FSQ has none)."""
        if self.rvq is not None:
            groups = dict(self._parts)["rvq"]
            self.rvq.refit(self._groups(z)[groups], iters)

    def _groups(self, z: torch.Tensor) -> torch.Tensor:
        """(N, S, D) -> (S * splits, N, D / splits) fp32."""
        n, s, d = z.shape
        return z.float().reshape(n, s * self.splits, d // self.splits).transpose(0, 1).contiguous()

    def _streams(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`_groups`: (S * splits, N, D / splits) -> (N, S, D)."""
        g, n, d = x.shape
        return x.transpose(0, 1).reshape(n, g // self.splits, d * self.splits)

    def _stream_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(S * splits, N, levels) -> (N, S, levels * splits), level-major."""
        g, n, levels = codes.shape
        codes = codes.view(g // self.splits, self.splits, n, levels).permute(2, 0, 3, 1)  # (N, S, levels, splits)
        return codes.reshape(n, -1, levels * self.splits)

    def forward(self, z: torch.Tensor, num_active: torch.Tensor | None = None) -> QuantizedResult:
        """z (N, S, D) -> quantized (N, S, D), codes (N, S, codes_per_stream), per-stream losses (S,).

        Always fp32, also under autocast: bf16 distances would pick wrong nearest codes (the
        training search of residual levels rounds only its inputs: ``_bf16_distances``).
        """
        with torch.autocast(z.device.type, enabled=False):
            x = self._groups(z)
            parts = [getattr(self, name)(x if len(self._parts) == 1 else x[groups], num_active)
                     for name, groups in self._parts]
        r = parts[0] if len(parts) == 1 else QuantizedResult(*(
            self._in_order([getattr(p, f) for p in parts]) for f in ("quantized", "codes", "commit_loss", "usage_loss")))
        commit, usage = (t.view(-1, self.splits).mean(1) for t in (r.commit_loss, r.usage_loss))
        return QuantizedResult(self._streams(r.quantized), self._stream_codes(r.codes), commit, usage)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, S, D) -> codes (N, S, codes_per_stream)."""
        with torch.autocast(z.device.type, enabled=False):
            return self._stream_codes(self._each(lambda q, x: q.encode(x), self._groups(z)))

    @torch.no_grad()
    def encode_with_residuals(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (N, S, codes_per_stream) and the norm of the stream's target (the latent, or
        FSQ's projection of it) left after each level, relative to the target's (N, S, levels):
        the exact error of decoding the first k levels, as adaptive depth uses them."""
        codes = self.encode(z)
        with torch.autocast(z.device.type, enabled=False):
            groups = self._group_codes(codes)

            def squares(q: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
                """|target|^2 and |target - first k levels|^2 per group and row: (g, N, 1 + levels)."""
                t = q.target(x)
                left = [(t - q.approximate(c[..., :k])).square().sum(-1) for k in range(1, self.num_levels + 1)]
                return torch.stack([t.square().sum(-1)] + left, -1)

            sq = self._each(squares, self._groups(z), groups)
        g, n, m = sq.shape
        norms = sq.view(g // self.splits, self.splits, n, m).sum(1).sqrt().transpose(0, 1)  # (N, S, 1 + levels)
        return codes, norms[..., 1:] / norms[..., :1].clamp_min(1e-8)

    def _group_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`_stream_codes` for the first k levels: (N, S, k * splits) -> (S * splits, N, k)."""
        n, s, m = codes.shape
        if m % self.splits:
            raise ValueError(f"decode needs whole levels: {m} codes per stream, {self.splits} parts per level")
        groups = codes.reshape(n, s, m // self.splits, self.splits).permute(1, 3, 0, 2)  # (S, splits, N, k)
        return groups.reshape(s * self.splits, n, -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, S, k * splits) -> (N, S, D): the first k levels of every part."""
        return self._streams(self._each(lambda q, c: q.decode(c), self._group_codes(codes)))
