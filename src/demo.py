"""The whole pipeline in one call: data -> train -> evaluate -> export tokens -> pictures."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from src.config import Config
from src.data.keypoints import STREAM_NAMES
from src.data.synth import write_synthetic_dataset
from src.inference import load_tokenizer
from src.metrics.codebook import first_level_min
from src.metrics.report import evaluation_report
from src.tokens.export import export_tokens, token_settings, write_llm_files
from src.tokens.records import write_jsonl_atomic
from src.train.distributed import pick_device
from src.train.loop import train
from src.train.runlog import write_json
from src.viz.recon import reconstruct, render_recon
from src.viz.token_report import write_token_plots

log = logging.getLogger("signstream.demo")


def ensure_synthetic(root: str | Path, num: int, seed: int = 0) -> bool:
    """Write the synthetic signer set at ``root`` unless one is already there; True if written."""
    root = Path(root)
    if (root / "split_files.json").is_file():
        return False
    write_synthetic_dataset(root, num=num, seed=seed)
    return True


def run_demo(cfg: Config, split: str = "val", num_export: int = 0) -> dict:
    """Train on ``cfg.data.root``, then evaluate, export and draw on ``split``; returns the summary."""
    start = time.time()
    run_dir = train(cfg)
    checkpoint = run_dir / "ckpt_best.pt"
    device = pick_device(cfg.train.device)
    model, cfg = load_tokenizer(checkpoint, device)
    report = evaluation_report(model, cfg, split, device)
    write_json(run_dir / "eval.json", {"checkpoint": str(checkpoint), **report})

    records, stats, failures = export_tokens(model, cfg, split, num_export, str(checkpoint), device)
    tokens = run_dir / "tokens.jsonl"
    write_jsonl_atomic(tokens, records)
    vocab, llm, _ = write_llm_files(records, tokens, token_settings(cfg))
    gif = render_recon(reconstruct(model, cfg, split=split, device=device), run_dir / "recon.gif",
                       cfg.data.fps, cfg.data.chunk_len)
    plots = write_token_plots(records, run_dir / "viz", max_records=3)
    result = report["result"]
    return {
        "run_dir": run_dir, "seconds": time.time() - start, "mpjpe_px": result["mpjpe_px"],
        "oracle_chunk_mean_px": result["oracle_chunk_mean_px"],
        "usage_l0": {s: first_level_min(report["codebook"][s], "usage") for s in STREAM_NAMES},
        "codes_per_chunk": stats.per_chunk(stats.codes), "tokens_per_chunk_rle": stats.per_chunk(stats.tokens),
        "rle_compression": stats.compression, "exported": f"{stats.exported}/{stats.attempted}",
        "outputs": {"checkpoint": checkpoint, "eval report": run_dir / "eval.json", "tokens": tokens,
                    "vocabulary": vocab, "llm examples": llm, "reconstruction": gif,
                    "token pictures": run_dir / "viz", "training log": run_dir / "train.log",
                    "tensorboard": run_dir},
        "plots": plots, "failures": failures,
    }


def summary_table(s: dict) -> str:
    """The demo's closing table."""
    streams = "  ".join(f"{n:>6}" for n in STREAM_NAMES)
    lines = [f"demo finished in {s['seconds']:.0f} s",
             f"{'':24}{streams}",
             f"{'MPJPE px (val)':24}" + "  ".join(f"{s['mpjpe_px'][n]:6.2f}" for n in STREAM_NAMES),
             f"{'chunk-mean oracle px':24}" + "  ".join(f"{s['oracle_chunk_mean_px'][n]:6.2f}" for n in STREAM_NAMES),
             f"{'codebook use l0 %':24}" + "  ".join(f"{100 * s['usage_l0'][n]:6.1f}" for n in STREAM_NAMES),
             f"codes per chunk {s['codes_per_chunk']:.2f}; tokens per chunk after RLE {s['tokens_per_chunk_rle']:.2f} "
             f"(compression {100 * s['rle_compression']:.1f}%); exported {s['exported']} sequences",
             "outputs:"]
    lines += [f"  {k:<16} {v}" for k, v in s["outputs"].items()]
    return "\n".join(lines)
