"""One level of EMA codebooks (``Codebook``) and the k-means it starts from."""
from __future__ import annotations

import torch
from torch import nn

from src.config import RVQConfig
from src.models.quantizer.base import all_reduce, broadcast, lookup
from src.models.quantizer.kernels import (LevelLosses, bf16_distances, first_pass_products, first_pass_tables,
                                          fp32_matmul_as_bf16)


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
    after the first, whose small inputs the training search may round to bf16 (``bf16_distances``).
    """

    def __init__(self, dim: int, cfg: RVQConfig, groups: int = 1, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.size, self.decay, self.eps = cfg.codebook_size, cfg.ema_decay, cfg.laplace_eps
        self.dead_after, self.init, self.kmeans_iters = cfg.dead_after_rows, cfg.init, cfg.kmeans_iters
        self.temperature, self.usage_rows = cfg.usage_temperature, cfg.usage_rows
        if cfg.init not in ("kmeans", "sample", "random"):
            raise ValueError(f"model.rvq.init must be kmeans, sample or random, got {cfg.init!r}")
        embed = torch.randn(groups, cfg.codebook_size, dim) * dim ** -0.5
        self.register_buffer("initted", torch.tensor(cfg.init == "random"))
        self.register_buffer("embed", embed)                                      # (G, K, D)
        self.register_buffer("embed_sum", embed.clone())                          # (G, K, D)
        self.register_buffer("cluster_size", torch.ones(groups, cfg.codebook_size))
        # rows of training batches since each code was last picked (restarted at dead_after)
        self.register_buffer("unused_rows", torch.zeros(groups, cfg.codebook_size, dtype=torch.long))
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

        Into a given output: the same values bit for bit, and faster on CPU than torch's own
        allocating path of ``baddbmm`` (docs/quantizer.md)."""
        out = torch.empty(x.shape[0], x.shape[1], embed.shape[1], dtype=x.dtype, device=x.device)
        return torch.baddbmm(norms[:, None, :], x, embed.transpose(1, 2), alpha=-2, out=out)

    def encode(self, x: torch.Tensor, groups: slice = slice(None)) -> torch.Tensor:
        """(G, N, D) -> (G, N) nearest code ids; with ``groups``, x holds only those groups.

        The distances are formed code-major, (G, K, N) = embed @ x^T: for a few rows (one
        streaming chunk) BLAS then streams the codebook once as a matrix-vector product,
        where x @ embed^T first repacks the whole codebook (docs/quantizer.md).
        A slice of groups is a view of the codebooks: a group left out is never read.
        """
        norms = self._embed_norms()[groups, :, None]
        return torch.baddbmm(norms, self.embed[groups], x.transpose(1, 2), alpha=-2).argmin(1)

    def shortlist_tables(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """What :meth:`encode_shortlist` needs besides the codebook, kept until it changes.

        The first pass's codewords: each group's codewords minus their mean (the mean's share
        of x.e is the same for every code, so it drops out of a nearest-code search, and the
        products to round get smaller), on CPU in int8 with one bf16 scale per code (a quarter
        of the fp32 bytes, :func:`~.kernels.first_pass_tables`), elsewhere in bf16. And each code's lowest id with the same codeword
        (G, K): equal codewords tie, and encode's argmin gives the first of them (a level of a
        fresh model holds 1024 zero codewords, more than any shortlist).
        """
        if torch.compiler.is_compiling() and self._first is not None:   # as in _embed_norms
            return self._first
        key = (id(self.embed), self.embed._version, self.embed.device)
        if key != self._first_key:
            first = first_pass_tables(self.embed)
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
        :meth:`shortlist_tables`) pick each row's ``k`` nearest candidates, then fp32
        distances to those alone pick the code.

        The code is the fp32 nearest unless the fp32 nearest is not among the ``k`` first-pass
        nearest (an approximation error larger than the gap between candidates: counted in
        docs/history/speed_rounds.md), or two fp32 distances differ in the last bits only. For the bf16 stream.
        """
        embed, norms = self.embed[groups], self._embed_norms()[groups]
        first, scale, lowest = self.shortlist_tables()
        first, xb = first[groups], x.to(torch.bfloat16).contiguous()
        prods = first_pass_products(xb, first, None if scale is None else scale[groups])   # (G, N, K)
        cand = torch.sub(norms[:, None, :], prods, alpha=2).topk(k, -1, largest=False).indices  # (G, N, k)
        g, n, _ = cand.shape
        flat = cand.reshape(g, n * k)
        exact = norms.gather(1, flat).view(g, n, k) - 2 * (lookup(embed, flat).view(g, n, k, -1) @ x[..., None]).squeeze(-1)
        code = cand.gather(2, exact.argmin(2, keepdim=True)).squeeze(2)
        return lowest[groups].gather(1, code)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(G, N) code ids -> (G, N, D) codewords; id -1 (a level the group does not code) gives 0."""
        return lookup(self.embed, codes.clamp_min(0)) * (codes >= 0)[..., None].to(self.embed.dtype)

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
        fast = (self.training and self.residual and bf16_distances() and x.device.type == "cpu"
                and x.dtype == torch.float32)
        # no autograd: the usage term differentiates the distances itself (LevelLosses)
        with torch.no_grad(), fp32_matmul_as_bf16(fast):
            dists = self.distances(x, embed, norms)           # (G, N, K)
        nearest = dists.min(-1)                               # the first minimum, as argmin, and its value in one pass
        codes = nearest.indices                               # (G, N)
        quantized = lookup(embed, codes).detach()            # (G, N, D)
        d_rows, d_min, q_rows = (dists, nearest.values, quantized) if active is None else \
            (dists[:, active], nearest.values[:, active], quantized[:, active])
        if rows.shape[1]:
            # d_rows is consumed (overwritten) by the usage term: nothing below reads the distances.
            n = rows.shape[1]
            pick = torch.randperm(n, device=x.device)[:self.usage_rows] if 0 < self.usage_rows < n else None
            commit, usage = LevelLosses.apply(rows, q_rows, embed, d_rows, d_min, self.temperature, pick)
        else:
            commit = usage = x.sum((1, 2)) * 0
        if self.training:
            self._ema_update(rows.detach(), codes if active is None else codes[:, active])
        return quantized, codes, commit, usage

    @torch.no_grad()
    def _init_from(self, x: torch.Tensor) -> None:
        make = (lambda v: kmeans(v, self.size, self.kmeans_iters)) if self.init == "kmeans" \
            else (lambda v: _samples(v, self.size))
        embed = broadcast(torch.stack([make(group) for group in x]).contiguous())
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
        all_reduce(counts)
        all_reduce(sums)
        # Warm-up of the decay (as TF's ExponentialMovingAverage): early latents move fast,
        # and a codebook lagging ~100 steps behind them leaves all but a few codes stranded.
        decay = min(self.decay, (1.0 + float(self.updates)) / (10.0 + float(self.updates)))
        self.updates.add_(1)
        self.cluster_size.lerp_(counts, 1 - decay)
        self.embed_sum.lerp_(sums, 1 - decay)
        total = self.cluster_size.sum(-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + k * self.eps) * total
        self.embed.copy_(self.embed_sum / smoothed[..., None])
        self.unused_rows.add_(counts.sum(-1, keepdim=True).long()).masked_fill_(counts > 0, 0)
        self._restart_dead(x)

    @torch.no_grad()
    def _restart_dead(self, x: torch.Tensor) -> None:
        dead = self.unused_rows >= self.dead_after   # (G, K), the same on every rank
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
        fresh = broadcast(torch.cat(fresh).contiguous())
        self.embed[dead] = fresh
        self.embed_sum[dead] = fresh
        self.cluster_size[dead] = 1.0
        self.unused_rows[dead] = 0
