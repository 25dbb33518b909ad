"""The eval-rvq report: checks against the oracles and targets, and a readable table."""
from __future__ import annotations

import dataclasses
import resource
import sys

import numpy as np
import torch

from src.data import keypoints as kp
from src.data.dataset import PoseDataset, make_loader
from src.data.source import read_json
from src.metrics.codebook_health import first_level_min
from src.metrics.evaluate import evaluate
from src.metrics.holds import frames_from_ranges

PARTS = ("F", "LH", "RH", "B")


# How far under its exact chunk-mean oracle each part stream must be: face and body at most
# the oracle (a code that does no better than "the chunk's mean pose" carries no motion),
# the hands, whose shapes change within a chunk, 30% under it.
ORACLE_GAIN = {"F": 0.0, "LH": 0.3, "RH": 0.3, "B": 0.0}


def checks(result: dict, health: dict, codebook_size: int, jump_limit: float = 1.5) -> dict:
    """Pass/fail of the quality targets, each with the figures it compares.

    - every part stream at most (1 - ``ORACLE_GAIN``) x its chunk-mean oracle;
    - no collapse: each stream's level-0 codebook (each part's, with split latents) uses at
      least min(30% of the chunks, 30% of the codebook) distinct codes;
    - chunk-border jumps of the reconstruction at most ``jump_limit`` x the ground truth's
      own frame-to-frame motion.
    """
    out = {}
    for s in PARTS:
        model, limit = result["mpjpe_px"][s], (1 - ORACLE_GAIN[s]) * result["oracle_chunk_mean_px"][s]
        out[f"mpjpe_{s}_vs_mean_oracle"] = {"model_px": model, "limit_px": limit, "pass": model <= limit}
    need = int(np.ceil(min(0.3 * result["num_chunks"], 0.3 * codebook_size)))
    for s in kp.STREAM_NAMES:
        used = first_level_min(health[s], "used")
        out[f"codes_used_{s}_l0"] = {"used": used, "need": need, "pass": used >= need}
    for s in kp.STREAM_NAMES:
        ratio = result["temporal"]["jump_ratio"][s]
        out[f"jump_ratio_{s}"] = {"ratio": ratio, "limit": jump_limit, "pass": ratio <= jump_limit}
    return out


def table(report: dict) -> str:
    """Readable summary of an eval-rvq report."""
    r = report["result"]
    rows = [("stream",) + kp.STREAM_NAMES,
            ("MPJPE px (model)",) + _cells(r["mpjpe_px"]),
            ("  chunkwise, unstitched",) + _cells(r["mpjpe_chunkwise_px"]),
            ("oracle chunk mean",) + _cells(r["oracle_chunk_mean_px"]),
            ("oracle chunk line",) + _cells(r["oracle_chunk_linear_px"]),
            ("oracle sequence mean",) + _cells(r["oracle_sequence_mean_px"]),
            ("jump / GT motion",) + _cells(r["temporal"]["jump_ratio"]),
            ("  chunkwise, unstitched",) + _cells(r["temporal"]["jump_ratio_chunkwise"]),
            ("chunk change rec p50",) + _cells({k: v["p50"] for k, v in r["temporal"]["chunk_change_rec_px"].items()}),
            ("chunk change GT p50",) + _cells({k: v["p50"] for k, v in r["temporal"]["chunk_change_gt_px"].items()})]
    health = report["codebook"]
    for level in dict.fromkeys(label for s in kp.STREAM_NAMES for label in health[s]):  # streams code different levels
        for key, label, scale in (("usage", "codes used %", 100), ("perplexity", "perplexity", 1)):
            rows.append((f"{label} {level}",) + tuple(
                f"{scale * health[s][level][key]:.1f}" if level in health[s] else "-" for s in kp.STREAM_NAMES))
    width = max(len(row[0]) for row in rows)
    lines = ["  ".join([row[0].ljust(width)] + [c.rjust(8) for c in row[1:]]) for row in rows]
    loss, tok, eff = r["loss"], r["tokens"], report["efficiency"]
    sizes = ", ".join(f"{k} {v}" for k, v in report.get("split_sizes", {}).items())
    lines += [f"split {report['split']}: {r['num_sequences']} sequences, {r['num_chunks']} chunks"
              + (f" (listed per split: {sizes}; skipped here: {sum(report['skipped'].values())})" if sizes else ""),
              f"huber recon (weighted) {loss['recon']:.4f}; per stream "
              + " ".join(f"{s} {loss['recon/' + s]:.4f}" for s in kp.STREAM_NAMES),
              "codes used % = distinct codes the encoder picked on this split / codebook size (raw codes, before RLE)",
              f"codes per chunk {tok['codes_per_chunk']:.2f}; " + token_rates(tok) + "; "
              f"per second {tok['codes_per_s']:.1f} codes, {tok['tokens_per_s_rle']:.1f} tokens after lossless RLE",
              "  tokens per chunk after lossless RLE per stream: "
              + " ".join(f"{s} {tok['tokens_per_chunk_rle_stream'][s]:.2f}" for s in kp.STREAM_NAMES),
              *hold_lines(r["holds"]),
              f"speed {eff['sequences_per_s']:.1f} seq/s, {eff['chunks_per_s']:.0f} chunks/s, "
              f"batch latency p50 {eff['batch_latency_ms_p50']:.1f} ms, peak memory {eff['peak_memory_mb']:.0f} MB "
              f"({eff['memory_kind']})"]
    return "\n".join(lines + check_lines(report["checks"]))


def token_rates(tok: dict) -> str:
    """Tokens per chunk after RLE, each figure named by its RLE mode (full depth)."""
    text = (f"tokens per chunk after lossless RLE {tok['tokens_per_chunk_rle']:.2f} "
            f"({100 * tok['rle_compression']:.1f}% fewer)")
    if "tokens_per_chunk_rle_thresholded" in tok:
        text += (f", after RLE with threshold {tok['rle_threshold']:g} (export.rle_threshold, as export-tokens "
                 f"writes) {tok['tokens_per_chunk_rle_thresholded']:.2f} "
                 f"({100 * tok['rle_compression_thresholded']:.1f}% fewer)")
    return text


def check_lines(checks: dict) -> list[str]:
    """One ``check <name>: PASS|FAIL <figures>`` line per check, then the tally."""
    lines = [f"check {name}: {'PASS' if c['pass'] else 'FAIL'} "
             + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items() if k != "pass")
             for name, c in checks.items()]
    failed = failed_checks(checks)
    lines.append(f"checks: {len(checks) - len(failed)} of {len(checks)} pass"
                 + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return lines


def failed_checks(checks: dict) -> list[str]:
    """Names of the checks that did not pass."""
    return [name for name, c in checks.items() if not c["pass"]]


def hold_lines(holds: dict) -> list[str]:
    """One line per kind of hold: per stream, the hold chunks and their RLE compression."""
    still = {"motion": f"GT motion < {holds['motion_px_per_frame']:g} px/frame",
             "annotated": "still frames from the annotations"}
    chunks = {"": "hold chunks (still with the chunk before)", "_static": "static chunks (still on their own)"}
    rle = {"": "lossless RLE", "_thresholded": "thresholded RLE (export.rle_threshold)"}
    lines = []
    for kind, how in still.items():
        for suffix, which in chunks.items():
            for tail, coding in rle.items():
                if kind + suffix + tail in holds:
                    cells = [f"{s} {100 * v['compression']:.1f}% of {v['chunks']}" if v["chunks"] else f"{s} -"
                             for s, v in holds[kind + suffix + tail].items()]
                    lines.append(f"{which}, {how}: fewer tokens after {coding} per stream: " + ", ".join(cells))
    return lines


def _cells(values: dict) -> tuple[str, ...]:
    return tuple(f"{values[s]:.2f}" for s in kp.STREAM_NAMES)


def peak_memory(device) -> tuple[float, str]:
    """Peak memory in MB: CUDA max allocated on a GPU, else the process's peak RSS."""
    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process peak RSS"


def split_sizes(data) -> dict[str, int]:
    """Names listed per split in the root's split file."""
    from pathlib import Path

    return {k: len(v) for k, v in read_json(Path(data.root) / data.split_file, "split file").items()}


def annotated_holds(dataset: PoseDataset) -> dict[str, np.ndarray]:
    """Still frames of the sequences whose annotation lists ``holds`` (the synthetic signer's)."""
    return {n: frames_from_ranges(a["holds"], dataset.lengths[n])
            for n, a in dataset.annotations.items() if isinstance(a, dict) and "holds" in a}


def evaluation_report(model, cfg, split: str, device, batch_size: int = 16, progress: bool = True,
                      hold_motion_px: float = 0.5) -> dict:
    """Evaluate a model on a split (whole sequences) and assemble the full report."""
    data = dataclasses.replace(cfg.data, max_frames=0)  # evaluate whole sequences, never a crop
    dataset = PoseDataset(data, split, progress=progress)
    loader = make_loader(dataset, batch_size, train=False, num_workers=data.num_workers)
    ev, timing = evaluate(model, loader, cfg, device, full=True, progress=progress,
                          hold_motion_px=hold_motion_px, holds=annotated_holds(dataset))
    result, health = ev.result(), ev.codebook_health(model)
    seconds = max(sum(timing["latencies_s"]), 1e-9)
    memory, kind = peak_memory(device)
    efficiency = {"sequences_per_s": result["num_sequences"] / seconds, "chunks_per_s": result["num_chunks"] / seconds,
                  "batch_latency_ms_p50": 1000 * float(np.median(timing["latencies_s"])),
                  "batch_size": batch_size, "peak_memory_mb": memory, "memory_kind": kind, "device": str(device)}
    return {"split": split, "root": str(data.root), "split_sizes": split_sizes(data),
            "skipped": dict(dataset.report.reasons),
            "result": result, "codebook": health, "efficiency": efficiency,
            "checks": checks(result, health, cfg.model.rvq.codebook_size)}
