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

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from src.config import RVQConfig
from src.data import keypoints as kp


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

    Inputs are (G, N, D): group g is quantised with codebook g only.
    """

    def __init__(self, dim: int, cfg: RVQConfig, groups: int = 1):
        super().__init__()
        self.size, self.decay, self.eps = cfg.codebook_size, cfg.ema_decay, cfg.laplace_eps
        self.dead_after, self.init, self.kmeans_iters = cfg.dead_after_steps, cfg.init, cfg.kmeans_iters
        self.temperature = cfg.usage_temperature
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

    def _embed_norms(self) -> torch.Tensor:
        """|e|^2 (G, K), recomputed only when the codebook changed (the streaming path reads
        every codebook once per chunk; recomputing the norms would double that)."""
        key = (id(self.embed), self.embed._version, self.embed.device)
        if key != self._norms_key:
            self._norms, self._norms_key = self.embed.pow(2).sum(-1), key
        return self._norms

    @staticmethod
    def distances(x: torch.Tensor, embed: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Squared distances up to a per-row constant (|x|^2 is left out: it changes neither
        the nearest code nor a softmax over codes). (G, N, D), (G, K, D), (G, K) -> (G, N, K)."""
        return torch.baddbmm(norms[:, None, :], x, embed.transpose(1, 2), alpha=-2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(G, N, D) -> (G, N) nearest code ids.

        The distances are formed code-major, (G, K, N) = embed @ x^T: for a few rows (one
        streaming chunk) BLAS then streams the codebook once as a matrix-vector product,
        where x @ embed^T first repacks the whole codebook: 2x faster per level when the
        codebook is not in cache, for 1% fewer chunks/s in export at a batch of 1024.
        """
        norms = self._embed_norms()[:, :, None]
        return torch.baddbmm(norms, self.embed, x.transpose(1, 2), alpha=-2).argmin(1)

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
        with torch.no_grad():  # the usage term differentiates the distances itself (_UsageKLFromLatents)
            dists = self.distances(x, embed, norms)           # (G, N, K)
        codes = dists.min(-1).indices                         # (G, N); as argmin (first minimum), 2x faster on CPU
        quantized = _lookup(embed, codes).detach()            # (G, N, D)
        d_rows, q_rows = (dists, quantized) if active is None else (dists[:, active], quantized[:, active])
        commit = (rows - q_rows).pow(2).mean((1, 2)) if rows.shape[1] else x.sum((1, 2)) * 0
        usage = _UsageKLFromLatents.apply(rows, embed, d_rows, self.temperature) if rows.shape[1] \
            else x.sum((1, 2)) * 0
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


def _usage_forward(dists: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
    """KL(u || uniform) of the soft assignment (see ``Codebook.usage_kl``), and what its backward needs."""
    scale = _row_std(dists).clamp_min(1e-8) * -temperature     # (G, N, 1)
    # d / (-t s) equals -d / (t s) bit for bit (division rounds the magnitude; the sign is exact)
    probs = torch.softmax(dists / scale, dim=-1)                # (G, N, K)
    usage = probs.mean(1)                                       # (G, K)
    return (usage * torch.log(usage * dists.shape[-1] + 1e-12)).sum(-1), probs, usage, scale


def _usage_grad_logits(grad: torch.Tensor, probs: torch.Tensor, usage: torch.Tensor) -> torch.Tensor:
    """d loss / d logits (G, N, K): through the log, the mean over rows and the softmax."""
    scaled = usage * probs.shape[-1]
    g = grad[:, None] * (torch.log(scaled + 1e-12) + scaled / (scaled + 1e-12)) / probs.shape[1]  # dL/dp (G, K)
    out = g[:, None, :] - torch.bmm(probs, g[..., None])        # softmax backward: p (g - sum_k p g)
    return out.mul_(probs)


class _UsageKL(torch.autograd.Function):
    """``Codebook.usage_kl`` as a function of the distances, with a hand-written backward: the
    same value, and autograd's gradient to float rounding in fewer passes over (G, N, K)."""

    @staticmethod
    def forward(ctx, dists: torch.Tensor, temperature: float) -> torch.Tensor:
        loss, probs, usage, scale = _usage_forward(dists, temperature)
        ctx.save_for_backward(probs, usage, scale)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        probs, usage, scale = ctx.saved_tensors
        return _usage_grad_logits(grad, probs, usage).div_(scale), None


class _UsageKLFromLatents(torch.autograd.Function):
    """The same loss, differentiated straight to the latents x (G, N, D) of distances
    ``|e|^2 - 2 x.e`` that were computed without autograd (they also give the codes).

    The training step's profile was dominated by this term (softmax over every code, the
    autograd passes around it, the distance matmul's backward). Here the per-row factor
    -2 / (-t s) is applied to the (N, D) product instead of the (N, K) gradient, and no
    autograd graph of the distances is kept: the gradient equals autograd's to float rounding.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, embed: torch.Tensor, dists: torch.Tensor, temperature: float) -> torch.Tensor:
        loss, probs, usage, scale = _usage_forward(dists, temperature)
        ctx.save_for_backward(probs, usage, scale, embed)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        probs, usage, scale, embed = ctx.saved_tensors
        grad_x = torch.bmm(_usage_grad_logits(grad, probs, usage), embed)   # (G, N, D)
        return grad_x.mul_(-2.0 / scale), None, None, None


def _row_std(d: torch.Tensor) -> torch.Tensor:
    """Standard deviation over the last axis (unbiased, kept as (..., 1)), as ``d.std(-1)`` to
    float rounding: two passes (centre, then a norm) run ~4x faster on CPU than torch's std."""
    centred = d - d.mean(-1, keepdim=True)
    return torch.linalg.vector_norm(centred, dim=-1, keepdim=True) / (d.shape[-1] - 1) ** 0.5


def _lookup(embed: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Codewords of ``codes`` (G, N) in ``embed`` (G, K, D) -> (G, N, D)."""
    return torch.gather(embed, 1, codes[..., None].expand(-1, -1, embed.shape[-1]))


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
        self.levels = nn.ModuleList(Codebook(dim, cfg, groups) for _ in range(cfg.levels))
        caps = torch.tensor(group_levels if group_levels is not None else [cfg.levels] * groups)
        self.register_buffer("group_levels", caps.clamp(1, cfg.levels), persistent=False)

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        # Cosine mode puts the latent on the unit sphere; residual levels stay euclidean.
        return nn.functional.normalize(z, dim=-1) if self.cosine else z

    def forward(self, z: torch.Tensor, num_active: torch.Tensor | None = None) -> QuantizedResult:
        """z (G, N, D) -> quantized (G, N, D). ``num_active`` (N,) levels per row (quantizer dropout).

        Each level's codeword is detached and one straight-through estimator is applied at
        the end (the EnCodec/audiocraft fix), written as ``out + (x - x.detach())`` so the
        value is exactly the sum of codewords, bit for bit equal to ``decode(codes)``.
        """
        x = self.prepare(z)
        residual, out = x, torch.zeros_like(x)
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
            residual = residual - q
            out = out + q
            codes.append(c)
            commits.append(commit)
            usages.append(usage)
        depth = self.group_levels.to(x.dtype)
        return QuantizedResult(out + (x - x.detach()), torch.stack(codes, -1),
                               torch.stack(commits).sum(0) / depth, torch.stack(usages).sum(0) / depth)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (G, N, D) -> codes (G, N, levels); the export and streaming path."""
        residual, codes = self.prepare(z), []
        for i, level in enumerate(self.levels):
            codes.append(torch.where((self.group_levels > i)[:, None], level.encode(residual), -1))
            residual = residual - level.decode(codes[-1])
        return torch.stack(codes, -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (G, N, levels) -> (G, N, D), summing codewords in level order as the forward does."""
        embed = self.levels[0].embed
        out = torch.zeros(*codes.shape[:2], embed.shape[-1], dtype=embed.dtype, device=codes.device)
        for i, level in enumerate(self.levels[:codes.shape[-1]]):
            out = out + level.decode(codes[..., i])
        return out


class MultiStreamRVQ(nn.Module):
    """A residual quantiser whose groups are the five streams (own codebooks, own id space).

    Each stream codes ``cfg.stream_levels[stream]`` levels; its codes past those are -1.

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
        levels = [cfg.stream_codes(name) // cfg.splits for name in kp.STREAM_NAMES for _ in range(cfg.splits)]
        self.rvq = ResidualQuantizer(dim // cfg.splits, cfg, len(kp.STREAMS) * cfg.splits, levels)

    def codebook(self, stream: str, code: int) -> dict[str, torch.Tensor]:
        """The buffers (views) behind one of a stream's codes per chunk, e.g. for health reports."""
        level, part = divmod(code, self.splits)
        g = kp.STREAM_NAMES.index(stream) * self.splits + part
        cb = self.rvq.levels[level]
        return {"embed": cb.embed[g], "cluster_size": cb.cluster_size[g], "unused_steps": cb.unused_steps[g],
                "dead_after": cb.dead_after}

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

        Always fp32, also under autocast: bf16 distances would pick wrong nearest codes.
        """
        with torch.autocast(z.device.type, enabled=False):
            r = self.rvq(self._groups(z), num_active)
        commit, usage = (t.view(-1, self.splits).mean(1) for t in (r.commit_loss, r.usage_loss))
        return QuantizedResult(self._streams(r.quantized), self._stream_codes(r.codes), commit, usage)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, S, D) -> codes (N, S, codes_per_stream)."""
        with torch.autocast(z.device.type, enabled=False):
            return self._stream_codes(self.rvq.encode(self._groups(z)))

    @torch.no_grad()
    def encode_with_residuals(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (N, S, codes_per_stream) and the norm of the stream's latent left after each
        level, relative to the latent's (N, S, levels): the exact error of decoding the first
        k levels, as adaptive depth uses them."""
        codes = self.encode(z)
        with torch.autocast(z.device.type, enabled=False):
            x = self._streams(self.rvq.prepare(self._groups(z)))
        scale = x.norm(dim=-1).clamp_min(1e-8)
        left = [(x - self.decode(codes[..., :k * self.splits])).norm(dim=-1) / scale
                for k in range(1, self.num_levels + 1)]
        return codes, torch.stack(left, -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, S, k * splits) -> (N, S, D): the first k levels of every part."""
        n, s, m = codes.shape
        if m % self.splits:
            raise ValueError(f"decode needs whole levels: {m} codes per stream, {self.splits} parts per level")
        groups = codes.reshape(n, s, m // self.splits, self.splits).permute(1, 3, 0, 2)  # (S, splits, N, k)
        return self._streams(self.rvq.decode(groups.reshape(s * self.splits, n, -1)))
