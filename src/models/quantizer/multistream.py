"""The five streams' quantiser: EMA codebooks and FSQ side by side, each stream in its own id space."""
from __future__ import annotations

import typing

import torch
from torch import nn

from src.config import RVQConfig
from src.data import keypoints as kp
from src.models.quantizer.base import QuantizedResult, StraightThrough
from src.models.quantizer.fsq import ResidualFSQ
from src.models.quantizer.residual import ResidualQuantizer

HANDS = ("LH", "RH")


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
        self.stream_levels = {name: cfg.stream_codes(name) // cfg.splits for name in kp.STREAM_NAMES}
        names = [name for name in kp.STREAM_NAMES for _ in range(cfg.splits)]     # per group
        levels = [self.stream_levels[name] for name in names]
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
        # (LH, RH) levels a chunk may keep: trained with model.rvq.hand_codes, coded with set_depth's
        self.hand_splits = self._hand_options(cfg.hand_codes, "model.rvq.hand_codes")

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
            return {"unused": self.fsq.unused_steps[level, g], "dead_after": None}
        cb = self.rvq.levels[level]
        return {"embed": cb.embed[g], "cluster_size": cb.cluster_size[g], "unused": cb.unused_rows[g],
                "dead_after": cb.dead_after}

    def set_depth(self, thresholds: dict[str, float] | None, hand_codes: int = 0) -> None:
        """Adaptive depth for encoding (export, streaming, evaluation).

        ``thresholds``: a stream codes its next level only while what its levels so far left is
        at least ``thresholds[stream]`` of its latent's norm (the relative residual of
        :meth:`encode_with_residuals`); streams not named, and ``None``, code every level;
        training ignores them.
        ``hand_codes`` > 0: the two hands share that many codes per chunk, split between them
        (each 1 to its own levels) so that the least latent residual is left: a chunk whose
        one hand signs gives it the other's deeper levels, at a fixed rate. Dropped levels
        are -1 and decode to nothing."""
        thresholds = thresholds or {}
        for name, groups in self._parts:
            q = getattr(self, name)
            names = [kp.STREAM_NAMES[g // self.splits] for g in groups]
            q.depth_threshold.copy_(torch.tensor([float(thresholds.get(n, 0.0)) for n in names]))
            q.adaptive, q.splits = any(thresholds.get(n, 0.0) > 0 for n in names), self.splits
        self.hand_splits = self._hand_options(hand_codes, "export.hand_codes")

    def _hand_options(self, hand_codes: int, key: str) -> list[tuple[int, int]]:
        """The (LH, RH) levels a chunk may keep when the hands share ``hand_codes`` ([] for 0)."""
        if not hand_codes:
            return []
        caps = [self.stream_levels[h] for h in HANDS]
        options = [(a, hand_codes - a) for a in range(1, caps[0] + 1) if 1 <= hand_codes - a <= caps[1]]
        if not options:
            raise ValueError(f"{key}={hand_codes}: the hands code 1..{caps[0]} and 1..{caps[1]} levels, "
                             f"so they can share 2..{sum(caps)} codes per chunk")
        if not set(self._hand_groups()) <= set(dict(self._parts).get("rvq", [])):
            raise ValueError(f"{key}={hand_codes} needs the hands on EMA codebooks (not in model.rvq.fsq_streams)")
        return options

    def _hand_groups(self) -> list[int]:
        """The groups of both hands, LH's parts first."""
        return [kp.STREAM_NAMES.index(h) * self.splits + p for h in HANDS for p in range(self.splits)]

    @torch.no_grad()
    def _share_hand_codes(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, S, codes_per_stream) with each chunk's hand levels cut to the split of
        ``hand_splits`` that leaves the least squared latent residual over both hands."""
        groups = self._hand_groups()
        own = [dict(self._parts)["rvq"].index(g) for g in groups]                # rows of the EMA codebooks
        left = self.rvq.left_squares(self._groups(z)[groups], self._group_codes(codes)[groups], own)
        left = left.view(2, self.splits, *left.shape[1:]).sum(1)                # (2, N, 1 + levels)
        cost = torch.stack([left[0, :, a] + left[1, :, b] for a, b in self.hand_splits], -1)
        depth = torch.tensor(self.hand_splits, device=codes.device)[cost.argmin(-1)]   # (N, 2) levels kept
        hands = [kp.STREAM_NAMES.index(h) for h in HANDS]
        level = torch.arange(codes.shape[-1], device=codes.device) // self.splits      # each code's level
        codes = codes.clone()
        for i, s in enumerate(hands):
            codes[:, s] = torch.where(level[None] < depth[:, i, None], codes[:, s], -1)
        return codes

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
        training search of residual levels rounds only its inputs: ``bf16_distances``).
        """
        with torch.autocast(z.device.type, enabled=False):
            x = self._groups(z)
            parts = [getattr(self, name)(x if len(self._parts) == 1 else x[groups], num_active)
                     for name, groups in self._parts]
        r = parts[0] if len(parts) == 1 else QuantizedResult(*(
            self._in_order([getattr(p, f) for p in parts]) for f in ("quantized", "codes", "commit_loss", "usage_loss")))
        commit, usage = (t.view(-1, self.splits).mean(1) for t in (r.commit_loss, r.usage_loss))
        codes, quantized = self._stream_codes(r.codes), self._streams(r.quantized)
        if self.hand_splits:   # the hands' value: the decode of the codes kept (identity gradient in training)
            codes = self._share_hand_codes(z, codes)
            hands = torch.tensor([kp.STREAM_NAMES.index(h) for h in HANDS], device=z.device)
            kept = self.decode(codes)[:, hands]
            quantized = quantized.index_copy(1, hands, StraightThrough.apply(kept, z[:, hands]) if self.training else kept)
        return QuantizedResult(quantized, codes, commit, usage)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, S, D) -> codes (N, S, codes_per_stream)."""
        with torch.autocast(z.device.type, enabled=False):
            codes = self._stream_codes(self._each(lambda q, x: q.encode(x), self._groups(z)))
            return self._share_hand_codes(z, codes) if self.hand_splits else codes

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
