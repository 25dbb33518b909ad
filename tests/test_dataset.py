"""The data pipeline: chunking, mirror, normalisation, gap filling, skipping, packing, augmentation,
batching and loading; the data-check and data-pack commands; real recorded pose when available."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from src.commands.data.check import main as check_main
from src.commands.data.pack import main as pack_main
from src.config import AugmentConfig, DataConfig
from src.data import keypoints as kp
from src.tools.check import check_root
from src.data.dataset import PoseDataset, collate, make_loader
from src.data.sample import make_sample
from src.data.pack import write_pack
from src.data.pose import (
    CleanPose, chunk, clean, denormalise, normalise, num_chunks, rotate, stream_centres, to_rows, unit_length,
    upright_angle,
)
from src.data.source import DataError, PoseSource
from src.tools.synth import synth_sequence
from src.data.transforms import keypoint_dropout, mirror, time_warp

POSE_DIR = "frames_512x512"
NO_AUGMENT = AugmentConfig(mirror=False, time_warp=False, dropout_prob=0.0)


def seq(seed: int, frames: int, noise: bool = False, signer: int | None = 0) -> np.ndarray:
    """A synthetic raw ``[T, 134, 3]`` sequence (noise=False: every visible point scored 1)."""
    return synth_sequence(np.random.default_rng(seed), frames, noise=noise, signer=signer)[0]


def data_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(root=str(root), num_workers=0, **kw)


def write_root(root: Path, arrays: dict[str, np.ndarray], splits: dict[str, list[str]],
               annotated: list[str] | None = None) -> Path:
    """A CSL-Daily-layout root from arrays; ``annotated`` (default: every array) go in annotations.json."""
    (root / POSE_DIR).mkdir(parents=True)
    for name, array in arrays.items():
        np.save(root / POSE_DIR / f"{name}.npy", array)
    names = list(arrays) if annotated is None else annotated
    annotations = {n: {"text": "", "gloss": "", "num_frames": len(arrays.get(n, [])), "signer": 0} for n in names}
    (root / "annotations.json").write_text(json.dumps(annotations))
    (root / "split_files.json").write_text(json.dumps(splits))
    return root


def all_names(root: Path) -> list[str]:
    splits = json.loads((root / "split_files.json").read_text())
    return [n for names in splits.values() for n in names]


def copy_root(src: Path, dst: Path) -> Path:
    """A private copy (packing writes into the root; the session fixtures stay untouched)."""
    return Path(shutil.copytree(src, dst))


def assert_samples_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


# ---------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("frames", [3, 10, 30, 31])  # T < L, T = L, T = kL, T = kL + 1 (L = 10)
def test_chunk_covers_every_frame_exactly_once(frames):
    length = 10
    x = np.arange(frames * 2, dtype=np.float32).reshape(frames, 2) + 1  # (T, 2), distinct, non-zero
    chunks, mask = chunk(x, length)
    c = num_chunks(frames, length)
    assert c == -(-frames // length) and chunks.shape == (c, length, 2) and mask.shape == (c, length)
    assert mask.sum() == frames
    for t in range(frames):
        assert mask[t // length, t % length]
        assert np.array_equal(chunks[t // length, t % length], x[t])
    flat_mask = mask.reshape(-1)
    assert np.array_equal(flat_mask, np.arange(c * length) < frames)  # real frames first, then padding
    # the padding repeats the last frame (stays in the pose distribution) and is masked out
    assert np.array_equal(chunks.reshape(-1, 2)[~flat_mask], np.repeat(x[-1:], (~flat_mask).sum(), 0))


def test_sample_chunks_cover_the_sequence():
    raw = seq(0, 23)
    sample = make_sample(raw, DataConfig(chunk_len=10, augment=NO_AUGMENT))
    assert sample["x"].shape == (3, 10, kp.NUM_STREAM_POINTS, 2)
    assert sample["frame_mask"].sum() == 23 == sample["num_frames"]
    assert not sample["conf"][~sample["frame_mask"]].any()  # padded frames are never observed


# ---------------------------------------------------------------------------- mirror


def test_mirror_permutation_is_a_left_right_involution():
    p = kp.MIRROR_PERM
    assert np.array_equal(p[p], np.arange(kp.NUM_ROWS)) and p[kp.SIZE_ROW] == kp.SIZE_ROW
    assert np.array_equal(p[list(kp.LEFT_HAND)], list(kp.RIGHT_HAND))
    assert (p[kp.L_SHOULDER], p[kp.L_EYE], p[kp.L_WRIST]) == (kp.R_SHOULDER, kp.R_EYE, kp.R_WRIST)
    assert p[kp.NOSE] == kp.NOSE and p[32] == 32  # central points stay (nose, chin)
    assert sorted(p) == list(range(kp.NUM_ROWS))
    # the eyelid pairs map onto each other, so the unit length is mirror invariant
    assert {p[66], p[69]} == set(kp.RIGHT_EYELID) and {p[60], p[63]} == set(kp.LEFT_EYELID)


def test_mirror_swaps_streams_and_negates_local_x():
    pose = clean(seq(2, 30, noise=True), 0.3)
    flipped = mirror(pose)
    unit = unit_length(pose.xy, pose.conf)
    assert unit_length(flipped.xy, flipped.conf) == pytest.approx(unit, rel=1e-5)
    x = normalise(pose.xy, stream_centres(pose.xy, pose.conf), unit)
    xm = normalise(flipped.xy, stream_centres(flipped.xy, flipped.conf), unit)
    lh, rh = kp.STREAM_SLICES["LH"], kp.STREAM_SLICES["RH"]
    np.testing.assert_allclose(xm[:, lh], x[:, rh] * [-1, 1], atol=1e-4)
    np.testing.assert_allclose(xm[:, rh], x[:, lh] * [-1, 1], atol=1e-4)
    assert np.array_equal(flipped.conf[:, list(kp.LEFT_HAND)], pose.conf[:, list(kp.RIGHT_HAND)])
    # every stream: point j of the mirror = the mirrored point of the original, x negated
    where = {(s.name, r): kp.STREAM_SLICES[s.name].start + i for s in kp.STREAMS for i, r in enumerate(s.rows)}
    twin = {"LH": "RH", "RH": "LH"}
    for s in kp.STREAMS:
        src = [where[(twin.get(s.name, s.name), kp.MIRROR_PERM[r])] for r in s.rows]
        np.testing.assert_allclose(xm[:, kp.STREAM_SLICES[s.name]], x[:, src] * [-1, 1], atol=1e-4)
    # still a person facing the camera: the signer's left shoulder stays on the image right
    assert (flipped.xy[:, kp.L_SHOULDER, 0] > flipped.xy[:, kp.R_SHOULDER, 0]).all()
    assert (pose.xy[:, kp.L_SHOULDER, 0] > pose.xy[:, kp.R_SHOULDER, 0]).all()


def test_mirror_twice_is_identity():
    pose = clean(seq(3, 20, noise=True), 0.3)
    twice = mirror(mirror(pose))
    assert np.array_equal(twice.conf, pose.conf) and twice.size == pose.size
    # W - (W - x) rounds in float32 where x < W/2: within half an ulp of W ...
    np.testing.assert_allclose(twice.xy, pose.xy, rtol=0, atol=np.spacing(np.float32(512)))
    # ... and exactly on any grid of quarter pixels, and everywhere when x already lies in [W/2, W]
    grid = CleanPose(np.round(pose.xy * 4) / 4, pose.conf, pose.size)
    assert np.array_equal(mirror(mirror(grid)).xy, grid.xy)
    np.testing.assert_array_equal(twice.xy[..., 1], pose.xy[..., 1])


# ---------------------------------------------------------------------------- normalisation


def test_normalise_denormalise_round_trip():
    pose = clean(seq(4, 40, noise=True), 0.3)
    centres = stream_centres(pose.xy, pose.conf)
    unit = unit_length(pose.xy, pose.conf)
    x = normalise(pose.xy, centres, unit)
    assert x.shape == (40, kp.NUM_STREAM_POINTS, 2) and x.dtype == np.float32
    back = denormalise(x, centres, unit)
    np.testing.assert_allclose(back, pose.xy[:, kp.STREAM_ROWS], atol=1e-3, rtol=0)
    rows = to_rows(back)
    parts = list(kp.UPPER_BODY) + list(kp.FACE) + list(kp.LEFT_HAND) + list(kp.RIGHT_HAND)
    np.testing.assert_allclose(rows[:, parts], pose.xy[:, parts], atol=1e-3, rtol=0)
    np.testing.assert_allclose(to_rows(back, "FB")[:, parts], pose.xy[:, parts], atol=1e-3, rtol=0)
    assert not rows[:, [kp.L_HIP, kp.R_HIP, *kp.FEET]].any()  # legs are not coded
    # each stream is centred on the mean of its centre rows: they average to 0 in its frame
    for s in kp.STREAMS:
        sl = kp.STREAM_SLICES[s.name]
        local = x[:, [sl.start + s.rows.index(r) for r in s.centre]].mean(axis=1)
        np.testing.assert_allclose(local, 0, atol=1e-5)


@pytest.mark.parametrize("reference", ["face", "head"])
def test_reference_is_the_sequence_mean_offline_and_the_past_mean_causally(reference):
    raw = seq(4, 47, noise=True)
    points = kp.REFERENCE_POINTS[reference]
    others = np.setdiff1d(np.arange(kp.NUM_STREAM_POINTS), points)
    assert len(points) == 68 + 7 * (reference == "head")
    base = DataConfig(augment=NO_AUGMENT, reference="none")
    plain = make_sample(raw, base)
    offline = make_sample(raw, dataclasses.replace(base, reference=reference))
    # offline: one reference, the points' mean over the sequence, taken from every frame
    ref = offline["reference"]
    assert np.all(ref == ref[:1]) and not ref[:, others].any() and np.abs(ref[:, points]).max() > 0.5
    w = offline["conf"][..., points, None]
    np.testing.assert_allclose((offline["x"][:, :, points] * w).sum((0, 1)) / w.sum((0, 1)), 0, atol=1e-5)
    np.testing.assert_array_equal(offline["x"][:, :, others], plain["x"][:, :, others])
    np.testing.assert_allclose(offline["x"] + ref[:, None], plain["x"], atol=1e-6)
    # causal: chunk c's reference is the mean up to its last frame; a different future changes no earlier one
    causal = dataclasses.replace(base, reference=reference, causal=True)
    first = make_sample(raw, causal)
    changed = raw.copy()
    changed[30:, list(kp.FACE), :2] += 5.0
    second = make_sample(changed, causal)
    np.testing.assert_array_equal(first["reference"][:3], second["reference"][:3])
    assert not np.allclose(first["reference"][3:], second["reference"][3:])


def test_upright_angle_levels_the_shoulders_and_rotate_inverts():
    pose = clean(seq(6, 30, noise=True), 0.3)
    size = pose.size
    for tilt in (-0.26, 0.0, 0.2):
        tilted = rotate(pose.xy, tilt, size)
        angle = upright_angle(tilted, pose.conf)
        level = rotate(tilted, -angle, size)
        d = level[:, kp.L_SHOULDER] - level[:, kp.R_SHOULDER]
        assert abs(np.median(np.arctan2(d[:, 1], d[:, 0]))) < 1e-4
        assert angle == pytest.approx(upright_angle(pose.xy, pose.conf) + tilt, abs=1e-4)
        np.testing.assert_allclose(rotate(level, angle, size), tilted, atol=1e-3)


def test_unit_length_is_the_shoulder_width_and_falls_back_to_a_similar_scale():
    for seed in range(4):
        pose = clean(seq(seed, 30, signer=seed), 0.3)
        xy, conf = pose.xy, pose.conf.copy()
        shoulders = np.median(np.linalg.norm(xy[:, kp.L_SHOULDER] - xy[:, kp.R_SHOULDER], axis=-1))
        unit = unit_length(xy, conf)
        assert unit == pytest.approx(shoulders / kp.SHOULDER_EYELID_RATIO, rel=1e-5)
        conf[:, [kp.L_SHOULDER, kp.R_SHOULDER]] = False
        for hidden in ([], [*kp.LEFT_EYELID, *kp.RIGHT_EYELID], [kp.L_EYE, kp.R_EYE]):
            conf[:, hidden] = False  # shoulders gone -> eyelids -> eye distance -> head width
            assert unit_length(xy, conf) == pytest.approx(unit, rel=0.1), hidden
        conf[:, [kp.L_EAR, kp.R_EAR]] = False
        assert unit_length(xy, conf) is None


def test_unit_length_uses_only_confident_frames():
    pose = clean(seq(5, 30), 0.3)
    unit = unit_length(pose.xy, pose.conf)
    xy, conf = pose.xy.copy(), pose.conf.copy()
    xy[:12, kp.L_SHOULDER] += 100.0  # a wild shoulder, but not confident in those frames
    conf[:12, kp.L_SHOULDER] = False
    assert unit_length(xy, conf) == pytest.approx(unit, rel=0.05)


# ---------------------------------------------------------------------------- gap filling


def test_nan_and_zero_score_frames_are_interpolated_and_not_observed():
    raw = seq(6, 20)
    truth = clean(raw, 0.3)
    broken = raw.copy()
    broken[0, 1:] = np.nan      # leading gap: holds the first observation
    broken[5, 1:] = np.nan      # a NaN frame (row 0 kept, as detectors write it)
    broken[10:12, 1:, 2] = 0.0  # two frames with every score 0
    broken[10:12, 1:, :2] = 7.0  # whatever sits under a zero score must not leak
    pose = clean(broken, 0.3)
    for t in (0, 5, 10, 11):
        assert not pose.conf[t].any()
    visible = truth.conf[1]  # rows the synthetic signer shows (legs and feet are hidden)
    assert pose.conf[[1, 4, 6, 12]][:, visible].all()
    t = np.arange(20)
    seen = np.ones(20, bool)
    seen[[0, 5, 10, 11]] = False
    for r in np.flatnonzero(visible):
        for c in range(2):
            expected = np.interp(t, t[seen], raw[seen, r, c])
            np.testing.assert_allclose(pose.xy[:, r, c], expected, atol=1e-4)
    np.testing.assert_allclose(pose.xy[5], 0.5 * (raw[4, :, :2] + raw[6, :, :2]) * visible[:, None], atol=1e-4)
    np.testing.assert_allclose(pose.xy[0], pose.xy[1])
    assert np.isfinite(pose.xy).all()
    # through the dataset: those frames are real frames (in the frame mask) but not observed
    sample = make_sample(broken, DataConfig(chunk_len=10, augment=NO_AUGMENT))
    conf = sample["conf"].reshape(-1, kp.NUM_STREAM_POINTS)
    assert not conf[[0, 5, 10, 11]].any() and conf[[1, 4, 6, 12]].any(axis=1).all()
    assert sample["frame_mask"].reshape(-1)[:20].all() and np.isfinite(sample["x"]).all()


# ---------------------------------------------------------------------------- skip and count


@pytest.fixture
def mixed_root(tmp_path) -> Path:
    """One root with a sequence of every kind that must be skipped, next to good ones."""
    low = seq(13, 30)
    low[:20, [kp.L_SHOULDER, kp.R_SHOULDER], 2] = 0.1  # shoulders seen in only 1/3 of the frames
    arrays = {
        "good_a": seq(10, 30), "good_b": seq(11, 25, noise=True), "good_v": seq(12, 20),
        "no_annotation": seq(14, 20),
        "bad_shape": seq(15, 20)[:, 1:],           # the size row left out: [T, 133, 3]
        "too_short": seq(16, 3),
        "low_signal": low,
    }
    train = ["good_a", "no_annotation", "no_npy", "bad_shape", "good_b", "too_short", "low_signal"]
    splits = {"train": train, "val": ["good_v"], "test": ["no_npy"], "empty": []}
    annotated = [n for n in arrays if n != "no_annotation"] + ["no_npy"]
    return write_root(tmp_path / "mixed", arrays, splits, annotated)


EXPECTED_SKIPS = {"not in annotations": ["no_annotation"], "no pose file": ["no_npy"], "bad shape": ["bad_shape"],
                  "too short": ["too_short"], "too little usable signal": ["low_signal"]}


def test_unusable_names_are_skipped_and_counted(mixed_root, caplog):
    with caplog.at_level(logging.INFO, logger="src.data.dataset"):
        ds = PoseDataset(data_cfg(mixed_root), "train")
    assert ds.names == ["good_a", "good_b"] and len(ds) == 2  # split order kept
    assert ds.lengths == {"good_a": 30, "good_b": 25}
    assert dict(ds.report.reasons) == {r: 1 for r in EXPECTED_SKIPS}
    assert ds.report.examples == EXPECTED_SKIPS and ds.report.kept == 2
    assert "kept 2, skipped 5" in caplog.text  # logged once, with the counts
    assert ds[1]["name"] == "good_b" and ds[1]["num_frames"] == 25


def test_empty_or_unusable_split_raises_a_clear_error(mixed_root):
    with pytest.raises(DataError, match="split 'empty' has no usable sequence"):
        PoseDataset(data_cfg(mixed_root), "empty")
    expected = r"split 'test' has no usable sequence \(kept 0, skipped 1 \(no pose file: 1\)\)"
    with pytest.raises(DataError, match=expected):
        PoseDataset(data_cfg(mixed_root), "test")
    with pytest.raises(DataError, match="no split 'dev' .*train, val, test, empty"):
        PoseDataset(data_cfg(mixed_root), "dev")
    with pytest.raises(DataError, match="data root not found"):
        PoseDataset(data_cfg(mixed_root / "nope"), "train")


def test_data_check_counts_the_same_skips(mixed_root):
    report = check_root(mixed_root, data_cfg(mixed_root))
    train = report["splits"]["train"]
    assert (train["listed"], train["kept"], train["kept_frames"]) == (7, 2, 55)
    assert {r: v["examples"] for r, v in train["skipped"].items()} == EXPECTED_SKIPS
    assert report["usable"] and report["files"]["bad_shape"] == 1
    assert any("bad_shape.npy" in w and "[20, 133, 3]" in w for w in report["warnings"])


# ---------------------------------------------------------------------------- packing


def test_pack_gives_the_same_arrays_and_samples(synth_root, tmp_path):
    root = copy_root(synth_root, tmp_path / "root")
    names = all_names(root)
    before = PoseSource(root)
    assert not before.packed
    per_file = {n: before.load(n) for n in names}
    cfg = data_cfg(root)
    train_file = PoseDataset(cfg, "train", train=True, seed=3)
    val_file = PoseDataset(cfg, "val")
    samples = [train_file[i] for i in range(3)] + [val_file[i] for i in range(len(val_file))]

    index = write_pack(root, progress=False)
    assert index["total_frames"] == sum(len(a) for a in per_file.values()) and not index["skipped"]
    source = PoseSource(root)
    assert source.packed
    for name in names:
        got = source.load(name)
        assert got.dtype == np.float32 and np.array_equal(got, per_file[name], equal_nan=True), name
    assert any(np.isnan(a).any() for a in per_file.values())  # NaN frames travel through the pack too
    train_pack, val_pack = PoseDataset(cfg, "train", train=True, seed=3), PoseDataset(cfg, "val")
    assert train_pack.source.packed and train_pack.lengths == train_file.lengths
    for got, want in zip([train_pack[i] for i in range(3)] + [val_pack[i] for i in range(len(val_pack))], samples):
        assert_samples_equal(got, want)


def test_a_stale_or_incomplete_pack_is_not_used(synth_root, tmp_path, caplog):
    root = copy_root(synth_root, tmp_path / "root")
    write_pack(root, progress=False)
    index, array = root / "packed" / "index.json", root / "packed" / "poses.npy"
    assert PoseSource(root).packed

    saved = index.read_bytes()
    index.unlink()                                   # no index: the pack is incomplete
    assert not PoseSource(root).packed
    index.write_bytes(saved)

    name = all_names(root)[0]
    path = root / POSE_DIR / f"{name}.npy"
    changed = np.load(path)
    changed[:, 1:, :2] += 1.0
    np.save(path, changed)                           # a file rewritten after packing
    with caplog.at_level(logging.WARNING, logger="src.data.source"):
        source = PoseSource(root)
    assert not source.packed and "stale" in caplog.text and "data-pack" in caplog.text
    assert np.array_equal(source.load(name), changed, equal_nan=True)
    write_pack(root, progress=False)
    assert PoseSource(root).packed

    np.save(root / POSE_DIR / "synth_new.npy", changed)  # a file added after packing
    assert not PoseSource(root).packed
    (root / POSE_DIR / "synth_new.npy").unlink()
    assert PoseSource(root).packed

    meta = json.loads(index.read_text())
    meta["total_frames"] += 5                        # index and array disagree
    index.write_text(json.dumps(meta))
    assert not PoseSource(root).packed
    index.write_bytes(saved)
    write_pack(root, progress=False)
    array.unlink()                                   # array gone
    assert not PoseSource(root).packed


def test_pack_without_pose_files_is_used_alone(synth_root, tmp_path):
    root = copy_root(synth_root, tmp_path / "root")
    write_pack(root, progress=False)
    name = all_names(root)[0]
    want = np.load(root / POSE_DIR / f"{name}.npy")
    shutil.rmtree(root / POSE_DIR)                   # packed, then the 20k small files removed
    source = PoseSource(root)
    assert source.packed and source.has(name) and np.array_equal(source.load(name), want, equal_nan=True)


def test_pack_skips_bad_files_and_rejects_an_empty_folder(tmp_path):
    root = write_root(tmp_path / "r", {"good": seq(0, 12), "bad": seq(1, 12)[:, :, :2]}, {"train": ["good"]})
    index = write_pack(root, progress=False)
    assert list(index["items"]) == ["good"] and index["skipped"] == {"bad": "bad shape [12, 134, 2]"}
    assert not list((root / "packed").glob("*.tmp*"))
    empty = write_root(tmp_path / "e", {}, {"train": []})
    with pytest.raises(DataError, match="no .npy files"):
        write_pack(empty, progress=False)
    only_bad = write_root(tmp_path / "b", {"bad": seq(1, 12)[:, 1:]}, {"train": ["bad"]})
    with pytest.raises(DataError, match="bad.npy"):
        write_pack(only_bad, progress=False)


# ---------------------------------------------------------------------------- augmentation


def test_time_warp_changes_length_within_bounds():
    pose = clean(seq(7, 60, noise=True), 0.3)
    lengths = set()
    for i in range(20):
        warped = time_warp(pose, np.random.default_rng(i), 0.2)
        n = warped.xy.shape[0]
        assert round(60 / 1.2) <= n <= round(60 / 0.8)
        lengths.add(n)
        np.testing.assert_allclose(warped.xy[[0, -1]], pose.xy[[0, -1]], atol=1e-4)  # same start and end
        assert warped.conf.shape == (n, kp.NUM_ROWS) and warped.size == pose.size
    assert len(lengths) > 3
    same = time_warp(pose, np.random.default_rng(0), 0.0)
    assert np.array_equal(same.xy, pose.xy) and np.array_equal(same.conf, pose.conf)


def test_time_warp_keeps_gaps_unobserved():
    pose = clean(seq(8, 40), 0.3)
    conf = pose.conf.copy()
    conf[10:20, list(kp.RIGHT_HAND)] = False
    gap = CleanPose(pose.xy, conf, pose.size)
    warped = time_warp(gap, np.random.default_rng(1), 0.2)
    n = warped.xy.shape[0]
    pos = np.linspace(0, 39, n)                      # where each output frame samples the input
    inside = (pos > 9) & (pos < 20)                  # touches a gap frame on either side
    assert not warped.conf[inside][:, list(kp.RIGHT_HAND)].any()
    assert warped.conf[~inside][:, list(kp.RIGHT_HAND)].all()


def test_keypoint_dropout_drops_points_that_are_then_not_observed():
    raw = seq(9, 50)
    dropped = keypoint_dropout(raw, np.random.default_rng(0), 0.3)
    assert dropped is not raw and np.array_equal(raw, seq(9, 50))  # the input is not modified
    hit = (dropped[..., 2] == 0) & (raw[..., 2] > 0)
    assert 0.25 < hit[:, 1:].mean() < 0.35
    assert np.array_equal(dropped[:, kp.SIZE_ROW], raw[:, kp.SIZE_ROW])  # the size row is not a point
    assert np.array_equal(dropped[..., :2], raw[..., :2])
    pose = clean(dropped, 0.3)
    assert not pose.conf[hit].any() and pose.conf[(raw[..., 2] > 0) & ~hit].all()
    assert keypoint_dropout(raw, np.random.default_rng(0), 0.0) is raw
    cfg = DataConfig(augment=AugmentConfig(mirror=False, time_warp=False, dropout_prob=0.3))
    sample = make_sample(raw, cfg, np.random.default_rng(0))
    conf = sample["conf"].reshape(-1, kp.NUM_STREAM_POINTS)[:50]
    assert np.array_equal(conf, ~hit[:, kp.STREAM_ROWS] & (raw[:, kp.STREAM_ROWS, 2] > 0))


def test_collate_pads_chunks_with_masks_false():
    cfg = DataConfig(chunk_len=10, augment=NO_AUGMENT)
    samples = [{"name": "a", **make_sample(seq(0, 15), cfg)}, {"name": "b", **make_sample(seq(1, 35), cfg)}]
    batch = collate(samples)
    assert batch.x.shape == (2, 4, 10, kp.NUM_STREAM_POINTS, 2) and batch.centres.shape == (2, 4, 10, 5, 2)
    assert batch.chunk_mask.tolist() == [[True, True, False, False], [True] * 4]
    assert batch.frame_mask.sum(dim=(1, 2)).tolist() == [15, 35] == batch.num_frames.tolist()
    assert not batch.frame_mask[0, 1, 5:].any() and batch.frame_mask[0, 1, :5].all()
    assert not batch.conf[0, 2:].any() and not batch.x[0, 2:].any()
    assert torch.equal(batch.x[1], torch.from_numpy(samples[1]["x"]))
    assert torch.equal(batch.x[0, :2], torch.from_numpy(samples[0]["x"]))
    assert batch.names == ["a", "b"] and batch.unit.dtype == torch.float32
    assert batch.frame_mask.dtype == torch.bool and batch.conf.dtype == torch.bool


def test_jitter_augmentation_perturbs_the_input_and_keeps_the_clean_truth():
    raw = seq(5, 60)
    cfg = DataConfig(max_frames=40)
    clean = make_sample(raw, cfg, np.random.default_rng(3))
    jittered = make_sample(raw, dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, jitter_px=3.0)),
                           np.random.default_rng(3))
    assert "x_true" not in clean
    np.testing.assert_array_equal(jittered["x_true"], clean["x"])        # same draws before the noise
    np.testing.assert_array_equal(jittered["conf_true"], clean["conf"])
    noise_px = (jittered["x"] - clean["x"])[clean["conf"]] * clean["unit"]
    assert 0.1 < noise_px.std() < 3.0                                     # sigma drawn in [0, 3] px
    batch = collate([{**jittered, "name": "a"}])
    assert torch.equal(batch.truth()[0], batch.x_true) and not torch.equal(batch.x, batch.x_true)


def test_training_augmentation_depends_on_seed_epoch_and_index(synth_root):
    cfg = data_cfg(synth_root, max_frames=40)
    ds = PoseDataset(cfg, "train", train=True, seed=1)
    assert_samples_equal(ds[2], ds[2])
    assert_samples_equal(ds[2], PoseDataset(cfg, "train", train=True, seed=1)[2])

    def differs(a: dict, b: dict) -> bool:
        return a["x"].shape != b["x"].shape or not np.array_equal(a["x"], b["x"])

    first = [ds[i] for i in range(4)]
    ds.set_epoch(1)
    assert all(differs(a, ds[i]) for i, a in enumerate(first))
    ds.set_epoch(0)
    assert_samples_equal(ds[3], first[3])
    assert differs(first[0], PoseDataset(cfg, "train", train=True, seed=2)[0])
    plain = PoseDataset(cfg, "train")            # evaluation: no augmentation, the first frames
    assert_samples_equal(plain[0], plain[0])
    assert plain[0]["num_frames"] == min(40, plain.lengths[plain.names[0]])


def test_loader_workers_give_the_same_batches(synth_root):
    cfg = data_cfg(synth_root, max_frames=30)
    ds = PoseDataset(cfg, "train", train=True, seed=4)

    def batches(workers: int) -> list:
        loader = make_loader(ds, batch_size=5, train=True, seed=4, num_workers=workers)
        out = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            out += list(loader)
        return out

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 2 * -(-len(ds) // 5)
    assert serial[0].names != serial[len(serial) // 2].names  # shuffled differently per epoch
    for a, b in zip(serial, parallel):
        assert a.names == b.names
        for f in dataclasses.fields(a):
            va, vb = getattr(a, f.name), getattr(b, f.name)
            assert torch.equal(va, vb) if torch.is_tensor(va) else va == vb, f.name


# ---------------------------------------------------------------------------- real recorded pose


def test_real_sequences_load_with_sane_normalised_coordinates(real_root):
    cfg = data_cfg(real_root)
    splits = json.loads((real_root / "split_files.json").read_text())
    total, total_sq, count = (np.zeros((kp.NUM_STREAM_POINTS, 2)) for _ in range(3))
    for split, names in splits.items():
        ds = PoseDataset(cfg, split)
        assert ds.names == names and not ds.report.reasons  # every listed sequence is usable
        for i in range(len(ds)):
            s = ds[i]
            assert np.isfinite(s["x"]).all() and np.isfinite(s["centres"]).all()
            assert 10 <= s["unit"] <= 30, s["name"]
            seen = s["conf"]
            assert seen.any()
            assert np.abs(s["x"][seen]).max() < 60, s["name"]
            x = s["x"].reshape(-1, kp.NUM_STREAM_POINTS, 2).astype(np.float64)
            w = seen.reshape(-1, kp.NUM_STREAM_POINTS, 1)
            total += (x * w).sum(0)
            total_sq += (x ** 2 * w).sum(0)
            count += w.sum(0)
    for stream, sl in kp.STREAM_SLICES.items():
        n = count[sl].sum(0)
        mean = total[sl].sum(0) / n
        std = np.sqrt(total_sq[sl].sum(0) / n - mean ** 2)
        assert (std > 0.1).all(), stream


def test_real_unit_fallbacks_agree_with_the_eyelids(real_root):
    ratios = []
    for path in sorted((real_root / POSE_DIR).glob("*.npy"))[::4]:
        pose = clean(np.load(path), 0.3)
        unit, conf = unit_length(pose.xy, pose.conf), pose.conf.copy()
        conf[:, list(kp.FACE)] = False
        ratios.append(unit_length(pose.xy, conf) / unit)  # eye distance, rescaled to eyelid units
    assert abs(np.median(ratios) - 1) < 0.05 and min(ratios) > 0.7 and max(ratios) < 1.3


# ---------------------------------------------------------------------------- commands


def test_data_check_on_the_synthetic_root(synth_root, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert check_main(["--root", str(synth_root), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    splits = json.loads((synth_root / "split_files.json").read_text())
    for split, names in splits.items():
        n = len(names)
        assert any(line.split()[:3] == [split, str(n), str(n)] for line in text.splitlines()), split
    assert "confident keypoints (score >= 0.3)" in text and "result: usable" in text
    report = json.loads(out.read_text())
    assert report["usable"] and report["errors"] == []
    # the fractions are what they claim: confident (frame, keypoint) pairs per part
    seen, frames = np.zeros(kp.NUM_ROWS), 0
    for path in (synth_root / POSE_DIR).glob("*.npy"):
        raw = np.load(path)
        with np.errstate(invalid="ignore"):
            seen += (raw[..., 2] >= 0.3).sum(0)
        frames += len(raw)
    for part, rows in (("body", kp.BODY), ("face", kp.FACE), ("left_hand", kp.LEFT_HAND), ("feet", kp.FEET)):
        assert report["confident"][part] == pytest.approx(seen[list(rows)].sum() / (frames * len(rows)))
        assert f"{part.replace('_', ' ')} {report['confident'][part]:.3f}" in text
    assert report["confident"]["feet"] == 0 and report["confident"]["face"] > 0.9
    f = report["files"]
    assert (f["checked"], f["ok_shape"], f["bad_size_row"], f["sizes"]) == (24, 24, 0, {"512x512": 24})
    assert f["frames"] == frames == report["frames"]["total"] and 40 <= report["frames"]["min"]
    assert report["frames"]["max"] <= 90 and not report["pack"]["exists"]


def test_data_check_fails_on_a_broken_root_and_names_the_file(tmp_path, capsys):
    root = write_root(tmp_path / "r", {"a": seq(0, 20), "v": seq(1, 20)}, {"train": ["a"], "val": ["v"]})
    (root / "split_files.json").unlink()
    assert check_main(["--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert str(root / "split_files.json") in err and "not found" in err

    bad = write_root(tmp_path / "b", {"a": seq(0, 20)[:, 1:], "v": seq(1, 20)}, {"train": ["a"], "val": ["v"]})
    assert check_main(["--root", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad / POSE_DIR / "a.npy") in err and "bad shape" in err and "[T, 134, 3]" in err

    assert check_main(["--root", str(tmp_path / "missing")]) == 2
    assert "data root not found" in capsys.readouterr().err
    (bad / POSE_DIR / "a.npy").unlink()
    shutil.rmtree(bad / POSE_DIR)
    assert check_main(["--root", str(bad)]) == 2
    assert str(bad / POSE_DIR) in capsys.readouterr().err


def test_data_check_reports_size_row_scores_and_nan_frames(tmp_path):
    good, odd = seq(0, 20, noise=True), seq(1, 20)
    odd[:, 0] = (0, 0, 0)                      # size row lost
    odd[3, 1:] = np.nan                         # one NaN frame
    odd[4, 10, 2] = 1.7                         # one score that is not a confidence
    root = write_root(tmp_path / "r", {"good": good, "odd": odd}, {"train": ["good", "odd"], "val": ["good"]})
    report = check_root(root, data_cfg(root))
    f = report["files"]
    assert f["bad_size_row"] == 1 and f["bad_size_row_examples"] == ["odd"]
    assert f["scores_out_of_range"] == 1 and f["score_max"] == pytest.approx(1.7)
    assert f["nan_frames"] >= 1 and f["files_with_nan_frames"] >= 1
    assert f["scores_nonfinite"] >= kp.NUM_ROWS - 1
    assert report["usable"] and any("odd.npy" in w and "size row" in w for w in report["warnings"])
    assert any("names are in more than one split" in w for w in report["warnings"])


def test_data_check_max_files_and_pack_agreement(synth_root, tmp_path, capsys):
    report = check_root(synth_root, data_cfg(synth_root), max_files=3)
    assert report["files"]["checked"] == 3 and report["files"]["partial"] and report["usable"]
    listed = len(json.loads((synth_root / "split_files.json").read_text())["train"])
    assert report["splits"]["train"]["kept"] == 3 and report["splits"]["train"]["unchecked"] == listed - 3
    root = copy_root(synth_root, tmp_path / "root")
    write_pack(root, progress=False)
    report = check_root(root, data_cfg(root))
    assert report["pack"]["exists"] and report["pack"]["problems"] == [] and report["pack"]["sequences"] == 24
    np.save(root / POSE_DIR / "synth_000000.npy", seq(0, 7))  # rewritten with another length
    report = check_root(root, data_cfg(root))
    assert report["usable"] and any("lengths differ: 1 (e.g. synth_000000)" in p for p in report["pack"]["problems"])
    assert any(w.startswith(f"pack {root / 'packed'}") and "data-pack" in w for w in report["warnings"])


def test_data_check_on_real_data(real_root, capsys):
    assert check_main(["--root", str(real_root)]) == 0
    text = capsys.readouterr().out
    num_train = len(json.loads((real_root / "split_files.json").read_text())["train"])
    assert "train" in text and f"result: usable (train: {num_train} sequences)" in text


def test_data_pack_command_makes_the_pack_the_dataset_uses(synth_root, tmp_path, capsys):
    root = copy_root(synth_root, tmp_path / "root")
    np.save(root / POSE_DIR / "broken.npy", np.zeros((5, 133, 3), np.float32))
    assert pack_main(["--root", str(root)]) == 0
    text = capsys.readouterr().out
    frames = sum(len(np.load(root / POSE_DIR / f"{n}.npy")) for n in all_names(root))
    assert f"packed 24 sequences, {frames} frames" in text and str(root / "packed") in text
    assert f"skipped {root / POSE_DIR / 'broken.npy'}: bad shape [5, 133, 3]" in text
    ds = PoseDataset(data_cfg(root), "train")
    assert ds.source.packed and ds.names == json.loads((root / "split_files.json").read_text())["train"]
    elsewhere = tmp_path / "pack_elsewhere"
    assert pack_main(["--root", str(root), "--out", str(elsewhere)]) == 0
    assert f"data.pack_dir={elsewhere}" in capsys.readouterr().out
    assert PoseSource(root, pack_dir=str(elsewhere)).packed
    assert pack_main(["--root", str(tmp_path / "none")]) == 2
    assert "pose folder not found" in capsys.readouterr().err
    assert os.path.isfile(root / "packed" / "index.json")


def test_confident_points_far_outside_the_picture_are_not_observed():
    """An estimator's point ten frame widths away at full score (seen on real fingerspelling)
    is not a pose: unobserved, and filled like any gap; one just outside the picture is kept."""
    from src.data.pose import OFF_FRAME, observed_mask

    raw = np.zeros((4, kp.NUM_ROWS, 3), np.float32)
    raw[..., :2], raw[..., 2] = 200.0, 1.0
    raw[:, kp.SIZE_ROW] = (640, 480, 0)
    raw[0, 100, 0] = 10 * 640            # ten frame widths to the right
    raw[1, 100, 1] = -(OFF_FRAME + 0.5) * 480
    raw[2, 100, 0] = -0.5 * 640          # half a width to the left: a hand leaving the picture
    raw[3, 100, 0] = np.inf
    seen = observed_mask(raw, 0.3)
    assert seen[:, 100].tolist() == [False, False, True, False]
    assert seen[:, 99].all() and not seen[:, kp.SIZE_ROW].any()
