"""Figures on a private Agg canvas, and atomic writes of what they render."""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from src.files import atomic_path


def new_figure(width: float, height: float, dpi: float) -> Figure:
    """A figure with its own Agg canvas.

    Pyplot is bypassed on purpose: no global backend switch (an interactive session keeps
    its backend) and no figure registry, so nothing has to be closed to free memory.
    """
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, out: str | Path) -> Path:
    """Save ``fig`` as a PNG at ``out``, atomically."""
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
