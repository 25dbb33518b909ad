"""Training objective: masked Huber reconstruction + commitment + temporal + codebook usage (+ InfoNCE).

Every term is returned on its own, overall and per stream, so each can be logged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from src.config import LossConfig
from src.data import keypoints as kp
from src.models.stitch import stitch_chunks
from src.models.tokenizer import TokenizerOutput

def _stream_matrix() -> torch.Tensor:
    """(P, S) one-hot of each point's stream; each part stream's own centre point is left out
    (it is 0 by construction in its local frame, see ``keypoints.SCORED_POINTS``)."""
    m = torch.zeros(kp.NUM_STREAM_POINTS, len(kp.STREAMS))
    for i, sl in enumerate(kp.STREAM_SLICES.values()):
        m[sl, i] = 1.0
    return m * torch.from_numpy(kp.SCORED_POINTS)[:, None]


_POINT_TO_STREAM = _stream_matrix()


def stream_pool(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked sums and counts of per-point ``values`` (..., P) per stream -> (..., S) each."""
    m = mask.to(values.dtype)
    to_stream = _POINT_TO_STREAM.to(device=values.device, dtype=values.dtype)
    return (values * m) @ to_stream, m @ to_stream


def per_stream_sums(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked sums and counts over every leading axis -> (S,), (S,)."""
    sums, counts = stream_pool(values.flatten(0, -2), mask.flatten(0, -2))
    return sums.sum(0), counts.sum(0)


def per_stream_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of per-point ``values`` (..., P) within each stream -> (S,)."""
    sums, counts = per_stream_sums(values, mask)
    return sums / counts.clamp_min(1)


def huber(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    """Per-point Huber distance (..., P, 2) -> (..., P), summed over x and y."""
    return F.huber_loss(pred, target, reduction="none", delta=delta).sum(-1)


def to_timeline(values: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
    """Valid-chunk rows (N, L, ...) -> (B, C*L, ...) padded timeline (zeros where no chunk)."""
    b, c = chunk_mask.shape
    full = values.new_zeros((b, c) + values.shape[1:])
    full[chunk_mask] = values
    return full.flatten(1, 2)


def temporal_velocity(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      chunk_mask: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber between reconstructed and true frame-to-frame motion, across chunk borders too.

    The borders are where independently decoded chunks can jump; this term ties them.
    """
    rec, tgt = to_timeline(recon, chunk_mask), to_timeline(target, chunk_mask)
    m = to_timeline(mask, chunk_mask)
    both = m[:, 1:] & m[:, :-1]
    err = huber(rec[:, 1:] - rec[:, :-1], tgt[:, 1:] - tgt[:, :-1], delta)
    return per_stream_mean(err, both)


def temporal_latent(z: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared change of each stream's latent between adjacent chunks -> (S,)."""
    b, c = chunk_mask.shape
    full = z.new_zeros((b, c) + z.shape[1:])
    full[chunk_mask] = z
    both = (chunk_mask[:, 1:] & chunk_mask[:, :-1]).to(z.dtype)  # (B, C-1)
    step = (full[:, 1:] - full[:, :-1]).pow(2).mean(-1)  # (B, C-1, S)
    return (step * both[..., None]).sum((0, 1)) / both.sum().clamp_min(1)


def info_nce(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Each part stream's latent should pick its own chunk's full-body latent from the batch."""
    full = F.normalize(z[:, -1], dim=-1)
    target = torch.arange(z.shape[0], device=z.device)
    losses = [F.cross_entropy(F.normalize(z[:, i], dim=-1) @ full.t() / temperature, target)
              for i in range(z.shape[1] - 1)]
    return torch.stack(losses).mean()


def compute_losses(out: TokenizerOutput, target: torch.Tensor, conf: torch.Tensor,
                   chunk_mask: torch.Tensor, cfg: LossConfig, beta: float,
                   stitch: bool = False) -> dict[str, torch.Tensor]:
    """All loss terms for valid-chunk rows; ``total`` is what gets back-propagated.

    target (N, L, P, 2), conf (N, L, P) observed points of real frames, chunk_mask (B, C)
    with N = chunk_mask.sum() (rows in the order of ``chunk_mask``). ``stitch``: score the
    border-stitched sequence (``model.stitch``: what decoding outputs), not the raw chunks.
    """
    weights = torch.tensor([cfg.stream_weights[n] for n in kp.STREAM_NAMES], device=target.device)
    weights = weights / weights.sum()
    decoded = stitch_chunks(out.recon, chunk_mask) if stitch else out.recon
    recon = per_stream_mean(huber(decoded, target, cfg.huber_delta), conf)
    if cfg.temporal_mode == "velocity":
        temporal = temporal_velocity(decoded, target, conf, chunk_mask, cfg.huber_delta)
    elif cfg.temporal_mode == "latent":
        temporal = temporal_latent(out.z, chunk_mask)
    else:
        raise ValueError(f"loss.temporal_mode must be velocity or latent, got {cfg.temporal_mode!r}")
    terms = {
        "recon": (weights * recon).sum(),
        "commit": beta * out.vq.commit_loss.mean(),
        "temporal": (weights * temporal).sum(),
        "usage": out.vq.usage_loss.mean(),
    }
    total = terms["recon"] + cfg.lambda_vq * terms["commit"] + cfg.lambda_tem * terms["temporal"] \
        + cfg.lambda_usage * terms["usage"]
    if cfg.lambda_nce > 0:
        terms["nce"] = info_nce(out.z, cfg.nce_temperature)
        total = total + cfg.lambda_nce * terms["nce"]
    per_stream = {"recon": recon, "temporal": temporal, "commit": beta * out.vq.commit_loss,
                  "usage": out.vq.usage_loss}
    for name, values in per_stream.items():
        for i, stream in enumerate(kp.STREAM_NAMES):
            terms[f"{name}/{stream}"] = values[i]
    return {"total": total, **terms}
