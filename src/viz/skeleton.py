"""Whole-body skeleton drawing, and original-vs-reconstruction renders (PNG, GIF, MP4)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from src.data.keypoints import (
    BODY, BODY_BONES, FACE, FACE_BONES, L_SHOULDER, L_WRIST, LEFT_HAND, LEFT_HAND_BONES, NOSE, NUM_ROWS,
    R_SHOULDER, R_WRIST, RIGHT_HAND, RIGHT_HAND_BONES, SIZE_ROW,
)
from src.files import atomic_path
from src.viz._figure import new_figure

log = logging.getLogger(__name__)

# 6 x 3.4 in at 160 dpi = 960 x 544 px, both sides multiples of 16, so ffmpeg does not
# resize. At 480 x 272 a hand was ~20 px, too small to judge a handshape; now ~40-60 px, for
# ~1.5x the render time and ~2x the GIF size. A single PNG is cheap: 1.5x that resolution.
_FIGSIZE = (6.0, 3.4)
_ANIM_DPI = 160
_PNG_DPI = 240


@dataclass(frozen=True)
class _Part:
    label: str
    rows: np.ndarray   # keypoint rows drawn as dots
    bones: np.ndarray  # (n, 2) row pairs
    colour: str
    linewidth: float
    markersize: float


def _part(label: str, rows: range, bones: tuple, colour: str, lw: float, ms: float) -> _Part:
    return _Part(label, np.asarray(rows), np.asarray(bones, dtype=int), colour, lw, ms)


# Body is drawn first and thickest so that the thin face and finger lines stay on top.
# The two hands get colours far apart (orange vs. purple) since mixing them up is the error
# a reader most needs to spot.
_PARTS: tuple[_Part, ...] = (
    _part("body", BODY, BODY_BONES, "#4a6fa5", 1.5, 2.0),
    _part("face", FACE, FACE_BONES, "#2e9e57", 0.7, 1.0),
    _part("left hand", LEFT_HAND, LEFT_HAND_BONES, "#f07d0a", 0.9, 1.4),
    _part("right hand", RIGHT_HAND, RIGHT_HAND_BONES, "#9b3fc4", 0.9, 1.4),
)


# Drawn in the body's colour besides the COCO bones. Each hand's root is the hand model's own
# wrist, which need not sit on the body model's wrist (and in the parts view each comes from
# its own stream): a line shows the two belong together and how far apart they are. COCO has
# no neck point; a neck from the shoulders' midpoint to the nose keeps the head on the body.
_WRIST_TO_HAND = np.array([(L_WRIST, LEFT_HAND.start), (R_WRIST, RIGHT_HAND.start)])


def _joins(pose: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """``(9, 2)`` polyline (``a, b, NaN`` per segment): both wrist-to-hand-root joins and the neck."""
    seg = np.full((3, 3, 2), np.nan)
    seg[:2, 0], seg[:2, 1] = pose[_WRIST_TO_HAND[:, 0], :2], pose[_WRIST_TO_HAND[:, 1], :2]
    seg[:2][~(visible[_WRIST_TO_HAND[:, 0]] & visible[_WRIST_TO_HAND[:, 1]])] = np.nan
    if visible[[L_SHOULDER, R_SHOULDER, NOSE]].all():
        seg[2, 0], seg[2, 1] = pose[[L_SHOULDER, R_SHOULDER], :2].mean(axis=0), pose[NOSE, :2]
    return seg.reshape(-1, 2)


def _visible(pose: np.ndarray, conf_thresh: float) -> np.ndarray:
    """``(134,)`` bool: finite position and score >= threshold (a NaN score fails)."""
    return np.isfinite(pose[:, :2]).all(axis=1) & (pose[:, 2] >= conf_thresh)


def _bone_polyline(pose: np.ndarray, bones: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """``(3n, 2)`` points ``a, b, NaN`` per bone; one Line2D then draws all bones of a part."""
    seg = np.full((len(bones), 3, 2), np.nan)
    seg[:, 0], seg[:, 1] = pose[bones[:, 0], :2], pose[bones[:, 1], :2]
    seg[~(visible[bones[:, 0]] & visible[bones[:, 1]])] = np.nan
    return seg.reshape(-1, 2)


def _frame_size(poses: np.ndarray) -> tuple[float, float]:
    """Video ``(W, H)`` from the first valid size row of ``poses`` (one frame or ``[T, ...]``),
    else the extent of the finite keypoints: a lost first frame must not shrink the view."""
    poses = poses.reshape(-1, NUM_ROWS, 3)
    sizes = poses[:, SIZE_ROW, :2]
    ok = np.isfinite(sizes).all(axis=1) & (sizes > 0).all(axis=1)
    if ok.any():
        w, h = sizes[ok.argmax()]
        return float(w), float(h)
    xy = poses[:, 1:, :2].reshape(-1, 2)
    w, h = np.maximum(xy[np.isfinite(xy).all(axis=1)].max(axis=0, initial=1.0), 1.0)
    return float(w), float(h)


class _PoseArtist:
    """The lines of one skeleton on an axes, updated in place frame after frame."""

    def __init__(self, ax: Axes, conf_thresh: float):
        self.conf_thresh = conf_thresh
        self.lines: list[tuple[_Part, Line2D, Line2D]] = []
        for p in _PARTS:
            bones = Line2D([], [], color=p.colour, lw=p.linewidth, label=p.label,
                           solid_capstyle="round")
            dots = Line2D([], [], color=p.colour, ls="none", marker="o", ms=p.markersize,
                          mew=0)
            ax.add_line(bones)
            ax.add_line(dots)
            self.lines.append((p, bones, dots))
        body = _PARTS[0]
        self.joins = Line2D([], [], color=body.colour, lw=body.linewidth, solid_capstyle="round", zorder=1.9)
        ax.add_line(self.joins)  # under the parts' lines (zorder 2)

    @property
    def artists(self) -> list[Line2D]:
        return [self.joins] + [line for _, bones, dots in self.lines for line in (bones, dots)]

    def update(self, pose: np.ndarray) -> None:
        visible = _visible(pose, self.conf_thresh)
        self.joins.set_data(*_joins(pose, visible).T)
        for p, bones, dots in self.lines:
            bones.set_data(*_bone_polyline(pose, p.bones, visible).T)
            shown = p.rows[visible[p.rows]]
            dots.set_data(pose[shown, 0], pose[shown, 1])


def _setup_axes(ax: Axes, poses: np.ndarray, title: str | None) -> None:
    w, h = _frame_size(poses)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)  # image coordinates: y grows downwards
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.75")
    if title is not None:
        ax.set_title(title, fontsize=9)


def draw_pose(ax: Axes, pose: np.ndarray, conf_thresh: float = 0.3,
              title: str | None = None) -> None:
    """Draw one frame ``[134, 3]`` (pixels, row 0 = size row) as a coloured skeleton on ``ax``.

    Bones are drawn only when both ends are finite with score >= ``conf_thresh``.
    """
    _check_frame(pose)
    _setup_axes(ax, pose, title)
    _PoseArtist(ax, conf_thresh).update(pose)


def _check_frame(pose: np.ndarray) -> None:
    if pose.shape != (NUM_ROWS, 3):
        raise ValueError(f"expected a pose frame of shape ({NUM_ROWS}, 3), got {pose.shape}")


class _ComparisonFigure:
    """Two skeleton panels and a frame counter, built once and re-drawn per frame."""

    def __init__(self, original: np.ndarray, recon: np.ndarray, titles: tuple[str, str],
                 conf_thresh: float, dpi: int):
        self.poses = (original, recon)
        self.fig = new_figure(*_FIGSIZE, dpi=dpi)
        axes = self.fig.subplots(1, 2)
        self.fig.subplots_adjust(left=0.02, right=0.98, top=0.84, bottom=0.1, wspace=0.05)
        self.artists = []
        for ax, seq, title in zip(axes, self.poses, titles):
            _setup_axes(ax, seq, title)
            self.artists.append(_PoseArtist(ax, conf_thresh))
        handles = [bones for _, bones, _ in self.artists[0].lines]
        self.fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False,
                        handlelength=1.5, borderaxespad=0.2)
        self.counter = self.fig.text(0.5, 0.97, "", ha="center", va="top", fontsize=9,
                                     family="monospace")
        # Blitting: the static parts are drawn once; per frame only the moving artists are
        # redrawn over a copy of that background (~4x faster than a full canvas.draw()).
        self.moving = [self.counter] + [line for art in self.artists for line in art.artists]
        for a in self.moving:
            a.set_animated(True)
        self.fig.canvas.draw()
        self.background = self.fig.canvas.copy_from_bbox(self.fig.bbox)

    def render(self, i: int, chunk_len: int) -> np.ndarray:
        """Pixels ``(H, W, 3) uint8`` of frame ``i`` (0-based; chunk = i // chunk_len)."""
        for artist, seq in zip(self.artists, self.poses):
            artist.update(seq[i])
        self.counter.set_text(f"frame {i}/{len(self.poses[0])}  chunk {i // chunk_len}")
        self.fig.canvas.restore_region(self.background)
        for a in self.moving:
            self.fig.draw_artist(a)
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()


def _ffmpeg_available() -> bool:
    try:
        import imageio_ffmpeg
        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    return True


def _resolve_output(out: Path) -> Path:
    """The path that will really be written: ``.gif`` when there is no suffix; an ``.mp4``
    without an ffmpeg writer is a ValueError."""
    suffix = out.suffix.lower()
    if suffix == "":
        return out.with_suffix(".gif")
    if suffix not in (".gif", ".mp4", ".png"):
        raise ValueError(f"unsupported output suffix {out.suffix!r}: use .gif, .mp4 or .png")
    if suffix == ".mp4" and not _ffmpeg_available():
        # Not a silent GIF next to it: that could replace a GIF the user meant to keep.
        raise ValueError(f"{out}: no MP4 writer here (pip install imageio-ffmpeg), "
                         f"or ask for a GIF: {out.with_suffix('.gif')}")
    return out


def _check_pair(original: np.ndarray, recon: np.ndarray) -> None:
    if original.ndim != 3 or original.shape[1:] != (NUM_ROWS, 3):
        raise ValueError(f"expected [T, {NUM_ROWS}, 3] poses, got {original.shape}")
    if recon.shape != original.shape:
        raise ValueError(f"original {original.shape} and recon {recon.shape} differ in shape")
    if len(original) == 0:
        raise ValueError("no frames to render")


def _write_png(fig: _ComparisonFigure, t: int, frame: int | None, chunk_len: int,
               out: Path) -> None:
    i = t // 2 if frame is None else frame
    if not -t <= i < t:
        raise IndexError(f"frame {frame} out of range for {t} frames")
    with atomic_path(out) as tmp:
        iio.imwrite(tmp, fig.render(i % t, chunk_len))


def _write_animation(fig: _ComparisonFigure, t: int, fps: int, chunk_len: int,
                     max_frames: int | None, out: Path) -> None:
    # A stride keeps long sequences small while playing at their real speed.
    stride = 1 if max_frames is None else max(1, math.ceil(t / max_frames))
    frames = [fig.render(i, chunk_len) for i in range(0, t, stride)]
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".mp4":
            iio.imwrite(tmp, np.stack(frames), plugin="FFMPEG", fps=fps / stride)
        else:
            _write_gif(frames, tmp, duration_ms=1000 * stride / fps)


def _write_gif(frames: list[np.ndarray], path: Path, duration_ms: float) -> None:
    """Write RGB frames as a looping GIF with one shared palette.

    Pillow directly rather than imageio's GIF writer, which runs an adaptive quantiser per
    frame (~8x slower here). The palette comes from first, middle and last frames; every
    frame shows the legend, so each part colour is in it.
    """
    sample = np.concatenate([frames[0], frames[len(frames) // 2], frames[-1]], axis=0)
    palette = Image.fromarray(sample).quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE)
              for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=gif_durations(len(images), duration_ms), loop=0)


def gif_durations(n: int, duration_ms: float) -> list[int]:
    """Per-frame delays in ms for ``n`` frames of ``duration_ms`` each, as a GIF can store them.

    GIF delays are whole centiseconds (Pillow truncates: 33.3 ms would become 30 ms, and the
    animation would play 10% fast), so each frame gets 30 or 40 ms such that the time
    elapsed after every frame is the true time rounded to 10 ms: 30, 40, 30, 30, 40, ...
    for 30 fps, i.e. exactly 100 ms per 3 frames.
    """
    ends = np.round(np.arange(1, n + 1) * duration_ms / 10.0).astype(np.int64) * 10
    return np.diff(ends, prepend=0).tolist()


def render_comparison(original: np.ndarray, recon: np.ndarray, out: str | Path, fps: int = 30,
                      chunk_len: int = 10,
                      titles: tuple[str, str] = ("original", "reconstruction"),
                      frame: int | None = None, conf_thresh: float = 0.3,
                      max_frames: int | None = None) -> Path:
    """Render ``original`` and ``recon`` (``[T, 134, 3]`` pixels) side by side.

    The suffix of ``out`` picks the output: ``.gif`` (also when there is none), ``.mp4``
    (needs an ffmpeg writer: ``pip install imageio-ffmpeg``; a ValueError without), or
    ``.png`` = the single frame ``frame`` (default: the middle one).
    ``max_frames`` caps an animation's length by striding over frames. Returns the path
    actually written.
    """
    original, recon = np.asarray(original), np.asarray(recon)
    _check_pair(original, recon)
    path = _resolve_output(Path(out))
    is_png = path.suffix.lower() == ".png"
    fig = _ComparisonFigure(original, recon, titles, conf_thresh,
                            _PNG_DPI if is_png else _ANIM_DPI)
    if is_png:
        _write_png(fig, len(original), frame, chunk_len, path)
    else:
        _write_animation(fig, len(original), fps, chunk_len, max_frames, path)
    return path
