"""Plots and renders of src.viz: files written, image sizes, frame counts, token decoding."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from src.data.keypoints import (
    BODY_BONES, L_SHOULDER, L_WRIST, LEFT_HAND, NOSE, NUM_ROWS, R_SHOULDER, R_WRIST, RIGHT_HAND,
)
from src.viz import skeleton
from src.files import atomic_path
from src.viz._figure import new_figure
from src.viz.skeleton import draw_pose, render_comparison
from src.viz.tokens import _decode, code_usage, plot_codebook_usage, plot_token_timeline

W, H = 512, 512
ANIM_HW = tuple(round(v * skeleton._ANIM_DPI) for v in skeleton._FIGSIZE[::-1])
PNG_HW = tuple(round(v * skeleton._PNG_DPI) for v in skeleton._FIGSIZE[::-1])


def make_poses(t: int, seed: int = 0) -> np.ndarray:
    """``[t, 134, 3]`` poses: random points in the frame, the signer's left hand on the
    image's right half and the right hand on the left half, all scores 1."""
    rng = np.random.default_rng(seed)
    pose = np.zeros((t, NUM_ROWS, 3), np.float32)
    pose[:, 0] = (W, H, 0)
    pose[:, 1:, 0] = rng.uniform(150, 350, (t, NUM_ROWS - 1))
    pose[:, 1:, 1] = rng.uniform(100, 450, (t, NUM_ROWS - 1))
    pose[:, LEFT_HAND.start:LEFT_HAND.stop, 0] = rng.uniform(330, 400, (t, 21))
    pose[:, RIGHT_HAND.start:RIGHT_HAND.stop, 0] = rng.uniform(110, 180, (t, 21))
    pose[:, 1:, 2] = 1.0
    return pose


def only_file(folder: Path) -> Path:
    """The one file in ``folder``: no temporary file may be left behind."""
    files = list(folder.iterdir())
    assert len(files) == 1, files
    return files[0]


def draw_to_pixels(pose: np.ndarray) -> np.ndarray:
    fig = new_figure(4, 4, 80)
    ax = fig.add_axes((0, 0, 1, 1))
    draw_pose(ax, pose)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def near_colour(img: np.ndarray, colour: str, tol: int = 30) -> np.ndarray:
    rgb = np.array(to_rgb(colour)) * 255
    return np.abs(img - rgb).max(axis=-1) < tol


def test_draw_pose_sets_image_frame_and_hides_bad_points():
    pose = make_poses(1)[0]
    pose[6, :2] = np.nan      # left shoulder: 3 bones touch it
    pose[7, 2] = 0.0          # right shoulder: 3 more bones
    fig = new_figure(3, 3, 50)
    ax = fig.add_subplot()
    draw_pose(ax, pose, title="t")
    assert ax.get_xlim() == (0, W) and ax.get_ylim() == (H, 0)  # image coords, y down
    body, body_dots = ax.lines[0], ax.lines[1]
    drawn_bones = np.isfinite(body.get_xdata()).sum() // 2
    hidden = sum(1 for a, b in BODY_BONES if {a, b} & {6, 7})
    assert drawn_bones == len(BODY_BONES) - hidden
    assert len(body_dots.get_xdata()) == 17 - 2


def test_hand_colours_follow_the_signers_side():
    img = draw_to_pixels(make_poses(1)[0])
    left = near_colour(img, skeleton._PARTS[2].colour)
    right = near_colour(img, skeleton._PARTS[3].colour)
    half = img.shape[1] // 2
    assert left[:, half:].sum() > 20 and left[:, :half].sum() == 0
    assert right[:, :half].sum() > 20 and right[:, half:].sum() == 0


def test_nan_and_zero_score_points_are_not_drawn():
    pose = make_poses(1)[0]
    pose[LEFT_HAND.start:LEFT_HAND.stop, :2] = np.nan
    pose[RIGHT_HAND.start:RIGHT_HAND.stop, 2] = 0.0
    img = draw_to_pixels(pose)
    assert not near_colour(img, skeleton._PARTS[2].colour).any()
    assert not near_colour(img, skeleton._PARTS[3].colour).any()
    assert near_colour(img, skeleton._PARTS[0].colour).any()  # body still there


def test_gif_has_one_frame_per_pose_frame(tmp_path):
    poses = make_poses(7)
    out = render_comparison(poses, make_poses(7, seed=1), tmp_path / "cmp.gif")
    assert out == tmp_path / "cmp.gif" and only_file(tmp_path) == out
    frames = iio.imread(out, index=None)
    assert frames.shape == (7, *ANIM_HW, 3)
    assert not np.array_equal(frames[0], frames[1])


def test_gif_max_frames_strides(tmp_path):
    poses = make_poses(10)
    out = render_comparison(poses, poses, tmp_path / "cmp.gif", max_frames=4)
    assert iio.imread(out, index=None).shape[0] == 4  # frames 0, 3, 6, 9


def test_png_is_one_frame_default_middle(tmp_path):
    orig, recon = make_poses(9), make_poses(9, seed=1)
    mid = render_comparison(orig, recon, tmp_path / "mid.png")
    four = render_comparison(orig, recon, tmp_path / "four.png", frame=4)
    first = render_comparison(orig, recon, tmp_path / "first.png", frame=0)
    img = iio.imread(mid)
    assert img.shape[:2] == PNG_HW
    assert np.array_equal(img, iio.imread(four))
    assert not np.array_equal(img, iio.imread(first))
    with pytest.raises(IndexError):
        render_comparison(orig, recon, tmp_path / "bad.png", frame=9)


def test_pose_with_nans_and_zero_scores_renders(tmp_path):
    poses = make_poses(3)
    poses[:, 5:40, :2] = np.nan
    poses[:, 40:80, 2] = 0.0
    poses[0] = np.nan  # a lost frame, size row included
    out = render_comparison(poses, poses, tmp_path / "nan.gif")
    frames = iio.imread(out, index=None)
    assert frames.shape == (3, *ANIM_HW, 3)
    assert not np.array_equal(frames[0], frames[1])


def test_view_keeps_video_size_when_first_frame_is_lost():
    poses = make_poses(3)
    poses[0] = np.nan
    fig = skeleton._ComparisonFigure(poses, poses, ("a", "b"), 0.3, 40)
    assert [ax.get_xlim() for ax in fig.fig.axes[:2]] == [(0, W), (0, W)]


def test_mp4_without_ffmpeg_fails_and_leaves_a_gif_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(skeleton, "_ffmpeg_available", lambda: False)
    poses = make_poses(4)
    gif = tmp_path / "cmp.gif"
    gif.write_bytes(b"the user's own GIF")
    with pytest.raises(ValueError, match="imageio-ffmpeg"):
        render_comparison(poses, poses, tmp_path / "cmp.mp4")
    assert only_file(tmp_path) == gif and gif.read_bytes() == b"the user's own GIF"


def test_gif_keeps_real_time(tmp_path):
    """GIF delays are whole centiseconds: 30 fps must alternate 30 and 40 ms, not play 10% fast."""
    from PIL import Image

    poses = make_poses(30)
    poses[:, 1:, :2] += np.arange(30)[:, None, None]  # every frame differs (no merged frames)
    out = render_comparison(poses, poses, tmp_path / "cmp.gif", fps=30)
    with Image.open(out) as im:
        delays = []
        for i in range(im.n_frames):
            im.seek(i)
            delays.append(im.info["duration"])
    assert len(delays) == 30 and set(delays) == {30, 40} and sum(delays) == 1000
    assert skeleton.gif_durations(6, 1000 * 3 / 30) == [100] * 6  # a stride of 3 frames


def test_wrists_join_hand_roots_and_a_neck_holds_the_head():
    pose = make_poses(1)[0]
    visible = np.ones(NUM_ROWS, bool)
    segs = skeleton._joins(pose, visible).reshape(3, 3, 2)
    assert np.array_equal(segs[0, :2], pose[[L_WRIST, LEFT_HAND.start], :2])
    assert np.array_equal(segs[1, :2], pose[[R_WRIST, RIGHT_HAND.start], :2])
    assert np.allclose(segs[2, 0], pose[[L_SHOULDER, R_SHOULDER], :2].mean(0)) and np.array_equal(segs[2, 1], pose[NOSE, :2])
    visible[[R_WRIST, NOSE]] = False  # what is not seen is not joined
    segs = skeleton._joins(pose, visible).reshape(3, 3, 2)
    assert np.isfinite(segs[0, :2]).all() and np.isnan(segs[1:]).all()


def test_long_timelines_get_whole_chunk_ticks(tmp_path):
    from src.viz.tokens import _timeline_axes

    record = {"video_name": "long", "fps": 30, "chunk_len": 10, "meta": {"num_levels": 1},
              "tokens": [{"t": t, **{s: [t % 7] for s in ("F", "LH", "RH", "B", "FB")}} for t in range(23)]}
    tl = _decode(record)
    fig = new_figure(6, 3, 80)
    ax = fig.add_subplot()
    ax.set_xlim(-0.5, 22.5)
    _timeline_axes(ax, tl, 1, 1 / 3)
    ticks = [t for t in ax.get_xticks() if -0.5 <= t <= 22.5]
    assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)
    # a level a stream does not code is labelled, not left to look like a gap
    _timeline_axes(ax, tl, 2, 1 / 3, {"F": 1, "LH": 2})
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:4] == ["F L0", "F L1 (none)", "LH L0", "LH L1"]


def test_mp4_with_ffmpeg(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    poses = make_poses(4)
    out = render_comparison(poses, poses, tmp_path / "cmp.mp4")
    assert out.suffix == ".mp4"
    frames = list(iio.imiter(out, plugin="FFMPEG"))   # a real video: every frame reads back
    assert len(frames) == len(poses) and frames[0].ndim == 3 and frames[0].shape[2] == 3
    assert frames[0].std() > 0   # a drawing, not a blank frame


def test_bad_inputs_are_rejected(tmp_path):
    poses = make_poses(3)
    with pytest.raises(ValueError, match=r"original \(3, 134, 3\) and recon \(2, 134, 3\) differ in shape"):
        render_comparison(poses, poses[:2], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="unsupported output suffix '.avi'"):
        render_comparison(poses, poses, tmp_path / "x.avi")


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    out = tmp_path / "a.png"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert out.read_text() == "old" and only_file(tmp_path) == out


def nc_record() -> dict:
    tokens = [
        {"t": 0, "F": [1, 2], "LH": [3, 4], "RH": [5, 6]},
        {"t": 1, "F": ["NC", 3], "LH": [7, 8], "RH": [9, 10]},
        {"t": 2, "LH": ["NC", 2], "RH": [11, 12]},
        {"t": 3, "RH": [13, 14]},
        {"t": 4, "F": [15, 16], "LH": [17, 18], "RH": ["NC", 2]},
        {"t": 5, "F": [19, 20], "LH": [21, 22]},
    ]
    return {"video_name": "vid", "fps": 30, "chunk_len": 10, "tokens": tokens, "rle": True,
            "meta": {"codebook_size": 32, "num_levels": 2}}


def test_decode_expands_nc_runs():
    tl = _decode(nc_record())
    assert tl.streams == ["F", "LH", "RH"] and tl.num_chunks == 6
    assert tl.codes["F"] == [[1, 2], [1, 2], [1, 2], [1, 2], [15, 16], [19, 20]]
    assert tl.codes["LH"] == [[3, 4], [7, 8], [7, 8], [7, 8], [17, 18], [21, 22]]
    assert tl.codes["RH"][4:] == [[13, 14], [13, 14]]
    assert tl.nc_runs == {"F": [(1, 3)], "LH": [(2, 2)], "RH": [(4, 2)]}
    assert tl.held("F").tolist() == [False, True, True, True, False, False]


def test_decode_rejects_a_malformed_record():
    record = nc_record()
    record["tokens"] = record["tokens"][:5]  # RH's run now goes past the last chunk
    with pytest.raises(ValueError, match="goes past the end"):
        _decode(record)


def test_token_timeline_png(tmp_path):
    out = plot_token_timeline(nc_record(), tmp_path / "tl.png")
    assert only_file(tmp_path) == out
    img = iio.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300


def test_code_usage():
    assert code_usage(np.zeros(8)) == (0.0, 1.0)
    usage, ppl = code_usage(np.array([5, 5, 5, 5, 0, 0, 0, 0]))
    assert usage == 0.5 and ppl == pytest.approx(4.0)
    assert code_usage(np.array([0, 9, 0]))[1] == pytest.approx(1.0)


def test_codebook_usage_png_with_unused_level(tmp_path):
    rng = np.random.default_rng(0)
    counts = {s: rng.integers(0, 50, (3, 64)) for s in ("F", "LH", "RH")}
    counts["LH"][2] = 0
    out = plot_codebook_usage(counts, tmp_path / "usage.png", title="epoch 1")
    assert only_file(tmp_path) == out
    img = iio.imread(out)
    assert img.ndim == 3 and img.shape[1] > img.shape[0]  # levels + heatmap are wider than 3 rows


def test_codebook_usage_has_no_panel_for_levels_a_stream_never_codes(tmp_path, monkeypatch):
    from src.viz import tokens as viz_tokens

    drawn = []
    real = viz_tokens._usage_panel
    monkeypatch.setattr(viz_tokens, "_usage_panel", lambda ax, c, name: drawn.append(name) or real(ax, c, name))
    counts = {s: np.ones((2, 16), int) for s in ("F", "LH", "FB")}
    plot_codebook_usage(counts, tmp_path / "usage.png", coded={"F": 1, "LH": 2, "FB": 1})
    assert drawn == ["F L0", "LH L0", "LH L1", "FB L0"]


def test_nc_runs_are_hatched_over_coded_levels_only():
    """A stream coding one of two levels: its NC run's hatch covers one row, not the "(none)" row."""
    from matplotlib.patches import Rectangle

    from src.viz.tokens import _decode, _mark_nc_runs
    from src.viz._figure import new_figure

    record = {"video_name": "v", "tokens": [{"t": 0, "F": [3], "LH": [1, 2]}, {"t": 1, "F": ["NC", 2], "LH": [4, 5]},
                                            {"t": 2, "LH": [6, 7]}]}
    ax = new_figure(4, 3, 50).add_subplot()
    _mark_nc_runs(ax, _decode(record), 2, min_labelled=2, coded={"F": 1, "LH": 2})
    hatched = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in hatched] == [(0.5, -0.5, 2, 1)]
