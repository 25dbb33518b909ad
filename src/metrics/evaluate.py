"""One pass over a split: every loss term, pixel errors, oracles, smoothness and code counts.

Training validation and ``eval-rvq`` share this. Figures are kept as sums and counts so
that they reduce exactly over batches and ranks.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from tqdm import tqdm

from src.config import Config
from src.data import keypoints as kp
from src.data.dataset import Batch
from src.losses import compute_losses, to_timeline
from src.metrics.codebook import code_counts, code_label, usage_stats
from src.metrics.recon import chunk_linear_oracle, chunk_mean_oracle, mpjpe_sums
from src.metrics.temporal import adjacent_chunk_changes, boundary_jump_sums, frame_motion_sums, timeline_px
from src.models.stitch import stitch_chunks
from src.models.tokenizer import SignTokenizer
from src.tokens.rle import count_codes, count_tokens, rle_encode
from src.tokens.sequence import codes_to_streams
from src.train.distributed import all_reduce_sum

S = len(kp.STREAMS)


def chunk_units(batch: Batch) -> torch.Tensor:
    """Each valid chunk's unit length (N,), in the row order of ``batch.chunk_mask``."""
    return batch.unit[:, None].expand_as(batch.chunk_mask)[batch.chunk_mask]


class Evaluator:
    """Accumulates figures over batches; ``full`` adds oracles and temporal smoothness."""

    def __init__(self, cfg: Config, full: bool = False):
        self.cfg, self.full = cfg, full
        self.sums: dict[str, torch.Tensor] = {}
        self.counts = np.zeros((S, cfg.model.rvq.codes_per_stream, cfg.model.rvq.codebook_size), dtype=np.int64)
        self.changes: dict[str, list[torch.Tensor]] = {"rec": [], "gt": []}
        self.num_chunks = 0
        self.num_sequences = 0

    def _add(self, name: str, sums: torch.Tensor | float, counts: torch.Tensor | float) -> None:
        sums = torch.as_tensor(sums, dtype=torch.float64).cpu().reshape(-1)
        pair = torch.stack([sums, torch.as_tensor(counts, dtype=torch.float64).cpu().reshape(-1).expand(sums.numel())])
        self.sums[name] = self.sums[name] + pair if name in self.sums else pair

    @torch.no_grad()
    def update(self, batch: Batch, out, losses: dict[str, torch.Tensor]) -> None:
        """Add one batch: ``out`` is the model output on the batch's valid chunks."""
        x, conf, cm = batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask], batch.chunk_mask
        n = x.shape[0]
        self.num_chunks += n
        self.num_sequences += len(batch.names)
        for key, value in losses.items():
            self._add(f"loss/{key}", value.detach().float() * n, n)
        units, chunkwise = chunk_units(batch), out.recon.float()
        recon = stitch_chunks(chunkwise, cm) if self.cfg.model.stitch else chunkwise
        self._add("mpjpe_px", *mpjpe_sums(recon, x, conf, units))
        self.counts += code_counts(out.vq.codes.cpu().numpy(), self.counts.shape[-1])
        if not self.full:
            return
        self._add("mpjpe_chunkwise_px", *mpjpe_sums(chunkwise, x, conf, units))
        self._add("oracle_chunk_mean_px", *mpjpe_sums(chunk_mean_oracle(x, conf), x, conf, units))
        self._add("oracle_chunk_linear_px", *mpjpe_sums(chunk_linear_oracle(x, conf), x, conf, units))
        rec, gt = timeline_px(recon, cm, batch.unit), timeline_px(x, cm, batch.unit)
        mask, chunk_len = to_timeline(conf, cm), x.shape[1]
        self._add("motion_gt_px", *frame_motion_sums(gt, mask))
        self._add("motion_rec_px", *frame_motion_sums(rec, mask))
        self._add("jump_gt_px", *boundary_jump_sums(gt, mask, chunk_len))
        self._add("jump_rec_px", *boundary_jump_sums(rec, mask, chunk_len))
        self._add("jump_rec_chunkwise_px",
                  *boundary_jump_sums(timeline_px(chunkwise, cm, batch.unit), mask, chunk_len))
        self.changes["rec"].append(adjacent_chunk_changes(rec, mask, cm, chunk_len).cpu())
        self.changes["gt"].append(adjacent_chunk_changes(gt, mask, cm, chunk_len).cpu())
        codes, start = out.vq.codes.cpu().numpy(), 0
        for c in cm.sum(1).tolist():
            streams = codes_to_streams(codes[start:start + c])
            self._add("rle_tokens", count_tokens(rle_encode(streams, max_run=self.cfg.export.max_run)),
                      count_codes(streams))
            start += c

    def reduce(self) -> None:
        """Sum every figure over ranks (the percentiles of ``full`` stay per process)."""
        keys = sorted(self.sums)
        flat = torch.cat([self.sums[k].reshape(-1) for k in keys] + [
            torch.tensor([self.num_chunks, self.num_sequences], dtype=torch.float64),
            torch.from_numpy(self.counts.astype(np.float64)).reshape(-1)])
        all_reduce_sum(flat)
        i = 0
        for k in keys:
            size = self.sums[k].numel()
            self.sums[k] = flat[i:i + size].view_as(self.sums[k])
            i += size
        self.num_chunks, self.num_sequences = int(flat[i]), int(flat[i + 1])
        self.counts = flat[i + 2:].numpy().round().astype(np.int64).reshape(self.counts.shape)

    def _mean(self, name: str) -> torch.Tensor:
        s, c = self.sums[name]
        return s / c.clamp_min(1)

    def _per_stream(self, name: str) -> dict[str, float]:
        return dict(zip(kp.STREAM_NAMES, self._mean(name).tolist()))

    def result(self) -> dict:
        """Nested plain dict of every figure."""
        out: dict = {
            "num_sequences": self.num_sequences, "num_chunks": self.num_chunks,
            "loss": {k.split("/", 1)[1]: float(self._mean(k)[0]) for k in sorted(self.sums) if k.startswith("loss/")},
            "mpjpe_px": self._per_stream("mpjpe_px"),
        }
        if self.full:
            out["mpjpe_chunkwise_px"] = self._per_stream("mpjpe_chunkwise_px")
            out["oracle_chunk_mean_px"] = self._per_stream("oracle_chunk_mean_px")
            out["oracle_chunk_linear_px"] = self._per_stream("oracle_chunk_linear_px")
            out["temporal"] = self._temporal()
            tokens, codes = self.sums["rle_tokens"][:, 0].tolist()
            out["tokens"] = {"codes_per_chunk": codes / max(self.num_chunks, 1),
                             "tokens_per_chunk_rle": tokens / max(self.num_chunks, 1),
                             "rle_compression": 1 - tokens / max(codes, 1)}
        return out

    def _temporal(self) -> dict:
        motion = self._mean("motion_gt_px").clamp_min(1e-9)
        result = {
            "motion_gt_px": self._per_stream("motion_gt_px"),
            "motion_rec_px": self._per_stream("motion_rec_px"),
            "jump_gt_px": self._per_stream("jump_gt_px"),
            "jump_rec_px": self._per_stream("jump_rec_px"),
            "jump_ratio": dict(zip(kp.STREAM_NAMES, (self._mean("jump_rec_px") / motion).tolist())),
            "jump_ratio_chunkwise": dict(zip(kp.STREAM_NAMES,
                                             (self._mean("jump_rec_chunkwise_px") / motion).tolist())),
        }
        for which in ("rec", "gt"):
            rows = torch.cat(self.changes[which]) if self.changes[which] else torch.zeros(0, S)
            result[f"chunk_change_{which}_px"] = {
                name: _spread(rows[:, i].numpy()) for i, name in enumerate(kp.STREAM_NAMES)}
        return result

    def codebook_health(self, model: SignTokenizer | None = None) -> dict:
        """Per stream and codebook (``code_label``): usage, perplexity, entropy, dead fraction
        (training state if a model is given)."""
        health = {}
        for s, name in enumerate(kp.STREAM_NAMES):
            health[name] = {}
            for j in range(self.cfg.model.rvq.stream_codes(name)):
                unused = dead_after = None
                if model is not None:
                    cb = model.quantizer.codebook(name, j)
                    unused, dead_after = cb["unused_steps"].cpu().numpy(), cb["dead_after"]
                label = code_label(j, self.cfg.model.rvq.splits)
                health[name][label] = usage_stats(self.counts[s, j], unused, dead_after)
        return health


def _spread(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan")}
    return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95))}


def autocast(device: torch.device, cfg: Config) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (and on CPU only when asked); otherwise a no-op."""
    use = cfg.train.amp and (device.type == "cuda" or cfg.train.amp_cpu)
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: SignTokenizer, loader, cfg: Config, device: torch.device, full: bool = False,
             progress: bool = False) -> tuple[Evaluator, dict]:
    """Run the model (eval mode, no codebook updates) over a loader; returns the evaluator and timing."""
    was_training = model.training
    model.eval()
    ev = Evaluator(cfg, full)
    latencies = []
    for batch in tqdm(loader, desc="eval", disable=not progress or None, leave=False):
        batch = batch.to(device)
        x, conf = batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask]
        start = time.perf_counter()
        with autocast(device, cfg):
            out = model(x, conf, batch.chunk_mask)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        latencies.append(time.perf_counter() - start)
        with autocast(device, cfg):
            losses = compute_losses(out, x, conf, batch.chunk_mask, cfg.loss, cfg.model.rvq.commitment_beta,
                                    cfg.model.stitch)
        ev.update(batch, out, losses)
    model.train(was_training)
    return ev, {"latencies_s": latencies}
