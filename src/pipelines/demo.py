"""The whole pipeline in one call: data -> train -> evaluate -> export tokens -> pictures."""
from __future__ import annotations

import logging
import textwrap
import time
from pathlib import Path

from src.config import Config
from src.data.keypoints import STREAM_NAMES
from src.data.source import read_json
from src.tools.synth import synthetic_marker, write_synthetic_dataset
from src.inference import load_tokenizer
from src.metrics.codebook_health import first_level_min
from src.metrics.report import ORACLE_GAIN, check_lines, evaluation_report, failed_checks, token_rates
from src.pipelines.export import export_tokens, token_settings, write_llm_files
from src.tokens.records import write_jsonl_atomic
from src.distributed import pick_device
from src.train.loop import train
from src.files import write_json
from src.viz.compare import reconstruct, render_recon
from src.viz.token_report import write_token_plots

log = logging.getLogger("signstream.demo")



def limits_note(cfg: Config) -> str:
    """Why a demo-sized run misses the oracle checks (printed under them; figures in docs/newcomer.md)."""
    m = cfg.model
    return textwrap.fill(
        f"why: the demo trains a small model (width {m.width}; {m.rvq.levels} levels of {m.rvq.codebook_size} "
        f"codes, {m.rvq.codes_per_chunk} codes per chunk) for {cfg.train.epochs} epochs, "
        "a few minutes on 2 cores. Matching the chunk-mean oracle (every chunk replaced by its exact mean pose: "
        "hundreds of free numbers), and beating it by 30% on the hands, takes more code per chunk and much "
        "longer training (docs/newcomer.md). The demo shows every stage working end to end; its errors are "
        "not the quality targets.", width=110, subsequent_indent="     ")


def ensure_synthetic(root: str | Path, num: int, seed: int = 0) -> bool:
    """Write the synthetic signer set of ``num`` sequences at ``root`` unless that very set is
    there already (a set of another size or seed is replaced); True if written."""
    root = Path(root)
    marker = synthetic_marker(root)
    if marker is not None and (marker.get("num"), marker.get("seed")) == (num, seed):
        return False
    if marker is None and (root / "split_files.json").is_file():
        # A set written before the marker existed: its size is what its split file lists.
        listed = sum(len(v) for v in read_json(root / "split_files.json", "split file").values())
        if listed == num:
            return False
    write_synthetic_dataset(root, num=num, seed=seed)  # a folder of someone's data: a DataError
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
    vocab, llm, num_llm = write_llm_files(records, tokens, token_settings(cfg))
    gif = render_recon(reconstruct(model, cfg, split=split, device=device), run_dir / "recon.gif",
                       cfg.data.fps, cfg.data.chunk_len)
    plots = write_token_plots(records, run_dir / "viz", max_records=3, raw_counts=stats.raw_code_counts)
    result = report["result"]
    return {"limits": limits_note(cfg),
        "run_dir": run_dir, "seconds": time.time() - start, "split": split, "mpjpe_px": result["mpjpe_px"],
        "oracle_chunk_mean_px": result["oracle_chunk_mean_px"], "jump_ratio": result["temporal"]["jump_ratio"],
        "usage_l0": {s: first_level_min(report["codebook"][s], "usage") for s in STREAM_NAMES},
        "tokens": result["tokens"], "checks": report["checks"], "num_chunks": result["num_chunks"],
        "exported": f"{stats.exported}/{stats.attempted}", "llm_lines": num_llm,
        "outputs": {"checkpoint": checkpoint, "eval report": run_dir / "eval.json", "tokens": tokens,
                    "vocabulary": vocab, "llm examples": llm, "reconstruction": gif,
                    "token pictures": run_dir / "viz", "training log": run_dir / "train.log",
                    "tensorboard": run_dir},
        "plots": plots, "failures": failures,
    }


def _row(label: str, values: dict, fmt: str = "6.2f") -> str:
    return f"{label:<26}" + "  ".join(f"{values[n]:{fmt}}" if n in values else f"{'-':>6}" for n in STREAM_NAMES)


def _verdicts(checks: dict, prefix: str, suffix: str) -> dict[str, str]:
    """PASS/FAIL per stream of the checks named ``<prefix><stream><suffix>``."""
    found = {n: checks.get(f"{prefix}{n}{suffix}") for n in STREAM_NAMES}
    return {n: "PASS" if c["pass"] else "FAIL" for n, c in found.items() if c is not None}


def summary_table(s: dict) -> str:
    """The demo's closing table: figures with their check verdicts, token rates, outputs."""
    checks = s["checks"]
    need = next(c["need"] for name, c in checks.items() if name.startswith("codes_used_"))
    lines = [f"demo finished in {s['seconds']:.0f} s; figures on the {s['split']} split ({s['num_chunks']} chunks)",
             f"{'':26}" + "  ".join(f"{n:>6}" for n in STREAM_NAMES),
             _row("MPJPE px", s["mpjpe_px"]),
             _row("chunk-mean oracle px", s["oracle_chunk_mean_px"]),
             _row("  limit px (vs oracle)", {n: c["limit_px"] for n in STREAM_NAMES
                                             if (c := checks.get(f"mpjpe_{n}_vs_mean_oracle"))}),
             _row("  check <= limit", _verdicts(checks, "mpjpe_", "_vs_mean_oracle"), ">6"),
             _row("codes used l0 % (raw)", {n: 100 * v for n, v in s["usage_l0"].items()}, "6.1f"),
             _row(f"  check >= {need} codes", _verdicts(checks, "codes_used_", "_l0"), ">6"),
             _row("border jump / GT motion", s["jump_ratio"]),
             _row("  check <= 1.5", _verdicts(checks, "jump_ratio_", ""), ">6"),
             "codes used % = distinct codes the encoder picked on the split / codebook size, before RLE "
             "(as eval-rvq and viz/codebook_usage.png)",
             f"codes per chunk {s['tokens']['codes_per_chunk']}; {token_rates(s['tokens'])}",
             f"tokens.jsonl holds {s['exported']} sequences; the LLM examples {s['llm_lines']} of them "
             "(only sequences with a text become prefix <SEP> text lines)",
             *check_lines(checks)[-1:]]
    failed = failed_checks(checks)
    if failed:
        lines += ["not reached: " + line for line in shortfalls(checks)] + [s["limits"]]
    lines.append("outputs:")
    lines += [f"  {k:<16} {v}" for k, v in s["outputs"].items()]
    return "\n".join(lines)


def shortfalls(checks: dict) -> list[str]:
    """One line per failed check: the figure and the limit it missed."""
    out = []
    for name, c in checks.items():
        if c["pass"]:
            continue
        if "model_px" in c:
            gain = ORACLE_GAIN[name.split("_")[1]]
            target = f"{gain:.0%} under the chunk-mean oracle" if gain else "the chunk-mean oracle"
            out.append(f"{name}: {c['model_px']:.2f} px, needs <= {c['limit_px']:.2f} px ({target})")
        elif "used" in c:
            out.append(f"{name}: {c['used']} codes, needs >= {c['need']}")
        else:
            out.append(f"{name}: {c['ratio']:.2f}, needs <= {c['limit']:g}")
    return out
