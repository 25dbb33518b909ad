"""Figures on a private Agg canvas, and atomic writes of what they render."""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float, dpi: float) -> Figure:
    """A figure with its own Agg canvas.

    Pyplot is bypassed on purpose: no global backend switch (an interactive session keeps
    its backend) and no figure registry, so nothing has to be closed to free memory.
    """
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


@contextmanager
def atomic_path(out: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``out``; it replaces ``out`` only if the block succeeds.

    The temporary name keeps ``out``'s suffix because writers pick the format from it.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{secrets.token_hex(4)}.tmp{out.suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def save_png(fig: Figure, out: str | Path) -> Path:
    """Save ``fig`` as a PNG at ``out``, atomically."""
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
