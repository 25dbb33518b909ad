"""Rate-distortion report: several checkpoints on one split, MPJPE per stream against tokens
per second after RLE, with the two chunk oracles as the reference lines."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from src.data import keypoints as kp

# The specification's rate: 4-8 codes per chunk over the five streams, 12-24 tokens per second at 30 fps.
SPEC_TOKENS_PER_S = (12.0, 24.0)
_TICKS = (5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000)


def rd_row(checkpoint: str, report: dict, label: str | None = None) -> dict:
    """The rate and error figures of one ``evaluation_report``."""
    r, tok = report["result"], report["result"]["tokens"]
    return {"checkpoint": checkpoint, "label": label or default_label(checkpoint),
            "num_sequences": r["num_sequences"], "num_chunks": r["num_chunks"],
            "codes_per_chunk": tok["codes_per_chunk"], "tokens_per_chunk_rle": tok["tokens_per_chunk_rle"],
            "codes_per_s": tok["codes_per_s"], "tokens_per_s_rle": tok["tokens_per_s_rle"],
            "mpjpe_px": r["mpjpe_px"], "oracle_chunk_mean_px": r["oracle_chunk_mean_px"],
            "oracle_chunk_linear_px": r["oracle_chunk_linear_px"]}


def default_label(checkpoint: str) -> str:
    """``<run folder>/<file>``: enough to tell runs apart without the whole path."""
    path = Path(checkpoint)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def rd_markdown(rows: list[dict], split: str, root: str) -> str:
    """The table: per checkpoint its rate and MPJPE px per stream, then the oracles."""
    streams = " | ".join(kp.STREAM_NAMES)
    lines = [f"Rate-distortion on split `{split}` of `{root}` (MPJPE px per stream, stitched; "
             "tokens after lossless RLE, an NC marker counting as one token).", "",
             f"| checkpoint | codes/chunk | tokens/chunk (RLE) | tokens/s (RLE) | {streams} |",
             "|---|---|---|---|" + "---|" * len(kp.STREAM_NAMES)]
    for row in sorted(rows, key=lambda r: r["tokens_per_s_rle"]):
        cells = " | ".join(f"{row['mpjpe_px'][s]:.2f}" for s in kp.STREAM_NAMES)
        lines.append(f"| {row['label']} | {row['codes_per_chunk']:.1f} | {row['tokens_per_chunk_rle']:.2f} | "
                     f"{row['tokens_per_s_rle']:.1f} | {cells} |")
    for key, name in (("oracle_chunk_mean_px", "oracle: exact chunk mean"),
                      ("oracle_chunk_linear_px", "oracle: exact chunk line")):
        values = np.array([[row[key][s] for s in kp.STREAM_NAMES] for row in rows])
        cells = " | ".join(f"{v:.2f}" for v in values[0])
        lines.append(f"| {name} | | | | {cells} |")
        if np.ptp(values, axis=0).max() > 1e-3:
            lines.append(f"| ({name} differs between checkpoints' data settings; first shown, all in rd.json) "
                         "| | | |" + " |" * len(kp.STREAM_NAMES))
    return "\n".join(lines) + "\n"


def rd_plot(rows: list[dict], out: str | Path, title: str = "") -> Path:
    """One panel per stream: MPJPE px against tokens per second (log scale), oracle lines.

    Rows of one checkpoint file (``ckpt.pt`` and ``ckpt.pt@F=1,...``) are one model at
    several rates: one colour, joined by a line; points of different models are not joined.
    """
    from matplotlib.ticker import ScalarFormatter

    from src.viz._figure import new_figure, save_png

    fig = new_figure(15, 8.5, 100)
    axes = fig.subplots(2, 3).ravel()
    models: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["tokens_per_s_rle"]):
        models.setdefault(row["checkpoint"].partition("@")[0], []).append(row)
    colours = [f"C{i % 10}" for i in range(len(models))]
    rates = np.array([r["tokens_per_s_rle"] for r in rows])
    for ax, stream in zip(axes, kp.STREAM_NAMES):
        ax.axvspan(*SPEC_TOKENS_PER_S, color="tab:green", alpha=0.12, label="specification rate (12-24 tokens/s)")
        for colour, model_rows in zip(colours, models.values()):
            x = [r["tokens_per_s_rle"] for r in model_rows]
            y = [r["mpjpe_px"][stream] for r in model_rows]
            ax.plot(x, y, "o-", color=colour, alpha=0.8, label=" / ".join(r["label"] for r in model_rows))
        ax.axhline(rows[0]["oracle_chunk_mean_px"][stream], color="tab:red", ls="--", label="oracle: exact chunk mean")
        ax.axhline(rows[0]["oracle_chunk_linear_px"][stream], color="tab:orange", ls=":",
                   label="oracle: exact chunk line")
        ax.set_xscale("log")
        low, high = min(rates.min(), SPEC_TOKENS_PER_S[0]) / 1.5, max(rates.max(), SPEC_TOKENS_PER_S[1]) * 1.5
        ax.set_xlim(low, high)
        ax.set_xticks([t for t in _TICKS if low <= t <= high], minor=False)
        ax.set_xticks([], minor=True)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        errors = max(r["mpjpe_px"][stream] for r in rows)
        ax.set_ylim(0, 1.15 * max(errors, rows[0]["oracle_chunk_mean_px"][stream]))
        ax.set_title(f"stream {stream}")
        ax.set_xlabel("tokens per second after RLE (log)")
        ax.set_ylabel("MPJPE px")
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].axis("off")
    axes[-1].legend(handles, labels, loc="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, out)


def rd_report(checkpoints: list[str], out_dir: str | Path, root: str | None = None, split: str = "val",
              device: str = "auto", batch_size: int = 16, labels: list[str] | None = None) -> dict:
    """Evaluate each checkpoint (no training) and write ``rd.json``, ``rd.md`` and ``rd.png``.

    ``ckpt.pt@F=1,LH=1`` evaluates a checkpoint coding fewer levels (``eval-rvq --levels``).
    """
    from src.inference import load_tokenizer, parse_levels
    from src.metrics.report import evaluation_report
    from src.distributed import pick_device
    from src.files import write_json
    from src.files import atomic_path

    if labels is not None and len(labels) != len(checkpoints):
        raise ValueError(f"{len(labels)} labels for {len(checkpoints)} checkpoints")
    dev = pick_device(device)
    rows, roots = [], set()
    for i, checkpoint in enumerate(checkpoints):
        path, _, levels = checkpoint.partition("@")  # "ckpt.pt@F=1,LH=1": fewer levels from the same weights
        model, cfg = load_tokenizer(path, dev, parse_levels(levels))
        if root:
            cfg.data.root = root
        report = evaluation_report(model, cfg, split, dev, batch_size, progress=False)
        roots.add(report["root"])
        rows.append(rd_row(checkpoint, report, labels[i] if labels else None))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_root = ", ".join(sorted(roots))
    result = {"split": split, "root": data_root, "rows": rows}
    write_json(out / "rd.json", result)
    with atomic_path(out / "rd.md") as tmp:
        tmp.write_text(rd_markdown(rows, split, data_root))
    rd_plot(rows, out / "rd.png", f"MPJPE against rate, split {split} of {data_root}")
    return result
