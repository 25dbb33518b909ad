"""Plots of sign tokens: a per-video timeline, and codebook usage."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from src.tokens.rle import is_nc, rle_decode
from src.viz._figure import new_figure, save_png

_NC_HATCH = "////"
_MAX_LABELLED_CHUNKS = 40  # beyond this, code numbers in the cells are too cramped to read


def _palette() -> np.ndarray:
    """``(38, 4)`` RGBA: tab20 + tab20b without tab20's greys, which are kept for NC spans."""
    colours = [*colormaps["tab20"].colors[:14], *colormaps["tab20"].colors[16:],
               *colormaps["tab20b"].colors]
    return np.array([to_rgba(c) for c in colours])


_PALETTE = _palette()


def _ink(background: np.ndarray) -> str:
    """Black or white text, whichever reads better on ``background`` (RGBA)."""
    luminance = background[:3] @ np.array([0.299, 0.587, 0.114])
    return "black" if luminance > 0.5 else "white"


def _held_mask(runs: list[tuple[int, int]], n: int) -> np.ndarray:
    """``(n,)`` bool: the chunks covered by NC runs."""
    held = np.zeros(n, bool)
    for t, k in runs:
        held[t:t + k] = True
    return held


@dataclass
class _Timeline:
    """A record decoded for plotting: ``codes[s][t]`` = that chunk's codes per level."""

    streams: list[str]
    codes: dict[str, list[list[int]]]
    nc_runs: dict[str, list[tuple[int, int]]]  # (first chunk, length) per run
    num_chunks: int

    def held(self, stream: str) -> np.ndarray:
        return _held_mask(self.nc_runs[stream], self.num_chunks)


def _decode(record: dict) -> _Timeline:
    """The record's codes per chunk (NC runs expanded by the token codec) and where the runs are."""
    entries = record["tokens"]
    codes = rle_decode(entries, where="tokens")
    runs = {s: [(e["t"], e[s][1]) for e in entries if is_nc(e.get(s))] for s in codes}
    return _Timeline(list(codes), codes, runs, len(entries))


def _num_levels(record: dict, tl: _Timeline) -> int:
    longest = max((len(c) for seq in tl.codes.values() for c in seq if c), default=1)
    return max(int(record.get("meta", {}).get("num_levels", 0)), longest)


def _timeline_rgba(tl: _Timeline, levels: int) -> np.ndarray:
    """``(streams * levels, chunks, 4)``: code colours, white where nothing is known, and
    faded colours where a stream only repeats (NC)."""
    img = np.ones((len(tl.streams) * levels, tl.num_chunks, 4))
    for si, s in enumerate(tl.streams):
        held = tl.held(s)
        for t, codes in enumerate(tl.codes[s]):
            for lv, code in enumerate(codes or []):
                colour = _PALETTE[int(code) % len(_PALETTE)]
                img[si * levels + lv, t] = 0.3 * colour + 0.7 if held[t] else colour
    return img


def _mark_nc_runs(ax: Axes, tl: _Timeline, levels: int, min_labelled: int,
                  coded: dict[str, int] | None = None) -> None:
    """Hatch every NC run over the levels its stream codes (``coded``); write "NC k" on runs of at
    least ``min_labelled`` chunks."""
    coded = coded or {}
    for si, s in enumerate(tl.streams):
        rows = min(coded.get(s, levels), levels)
        for t, k in tl.nc_runs[s]:
            ax.add_patch(Rectangle((t - 0.5, si * levels - 0.5), k, rows, fill=False,
                                   hatch=_NC_HATCH, edgecolor="0.45", lw=0.6))
            if k >= min_labelled:
                ax.text(t - 0.5 + k / 2, si * levels + rows / 2 - 0.5, f"NC {k}", ha="center",
                        va="center", fontsize=6, color="0.1",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))


def _label_codes(ax: Axes, tl: _Timeline, levels: int) -> None:
    for si, s in enumerate(tl.streams):
        held = tl.held(s)
        for t, codes in enumerate(tl.codes[s]):
            for lv, code in enumerate([] if held[t] else codes or []):
                ax.text(t, si * levels + lv, str(code), ha="center", va="center", fontsize=5,
                        color=_ink(_PALETTE[int(code) % len(_PALETTE)]))


def _timeline_axes(ax: Axes, tl: _Timeline, levels: int, seconds_per_chunk: float,
                   coded: dict[str, int] | None = None) -> None:
    """``coded``: codes per chunk of each stream (``meta.codes_per_stream``); rows past them are
    levels the stream never codes, labelled as such rather than left to look like gaps."""
    rows, coded = len(tl.streams) * levels, coded or {}
    ax.set_yticks(range(rows), [f"{s} L{lv}" + ("" if lv < coded.get(s, levels) else " (none)")
                                for s in tl.streams for lv in range(levels)], fontsize=7)
    for si in range(1, len(tl.streams)):
        ax.axhline(si * levels - 0.5, color="black", lw=1.0)
    ax.set_xlabel("chunk index")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a long timeline must not get ticks at 2.5
    ax.set_ylabel("stream, residual level")
    top = ax.secondary_xaxis("top", functions=(lambda c: c * seconds_per_chunk,
                                               lambda sec: sec / seconds_per_chunk))
    top.set_xlabel(f"time (s), {seconds_per_chunk * 1000:.0f} ms per chunk", fontsize=8)
    top.tick_params(labelsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(handles=[Patch(fc="0.9", ec="0.45", hatch=_NC_HATCH,
                             label="NC: repeats previous codes")],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def plot_token_timeline(record: dict, out: str | Path) -> Path:
    """Plot one video's tokens as a strip (chunks x stream levels, colour = code) to a PNG.

    Run-length repeats (``["NC", k]``) are drawn faded and hatched with their length.
    """
    tl = _decode(record)
    if tl.num_chunks == 0:
        raise ValueError(f"record {record.get('video_name')!r} has no tokens to plot")
    levels = _num_levels(record, tl)
    rows = len(tl.streams) * levels
    width = min(max(6.0, 1.8 + 0.22 * tl.num_chunks), 20.0)
    fig = new_figure(width, 1.6 + 0.2 * rows, 110)
    ax = fig.add_subplot()
    ax.imshow(_timeline_rgba(tl, levels), aspect="auto", interpolation="nearest",
              extent=(-0.5, tl.num_chunks - 0.5, rows - 0.5, -0.5))
    points_per_chunk = 0.75 * width * 72 / max(tl.num_chunks, 1)
    coded = record.get("meta", {}).get("codes_per_stream") or {}
    _mark_nc_runs(ax, tl, levels, min_labelled=max(2, math.ceil(22 / points_per_chunk)), coded=coded)
    if tl.num_chunks <= _MAX_LABELLED_CHUNKS:
        _label_codes(ax, tl, levels)
    _timeline_axes(ax, tl, levels, record.get("chunk_len", 10) / record.get("fps", 30), coded)
    ax.set_title(f"{record.get('video_name', '?')}: {tl.num_chunks} chunks", fontsize=9)
    fig.tight_layout()
    return save_png(fig, out)


def code_usage(counts: np.ndarray) -> tuple[float, float]:
    """``(fraction of codes used, perplexity)`` of one level's counts ``[K]``.

    Perplexity is ``exp(entropy)`` of the usage distribution: 1 when one code (or, by
    convention, none) is used, ``K`` when all are used equally.
    """
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    if total <= 0:
        return 0.0, 1.0
    p = counts[counts > 0] / total
    return float((counts > 0).mean()), float(np.exp(-(p * np.log(p)).sum()))


def _usage_panel(ax: Axes, counts: np.ndarray, name: str) -> None:
    usage, ppl = code_usage(counts)
    used = np.sort(counts[counts > 0])[::-1]
    if len(used):
        ax.stairs(used, np.arange(len(used) + 1), fill=True, baseline=0.5, color="#4a6fa5")
    ax.set_yscale("log")
    ax.set_xlim(0, len(counts))
    # A decade at least, so that an unused level does not get a squeezed, odd log axis.
    ax.set_ylim(0.5, max(used[0] * 2 if len(used) else 0, 10))
    ax.set_title(name, fontsize=8)
    ax.tick_params(which="both", labelsize=6)
    ax.text(0.97, 0.95, f"used {usage:.1%} ({len(used)}/{len(counts)})\n"
            f"perplexity {ppl:.1f}", transform=ax.transAxes, ha="right", va="top", fontsize=7,
            bbox=dict(fc="white", ec="none", alpha=0.7, pad=1))


def _heatmap_panel(ax: Axes, counts: np.ndarray, name: str) -> None:
    im = ax.imshow(np.log10(1 + counts), aspect="auto", interpolation="nearest",
                   cmap="viridis", vmin=0)
    ax.set_yticks(range(len(counts)), [f"L{lv}" for lv in range(len(counts))], fontsize=6)
    ax.tick_params(labelsize=6)
    ax.set_title(f"{name}: counts per code", fontsize=8)
    cbar = ax.figure.colorbar(im, ax=ax, pad=0.01)
    cbar.set_label("log10(1 + count)", fontsize=6)
    cbar.ax.tick_params(labelsize=6)


def plot_codebook_usage(counts: dict[str, np.ndarray], out: str | Path, title: str = "",
                        coded: dict[str, int] | None = None) -> Path:
    """Plot codebook usage to a PNG, one row per stream.

    ``counts[stream]`` is ``[num_levels, codebook_size]``. Per level: code counts sorted by
    frequency (log y) with usage % and perplexity; last column: a heatmap of raw counts.
    ``coded``: codes per chunk of each stream (``meta.codes_per_stream``); levels past them,
    which the stream never codes, get no panel.
    """
    coded = coded or {}
    arrays = {s: np.atleast_2d(np.asarray(c))[:coded.get(s)] for s, c in counts.items()}
    levels = max(len(c) for c in arrays.values())
    fig = new_figure(2.6 * levels + 4.5, 1.9 * len(arrays) + 0.6, 100)
    grid = fig.add_gridspec(len(arrays), levels + 1, width_ratios=[1] * levels + [1.7])
    for row, (s, c) in enumerate(arrays.items()):
        for lv in range(len(c)):
            ax = fig.add_subplot(grid[row, lv])
            _usage_panel(ax, c[lv], f"{s} L{lv}")
            ax.set_xlabel("code rank (most used first)" if row == len(arrays) - 1 else "", fontsize=7)
            ax.set_ylabel("times picked" if lv == 0 else "", fontsize=7)
        ax = fig.add_subplot(grid[row, levels])
        _heatmap_panel(ax, c, s)
        ax.set_xlabel("code id" if row == len(arrays) - 1 else "", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, out)
