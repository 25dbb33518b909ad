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
from src.hardware import bf16_supported
from src.losses import compute_losses, to_timeline
from src.metrics.codebook_health import code_counts, code_label, usage_stats
from src.metrics.holds import annotated_hold_chunks, hold_token_sums, motion_hold_chunks
from src.metrics.pixel_error import chunk_linear_oracle, chunk_mean_oracle, mpjpe_sums, sequence_mean_oracle
from src.metrics.temporal import adjacent_chunk_changes, boundary_jump_sums, frame_motion_sums, timeline_px
from src.models.stitch import stitch_chunks
from src.models.tokenizer import SignTokenizer
from src.tokens.rle import chunk_token_counts, count_codes, count_tokens, rle_encode
from src.tokens.select import unchanged_chunks
from src.tokens.sequence import codes_to_streams
from src.distributed import all_reduce_sum

S = len(kp.STREAMS)


def chunk_units(batch: Batch) -> torch.Tensor:
    """Each valid chunk's unit length (N,), or (N, L) per frame, in the row order of ``batch.chunk_mask``."""
    if batch.unit.dim() == 3:
        return batch.unit[batch.chunk_mask]
    return batch.unit[:, None].expand_as(batch.chunk_mask)[batch.chunk_mask]


class Evaluator:
    """Accumulates figures over batches; ``full`` adds oracles, temporal smoothness, token
    rates and codes on holds.

    Holds are chunks where the ground truth stays still (``hold_motion_px`` per frame, see
    :mod:`src.metrics.holds`); ``holds`` optionally gives per-sequence still frames known
    from the data (the synthetic signer's annotations).
    """

    def __init__(self, cfg: Config, full: bool = False, hold_motion_px: float = 0.5,
                 holds: dict[str, np.ndarray] | None = None):
        self.cfg, self.full = cfg, full
        self.hold_motion_px, self.holds = hold_motion_px, holds or {}
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
        cm = batch.chunk_mask
        x, conf = (t[cm] for t in batch.truth())
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
        sequence = torch.arange(cm.shape[0], device=cm.device)[:, None].expand_as(cm)[cm]
        self._add("oracle_sequence_mean_px", *mpjpe_sums(sequence_mean_oracle(x, conf, sequence), x, conf, units))
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
        self._add_tokens(batch, out.vq.codes.cpu().numpy(), gt, mask, recon)

    def _add_tokens(self, batch: Batch, codes: np.ndarray, gt: torch.Tensor, mask: torch.Tensor,
                    recon: torch.Tensor) -> None:
        """Codes and RLE tokens per stream, overall and on hold chunks (motion and annotated); with
        ``export.rle_threshold`` > 0 also the tokens of thresholded RLE (what export-tokens writes
        then, from the input and the decoded chunks ``recon``)."""
        cm, chunk_len = batch.chunk_mask, self.cfg.data.chunk_len
        held = {span: motion_hold_chunks(gt, mask, cm, chunk_len, self.hold_motion_px, span).cpu().numpy()
                for span in (2, 1)}
        threshold, max_run = self.cfg.export.rle_threshold, self.cfg.export.max_run
        if threshold > 0:  # the model's input and its decoded chunks, as the export compares them
            x_in, seen_in = batch.x[cm].cpu().numpy(), batch.conf[cm].cpu().numpy().astype(bool)
            decoded = recon.cpu().numpy()
        start = 0
        for b, c in enumerate(cm.sum(1).tolist()):
            streams = codes_to_streams(codes[start:start + c])
            n_codes = np.array([[len(v) for v in streams[s]] for s in kp.STREAM_NAMES]).T
            tokens = _per_chunk(chunk_token_counts(rle_encode(streams, max_run=max_run)))
            self._add("stream_tokens", tokens.sum(0), n_codes.sum(0))
            codings = {"": tokens}
            if threshold > 0:
                rows = slice(start, start + c)
                unchanged = unchanged_chunks(x_in[rows], seen_in[rows], threshold, streams, decoded[rows])
                entries = rle_encode(streams, unchanged, max_run)
                self._add("rle_tokens_thresholded", count_tokens(entries), count_codes(streams))
                codings["_thresholded"] = _per_chunk(chunk_token_counts(entries))
            start += c
            frames = self.holds.get(batch.names[b])
            for tail, coded in codings.items():
                self._add_holds("motion" + tail, coded, n_codes, held[2][b, :c])
                self._add_holds("motion_static" + tail, coded, n_codes, held[1][b, :c])
                if frames is not None:
                    for span, kind in ((2, "annotated"), (1, "annotated_static")):
                        known = annotated_hold_chunks(frames, int(batch.num_frames[b]), c, chunk_len, span)
                        self._add_holds(kind + tail, coded, n_codes, np.repeat(known[:, None], S, 1))

    def _add_holds(self, kind: str, tokens: np.ndarray, codes: np.ndarray, held: np.ndarray) -> None:
        tokens_held, codes_held, chunks_held = hold_token_sums(tokens, codes, held)
        self._add(f"hold_{kind}_tokens", tokens_held, codes_held)
        self._add(f"hold_{kind}_chunks", chunks_held, chunks_held)

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
            out["oracle_sequence_mean_px"] = self._per_stream("oracle_sequence_mean_px")
            out["temporal"] = self._temporal()
            out["tokens"] = self._tokens()
            out["holds"] = self._holds()
        return out

    def _tokens(self) -> dict:
        """Codes and tokens after lossless RLE (an NC marker is one token), per chunk and per second;
        with ``export.rle_threshold`` > 0 also ``*_thresholded``: after RLE that also counts a chunk
        whose pose stays within the threshold of its run's anchor as unchanged."""
        tokens, codes = self.sums["stream_tokens"].numpy()
        chunks, per_s = max(self.num_chunks, 1), self.cfg.data.fps / self.cfg.data.chunk_len
        out = {"codes_per_chunk": codes.sum() / chunks, "tokens_per_chunk_rle": tokens.sum() / chunks,
               "rle_compression": 1 - tokens.sum() / max(codes.sum(), 1),
               "codes_per_s": codes.sum() / chunks * per_s, "tokens_per_s_rle": tokens.sum() / chunks * per_s,
               "tokens_per_chunk_rle_stream": dict(zip(kp.STREAM_NAMES, (tokens / chunks).tolist())),
               "chunks_per_s": per_s, "rle_threshold": self.cfg.export.rle_threshold}
        if "rle_tokens_thresholded" in self.sums:
            held, all_codes = self.sums["rle_tokens_thresholded"][:, 0].tolist()
            out["tokens_per_chunk_rle_thresholded"] = held / chunks
            out["rle_compression_thresholded"] = 1 - held / max(all_codes, 1)
        return out

    def _holds(self) -> dict:
        """Per stream, over hold chunks: how many, their codes, RLE tokens and the compression."""
        out = {"motion_px_per_frame": self.hold_motion_px}
        for kind in (base + tail for tail in ("", "_thresholded")
                     for base in ("motion", "motion_static", "annotated", "annotated_static")):
            if f"hold_{kind}_tokens" not in self.sums:
                continue
            (tokens, codes), (chunks, _) = self.sums[f"hold_{kind}_tokens"].numpy(), \
                self.sums[f"hold_{kind}_chunks"].numpy()
            out[kind] = {s: {"chunks": int(chunks[i]), "codes": int(codes[i]), "tokens_rle": int(tokens[i]),
                             "compression": float(1 - tokens[i] / codes[i]) if codes[i] else None}
                         for i, s in enumerate(kp.STREAM_NAMES)}
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
                    unused, dead_after = cb["unused"].cpu().numpy(), cb["dead_after"]
                label = code_label(j, self.cfg.model.rvq.splits)
                health[name][label] = usage_stats(self.counts[s, j], unused, dead_after)
        return health


def _per_chunk(tokens: dict[str, list[int]]) -> np.ndarray:
    """Per-stream token counts per chunk -> (C, S)."""
    return np.array([tokens[s] for s in kp.STREAM_NAMES]).T


def _spread(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan")}
    return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95))}


def autocast(device: torch.device, cfg: Config) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (and on CPU only when asked), where the device has bf16 (src/hardware.py);
    otherwise a no-op."""
    use = cfg.train.amp and (device.type == "cuda" or cfg.train.amp_cpu) and bf16_supported(device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: SignTokenizer, loader, cfg: Config, device: torch.device, full: bool = False,
             progress: bool = False, hold_motion_px: float = 0.5,
             holds: dict[str, np.ndarray] | None = None) -> tuple[Evaluator, dict]:
    """Run the model (eval mode, no codebook updates) over a loader; returns the evaluator and timing.

    The model codes ``batch.x``; the metrics score against ``batch.truth()``.
    """
    was_training = model.training
    model.eval()
    ev = Evaluator(cfg, full, hold_motion_px, holds)
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
