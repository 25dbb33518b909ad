"""Residual vector quantisation with EMA codebooks, nested as in audiocraft's core_vq:

``Codebook`` (one level: EMA, data init, dead-code restart) -> ``ResidualQuantizer``
(levels) -> ``MultiStreamRVQ`` (one residual quantiser per stream F/LH/RH/B/FB).

All codebook state lives in registered buffers, so ``state_dict()`` is the whole
resumable state. Under torch.distributed the per-code counts and sums are all-reduced
inside the codebook before the EMA update, and dead-code replacements are drawn on rank 0
and broadcast, so every rank holds the same codebook after every step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
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
    """One VQ level: nearest-code lookup, EMA updates, data init and dead-code restart."""

    def __init__(self, dim: int, cfg: RVQConfig):
        super().__init__()
        self.size, self.decay, self.eps = cfg.codebook_size, cfg.ema_decay, cfg.laplace_eps
        self.dead_after, self.init, self.kmeans_iters = cfg.dead_after_steps, cfg.init, cfg.kmeans_iters
        self.temperature = cfg.usage_temperature
        if cfg.init not in ("kmeans", "sample", "random"):
            raise ValueError(f"model.rvq.init must be kmeans, sample or random, got {cfg.init!r}")
        embed = torch.randn(cfg.codebook_size, dim) * dim ** -0.5
        self.register_buffer("initted", torch.tensor(cfg.init == "random"))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("cluster_size", torch.ones(cfg.codebook_size))
        self.register_buffer("unused_steps", torch.zeros(cfg.codebook_size, dtype=torch.long))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) nearest code ids."""
        return sq_distances(x, self.embed).argmin(-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(...,) code ids -> (..., D) codewords."""
        return F.embedding(codes, self.embed)

    def forward(self, x: torch.Tensor, active: torch.Tensor | None = None):
        """Quantise ``x`` (N, D); returns (codewords (detached), codes, commitment, usage KL).

        ``active`` (N,) marks rows that use this level (quantizer dropout); only they count
        in the losses and the EMA statistics.
        """
        rows = x if active is None else x[active]
        if self.training and not bool(self.initted):
            # Every rank joins the init broadcast; a level no row uses yet starts from all rows.
            self._init_from((rows if rows.shape[0] else x).detach())
        # The EMA update below rewrites the buffer in place; autograd needs the old values.
        embed = self.embed.clone() if self.training else self.embed
        dists = sq_distances(x, embed)  # (N, K)
        codes = dists.argmin(-1)
        quantized = F.embedding(codes, embed).detach()
        d_rows = dists if active is None else dists[active]
        q_rows = quantized if active is None else quantized[active]
        commit = F.mse_loss(rows, q_rows) if rows.shape[0] else x.sum() * 0
        usage = self.usage_kl(d_rows)
        if self.training:
            self._ema_update(rows.detach(), codes if active is None else codes[active])
        return quantized, codes, commit, usage

    def usage_kl(self, dists: torch.Tensor) -> torch.Tensor:
        """KL(u || uniform) of the batch's soft assignment ``u`` (differentiable in x).

        Distances are standardised per row (scale-free), so ``temperature`` 0.1 puts most
        of a row's mass on its few nearest codes: ``u`` tracks the real usage, and its
        gradient pulls encoder outputs towards the codes the batch uses least.
        """
        if dists.shape[0] == 0:
            return dists.sum() * 0
        scale = dists.std(dim=-1, keepdim=True).detach().clamp_min(1e-8)
        probs = torch.softmax(-dists / (self.temperature * scale), dim=-1)
        usage = probs.mean(0)
        return (usage * torch.log(usage * self.size + 1e-12)).sum()

    @torch.no_grad()
    def _init_from(self, x: torch.Tensor) -> None:
        if self.init == "kmeans":
            embed = kmeans(x, self.size, self.kmeans_iters)
        else:
            embed = _samples(x, self.size)
        embed = _broadcast(embed.contiguous())
        self.embed.copy_(embed)
        self.embed_sum.copy_(embed)
        self.cluster_size.fill_(1.0)
        self.initted.fill_(True)

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.size).to(x.dtype)
        sums = torch.zeros_like(self.embed).index_add_(0, codes, x.to(self.embed.dtype))
        # Sum over ranks: the EMA then sees the global batch, as one process would.
        _all_reduce(counts)
        _all_reduce(sums)
        # Warm-up of the decay (as TF's ExponentialMovingAverage): early latents move fast,
        # and a codebook lagging ~100 steps behind them leaves all but a few codes stranded.
        decay = min(self.decay, (1.0 + float(self.updates)) / (10.0 + float(self.updates)))
        self.updates.add_(1)
        self.cluster_size.lerp_(counts, 1 - decay)
        self.embed_sum.lerp_(sums, 1 - decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.size * self.eps) * total
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        self._restart_dead(x)

    @torch.no_grad()
    def _restart_dead(self, x: torch.Tensor) -> None:
        dead = self.unused_steps >= self.dead_after
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        # Rank 0 draws from its batch and shares, so all ranks restart to the same vectors
        # (every rank joins the broadcast, even one whose batch had no rows for this level).
        source = x if x.shape[0] else self.embed[~dead] if (~dead).any() else self.embed
        fresh = _broadcast(_samples(source, num_dead).contiguous())
        self.embed[dead] = fresh
        self.embed_sum[dead] = fresh
        self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0


@dataclass
class QuantizedResult:
    """Output of a quantiser: ``quantized`` carries the straight-through gradient to the input."""

    quantized: torch.Tensor      # (..., D)
    codes: torch.Tensor          # (..., levels) long
    commit_loss: torch.Tensor    # scalar, or (S,) per stream
    usage_loss: torch.Tensor     # scalar, or (S,) per stream


class ResidualQuantizer(nn.Module):
    """Levels of codebooks, each quantising what the previous ones left over."""

    def __init__(self, dim: int, cfg: RVQConfig):
        super().__init__()
        if cfg.distance not in ("euclidean", "cosine"):
            raise ValueError(f"model.rvq.distance must be euclidean or cosine, got {cfg.distance!r}")
        self.cosine = cfg.distance == "cosine"
        self.levels = nn.ModuleList(Codebook(dim, cfg) for _ in range(cfg.levels))

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        # Cosine mode puts the latent on the unit sphere; residual levels stay euclidean.
        return F.normalize(z, dim=-1) if self.cosine else z

    def forward(self, z: torch.Tensor, num_active: torch.Tensor | None = None) -> QuantizedResult:
        """z (N, D) -> quantized (N, D). ``num_active`` (N,) levels per row (quantizer dropout).

        Each level's codeword is detached and one straight-through estimator is applied at
        the end (the EnCodec/audiocraft fix), written as ``out + (x - x.detach())`` so the
        value is exactly the sum of codewords, bit for bit equal to ``decode(codes)``.
        """
        x = self._prepare(z)
        residual, out = x, torch.zeros_like(x)
        codes, commits, usages = [], [], []
        for i, level in enumerate(self.levels):
            active = None if num_active is None else num_active > i
            q, c, commit, usage = level(residual, active)
            if active is not None:
                q = q * active[:, None].to(q.dtype)
            residual = residual - q
            out = out + q
            codes.append(c)
            commits.append(commit)
            usages.append(usage)
        return QuantizedResult(out + (x - x.detach()), torch.stack(codes, -1),
                               torch.stack(commits).mean(), torch.stack(usages).mean())

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) -> codes (N, levels); the export and streaming path."""
        return self.encode_with_residuals(z)[0]

    @torch.no_grad()
    def encode_with_residuals(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (N, levels) and the norm left after each level relative to the input's (N, levels)."""
        x = self._prepare(z)
        residual, codes, norms = x, [], []
        scale = x.norm(dim=-1).clamp_min(1e-8)
        for level in self.levels:
            c = level.encode(residual)
            residual = residual - level.decode(c)
            codes.append(c)
            norms.append(residual.norm(dim=-1) / scale)
        return torch.stack(codes, -1), torch.stack(norms, -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, levels) -> (N, D), summing codewords in level order as the forward does."""
        out = torch.zeros(codes.shape[0], self.levels[0].embed.shape[1],
                          dtype=self.levels[0].embed.dtype, device=codes.device)
        for i, level in enumerate(self.levels[:codes.shape[-1]]):
            out = out + level.decode(codes[:, i])
        return out


class MultiStreamRVQ(nn.Module):
    """One residual quantiser per stream (own codebooks, own id space)."""

    def __init__(self, dim: int, cfg: RVQConfig):
        super().__init__()
        self.num_levels, self.codebook_size = cfg.levels, cfg.codebook_size
        self.streams = nn.ModuleDict({name: ResidualQuantizer(dim, cfg) for name in kp.STREAM_NAMES})

    def forward(self, z: torch.Tensor, num_active: torch.Tensor | None = None) -> QuantizedResult:
        """z (N, S, D) -> quantized (N, S, D), codes (N, S, levels), per-stream losses (S,).

        Always fp32, also under autocast: bf16 distances would pick wrong nearest codes.
        """
        with torch.autocast(z.device.type, enabled=False):
            results = [q(z[:, i].float(), num_active) for i, q in enumerate(self.streams.values())]
        return QuantizedResult(
            torch.stack([r.quantized for r in results], 1), torch.stack([r.codes for r in results], 1),
            torch.stack([r.commit_loss for r in results]), torch.stack([r.usage_loss for r in results]))

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, S, D) -> codes (N, S, levels)."""
        return self.encode_with_residuals(z)[0]

    @torch.no_grad()
    def encode_with_residuals(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (N, S, levels) and the relative residual norm after each level (N, S, levels)."""
        with torch.autocast(z.device.type, enabled=False):
            pairs = [q.encode_with_residuals(z[:, i].float()) for i, q in enumerate(self.streams.values())]
        return torch.stack([c for c, _ in pairs], 1), torch.stack([r for _, r in pairs], 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, S, levels) -> (N, S, D)."""
        return torch.stack([q.decode(codes[:, i]) for i, q in enumerate(self.streams.values())], 1)
