"""The multi-stream sign tokenizer: chunk encoder -> per-stream RVQ -> chunk decoder.

With ``model.context: previous`` each chunk of the streams in ``model.context_streams`` is
coded relative to the decoded last frame of the chunk before it (closed-loop predictive
coding, as in streaming audio codecs): the encoder sees the chunk minus that frame and the
frame itself, the decoder adds it back; the other streams are coded as without context.
The context is what the decoder had, never a later frame, so streaming keeps a latency of
one chunk; a sequence's first chunk is coded from the mean pose.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from src.config import Config, ModelConfig
from src.data import keypoints as kp
from src.models.decoder import ChunkDecoder
from src.models.encoder import ChunkEncoder
from src.models.quantizer import MultiStreamRVQ, QuantizedResult


@dataclass
class TokenizerOutput:
    recon: torch.Tensor        # (N, L, P, 2) local units
    z: torch.Tensor            # (N, S, D) encoder latents before quantisation
    vq: QuantizedResult        # quantized (N, S, D), codes (N, S, levels), per-stream losses


@dataclass
class Context:
    """Where each chunk is coded from: ``ref`` (N, P, 2) local units, ``first`` (N,) bool."""

    ref: torch.Tensor
    first: torch.Tensor


def first_rows(chunk_mask: torch.Tensor) -> torch.Tensor:
    """(B, C) valid chunks -> (N,) True where a valid-chunk row is its sequence's first chunk."""
    first = torch.zeros_like(chunk_mask)
    first[:, 0] = True
    return first[chunk_mask]


class SignTokenizer(nn.Module):
    """Chunks of pose -> codes per stream and level -> chunks of pose.

    ``encode`` / ``decode_codes`` / ``decode`` are the pure inference paths of a model without
    temporal context; ``step`` (one causal chunk) and ``tokenize`` (whole sequences) serve both.
    """

    @classmethod
    def from_config(cls, cfg: Config) -> "SignTokenizer":
        """The model of a whole config: ``model.*``, and the chunk length the data is cut into."""
        return cls(cfg.model, cfg.data.chunk_len)

    def __init__(self, cfg: ModelConfig, chunk_len: int):
        super().__init__()
        if cfg.context not in ("none", "previous"):
            raise ValueError(f"model.context must be none or previous, got {cfg.context!r}")
        self.cfg, self.chunk_len = cfg, chunk_len
        self.encoder = ChunkEncoder(cfg, chunk_len)
        self.quantizer = MultiStreamRVQ(cfg.latent_dim, cfg.rvq)
        self.decoder = ChunkDecoder(cfg, chunk_len)
        # Per-point standardisation of local coordinates, from the training split (see
        # ``set_standardisation``); identity until set, and saved with the weights.
        self.register_buffer("point_mean", torch.zeros(kp.NUM_STREAM_POINTS, 2))
        self.register_buffer("point_std", torch.ones(kp.NUM_STREAM_POINTS, 2))
        self.uses_context = cfg.context == "previous"
        if self.uses_context:
            # Spread of a frame's offset from the previous chunk's last frame: the scale of
            # what a chunk codes once the context is known.
            self.register_buffer("delta_std", torch.ones(kp.NUM_STREAM_POINTS, 2))
            # The context frame (standardised) and a first-chunk flag, per stream, to one
            # vector added to every frame token of the encoder and of the decoder.
            self.context_in = nn.ModuleDict({s.name: nn.Linear(2 * s.num_keypoints + 1, cfg.width)
                                             for s in kp.STREAMS if s.name in cfg.context_streams})
            # Points of the streams coded from the context; the others always from the mean pose.
            on = torch.zeros(kp.NUM_STREAM_POINTS, dtype=torch.bool)
            for name in cfg.context_streams:
                on[kp.STREAM_SLICES[name]] = True
            self.register_buffer("context_points", on, persistent=False)
        if cfg.fb_from_parts:
            fb, body, hand = (torch.from_numpy(v) for v in kp.parts_in_full_body())
            for name, value in (("fb_points", fb), ("fb_body", body), ("fb_hand", hand.clamp_min(0)),
                                ("fb_has_hand", (hand >= 0).float()[:, None])):
                self.register_buffer(name, value, persistent=False)

    def set_standardisation(self, mean: torch.Tensor, std: torch.Tensor,
                            delta_std: torch.Tensor | None = None) -> None:
        """Use dataset mean/std (P, 2) so the encoder sees unit-scale inputs and the decoder
        starts from the mean pose; the losses stay in unit-length coordinates. ``delta_std``
        scales the offsets from the context frame (context models)."""
        self.point_mean.copy_(torch.as_tensor(mean))
        self.point_std.copy_(torch.as_tensor(std))
        if self.uses_context and delta_std is not None:
            self.delta_std.copy_(torch.as_tensor(delta_std))

    # ---------------------------------------------------------------- context
    def _frame(self, ctx: Context | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Reference pose (N or 1, 1, P, 2), scale and conditioning (N, S, width) of each row."""
        if ctx is None:
            return self.point_mean, self.point_std, None
        first = ctx.first[:, None, None] | ~self.context_points[:, None]   # (N, P, 1)
        ref = torch.where(first, self.point_mean, ctx.ref)
        scale = torch.where(first, self.point_std, self.delta_std)
        pose = (ref - self.point_mean) / self.point_std  # (N, P, 2); 0 for a first chunk
        flag = ctx.first[:, None].to(pose.dtype)
        cond = torch.stack([self.context_in[name](torch.cat([pose[:, sl].flatten(1), flag], 1))
                            if name in self.context_in else pose.new_zeros(len(pose), self.cfg.width)
                            for name, sl in kp.STREAM_SLICES.items()], dim=1)
        return ref[:, None], scale[:, None], cond

    def encode_latent(self, x: torch.Tensor, observed: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        """x (N, L, P, 2) local units, observed (N, L, P) -> latents (N, S, D) before quantisation.

        Points the estimator did not see enter as 0 (the training mean pose) with their flag: a
        filled-in guess, or a point another estimator never gives, then cannot change a code.
        """
        ref, scale, cond = self._frame(ctx)
        return self.encoder(((x - ref) / scale).masked_fill(~observed[..., None], 0), observed, cond)

    def decode(self, quantized: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        """Quantized latents (N, S, D) -> poses (N, L, P, 2) in local units."""
        ref, scale, cond = self._frame(ctx)
        out = self.decoder(quantized, cond) * scale + ref
        return self._parts_into_full_body(out, ref) if self.cfg.fb_from_parts else out

    def _parts_into_full_body(self, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """FB's arm and hand points start from the decoded body (elbows, wrists) and hands (each at
        the body's wrist) instead of FB's reference pose, so FB's code decodes only the correction:
        where the parts sit relative to each other beyond what B codes. Detached: each part
        stream still learns from its own loss alone."""
        parts = out.detach()
        placed = parts[:, :, self.fb_body] + parts[:, :, self.fb_hand] * self.fb_has_hand
        return out.index_add(2, self.fb_points, placed - ref[..., self.fb_points, :])

    def _levels_per_row(self, n: int, device: torch.device) -> torch.Tensor | None:
        """Quantizer dropout: some rows train with only their first k levels (k uniform)."""
        p, levels = self.cfg.rvq.quantizer_dropout, self.cfg.rvq.levels
        if not self.training or p <= 0:
            return None
        drop = torch.rand(n, device=device) < p
        k = torch.randint(1, levels + 1, (n,), device=device)
        return torch.where(drop, k, torch.full_like(k, levels))

    def _forward(self, x: torch.Tensor, observed: torch.Tensor, ctx: Context | None) -> TokenizerOutput:
        z = self.encode_latent(x, observed, ctx)
        vq = self.quantizer(z, self._levels_per_row(x.shape[0], x.device))
        return TokenizerOutput(self.decode(vq.quantized, ctx), z, vq)

    def forward(self, x: torch.Tensor, observed: torch.Tensor,
                chunk_mask: torch.Tensor | None = None) -> TokenizerOutput:
        """x (N, L, P, 2), observed (N, L, P) -> reconstruction, latents and quantiser output.

        Rows are the valid chunks of ``chunk_mask`` (B, C) in its order (a context model needs
        it). Training runs a context model in ``context_passes`` parallel passes: the first,
        without gradients or codebook updates, decodes every chunk from the true previous
        frame; each next one from the previous pass's decoded previous frame, so the last
        pass (with gradients) sees contexts carrying the errors of ``context_passes - 1``
        chunks, as the sequential closed loop of evaluation and streaming does.
        """
        if not self.uses_context:
            return self._forward(x, observed, None)
        if chunk_mask is None:
            raise ValueError("a model with temporal context needs the chunk mask of its rows")
        first = first_rows(chunk_mask)
        if not self.training:
            return self._closed_loop(x, observed, chunk_mask)
        prev = (torch.arange(x.shape[0], device=x.device) - 1).clamp_min(0)
        ref = x[prev, -1]
        with torch.no_grad():
            for _ in range(self.cfg.context_passes - 1):
                ctx = Context(ref, first)
                ref = self.decode(self.decode_codes(self.quantizer.encode(self.encode_latent(x, observed, ctx))),
                                  ctx)[prev, -1]
        return self._forward(x, observed, Context(ref, first))

    def _closed_loop(self, x: torch.Tensor, observed: torch.Tensor, chunk_mask: torch.Tensor) -> TokenizerOutput:
        """Chunk index by chunk index over the batch, each coded from the previous decoded chunk."""
        b, c = chunk_mask.shape
        index = torch.full((b, c), -1, dtype=torch.long, device=x.device)
        index[chunk_mask] = torch.arange(x.shape[0], device=x.device)
        recon = torch.zeros_like(x)
        parts: list[tuple[torch.Tensor, TokenizerOutput]] = []
        for t in range(c):
            rows = index[:, t][chunk_mask[:, t]]
            if t == 0:
                ctx = Context(x[rows, -1], torch.ones_like(rows, dtype=torch.bool))
            else:
                ctx = Context(recon[index[:, t - 1][chunk_mask[:, t]], -1], torch.zeros_like(rows, dtype=torch.bool))
            out = self._forward(x[rows], observed[rows], ctx)
            recon[rows] = out.recon
            parts.append((rows, out))
        return _gather(parts, x.shape[0], recon)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """x (N, L, P, 2), observed (N, L, P) -> codes (N, S, levels); models without context."""
        if self.uses_context:
            raise ValueError("a model with temporal context codes chunks in order: use step or tokenize")
        return self.quantizer.encode(self.encode_latent(x, observed))

    @torch.no_grad()
    def step(self, x: torch.Tensor, observed: torch.Tensor, context: torch.Tensor | None = None,
             decode: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One new chunk per row, causally: its codes (N, S, levels) and decoded poses (N, L, P, 2).

        ``context`` (N, P, 2) is the decoded last frame of each row's previous chunk (None for
        a sequence's first chunk): what a streaming tokenizer keeps between chunks. A model
        without context needs no decode for its tokens: ``decode=False`` skips it (None).
        """
        ctx = None
        if self.uses_context:
            first = torch.full((x.shape[0],), context is None, dtype=torch.bool, device=x.device)
            ctx = Context(x[:, -1] if context is None else context, first)
        codes = self.quantizer.encode(self.encode_latent(x, observed, ctx))
        if not (decode or self.uses_context):
            return codes, None
        return codes, self.decode(self.decode_codes(codes), ctx)

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor, observed: torch.Tensor, chunk_mask: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Valid-chunk rows of whole sequences -> codes (N, S, levels), the latent norm left after
        each level (N, S, levels) and the decoded chunks (N, L, P, 2), unstitched."""
        if not self.uses_context:
            codes, residuals = self.quantizer.encode_with_residuals(self.encode_latent(x, observed))
            return codes, residuals, self.decode(self.decode_codes(codes))
        out = self._closed_loop(x, observed, chunk_mask)
        _, residuals = self.quantizer.encode_with_residuals(out.z)
        return out.vq.codes, residuals, out.recon

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, S, levels) -> quantized latents (N, S, D); fewer levels decode coarser."""
        return self.quantizer.decode(codes)


def _gather(parts: list[tuple[torch.Tensor, TokenizerOutput]], n: int, recon: torch.Tensor) -> TokenizerOutput:
    """Per-chunk-index outputs back into row order; per-stream losses weighted by rows."""
    first = parts[0][1]
    z = first.z.new_zeros((n,) + first.z.shape[1:])
    quantized = first.vq.quantized.new_zeros((n,) + first.vq.quantized.shape[1:])
    codes = first.vq.codes.new_zeros((n,) + first.vq.codes.shape[1:])
    commit = usage = 0
    for rows, out in parts:
        z[rows], quantized[rows], codes[rows] = out.z, out.vq.quantized, out.vq.codes
        commit = commit + out.vq.commit_loss * len(rows) / n
        usage = usage + out.vq.usage_loss * len(rows) / n
    return TokenizerOutput(recon, z, QuantizedResult(quantized, codes, commit, usage))
