"""Levels of EMA codebooks, each quantising what the previous ones left over."""
from __future__ import annotations

import torch
from torch import nn

from src.config import RVQConfig
from src.models.quantizer.base import QuantizedResult, StraightThrough, broadcast, deeper, runs
from src.models.quantizer.codebook import Codebook, kmeans, sq_distances


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
        # Adaptive depth, set by MultiStreamRVQ.set_depth for export and streaming (never used in
        # training): per group, the share of the target's norm below which a row codes no more levels.
        self.register_buffer("depth_threshold", torch.zeros(groups), persistent=False)
        self.adaptive, self.splits = False, 1

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
                level.unused_rows[g] = 0
                residual[g] = rows - book[assign]
            level.initted.fill_(True)
        for buffer in self.buffers():   # ranks drew their own k-means starts: all take rank 0's codebooks
            broadcast(buffer)

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
            if i and self.adaptive and not self.training:
                more = deeper(residual, x, self.depth_threshold, self.splits)
                q, c = q * more[..., None].to(q.dtype), torch.where(more, c, -1)
            if i + 1 < len(self.levels):
                residual = residual - q
            out = q if out is None else out + q   # 0 + q is q: the first level needs no zeros
            codes.append(c)
            commits.append(commit)
            usages.append(usage)
        depth = self.group_levels.to(x.dtype)
        return QuantizedResult(StraightThrough.apply(out, x), torch.stack(codes, -1),
                               torch.stack(commits).sum(0) / depth, torch.stack(usages).sum(0) / depth)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (G, N, D) -> codes (G, N, levels); the export and streaming path."""
        x = self.target(z)
        residual, codes, caps = x, [], self.caps
        for i, level in enumerate(self.levels):
            # Only the groups that code this level are compared with its codebooks (F and FB
            # code 1 of the default 2 levels: 2 of 5 codebooks of level 2 are never read).
            code = torch.full(residual.shape[:2], -1, dtype=torch.long, device=residual.device)
            for run in runs([cap > i for cap in caps]):
                code[run] = (level.encode_shortlist(residual[run], run, self.shortlist) if self.shortlist
                             else level.encode(residual[run], run))
            if i and self.adaptive:
                code = torch.where(deeper(residual, x, self.depth_threshold, self.splits), code, -1)
            codes.append(code)
            if i + 1 < len(self.levels):
                residual = residual - level.decode(code)
        return torch.stack(codes, -1)

    def left_squares(self, z: torch.Tensor, codes: torch.Tensor, groups: list[int]) -> torch.Tensor:
        """|target|^2 and |target - its first k levels|^2 of some groups: latents ``z`` (g, N, D) and
        codes (g, N, levels) of the groups ``groups`` -> (g, N, 1 + levels). Only their codebook
        rows are read (the hands' split of their codes, at every streamed chunk)."""
        t = self.target(z)
        left, approx = [t.square().sum(-1)], torch.zeros_like(t)
        first = torch.tensor(groups, device=codes.device)[:, None] * self.levels[0].size   # each group's first row
        for i, level in enumerate(self.levels[:codes.shape[-1]]):
            code = codes[..., i]
            rows = level.embed.view(-1, t.shape[-1]).index_select(0, (code.clamp_min(0) + first).view(-1))
            approx = approx + rows.view_as(t) * (code >= 0)[..., None].to(t.dtype)
            left.append((t - approx).square().sum(-1))
        return torch.stack(left, -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (G, N, levels) -> (G, N, D), summing codewords in level order as the forward does."""
        embed = self.levels[0].embed
        out = torch.zeros(*codes.shape[:2], embed.shape[-1], dtype=embed.dtype, device=codes.device)
        for i, level in enumerate(self.levels[:codes.shape[-1]]):
            out = out + level.decode(codes[..., i])
        return out

    approximate = decode   # codewords live in the latent space itself (cf. ResidualFSQ)
