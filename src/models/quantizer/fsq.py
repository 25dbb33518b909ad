"""Residual finite scalar quantisation: a fixed grid in place of learned codewords."""
from __future__ import annotations

import torch
from torch import nn

from src.config import RVQConfig
from src.models.quantizer.base import QuantizedResult, StraightThrough, all_reduce, deeper


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
        # Adaptive depth as ResidualQuantizer's (MultiStreamRVQ.set_depth), in target space.
        self.register_buffer("depth_threshold", torch.zeros(groups), persistent=False)
        self.adaptive, self.splits = False, 1

    def target(self, z: torch.Tensor) -> torch.Tensor:
        """(G, N, D) latents -> (G, N, d): what the levels' rounded numbers add up to approximate."""
        return torch.baddbmm(self.bias_in[:, None], z, self.project_in)

    def _round(self, u: torch.Tensor, straight_through: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """FSQ's bound and round of (G, N, d) -> values in [-1, 1] (with the identity gradient to
        ``u``'s bounded value when ``straight_through``) and codes (G, N)."""
        bounded = torch.tanh(u + self.shift) * self.half_l - self.offset
        rounded = bounded.round()
        if straight_through:
            rounded = StraightThrough.apply(rounded.detach(), bounded)
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
        target = residual = self.target(z)
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
            if i and self.adaptive and not self.training:
                on = on & deeper(residual, target, self.depth_threshold, self.splits)
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
        used = all_reduce(used.to(torch.int32)) > 0
        self.unused_steps.add_(1).masked_fill_(used, 0)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (G, N, D) -> codes (G, N, levels); rounding only, no codebook is read."""
        target = residual = self.target(z)
        codes = []
        for i in range(self.num_levels):
            if i >= max(self.caps):
                codes.append(torch.full(residual.shape[:2], -1, dtype=torch.long, device=z.device))
                continue
            _, code = self._round(residual / self.scales[i], straight_through=False)
            on = (self.group_levels > i)[:, None]
            if i and self.adaptive:
                on = on & deeper(residual, target, self.depth_threshold, self.splits)
            code = torch.where(on, code, -1)
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
