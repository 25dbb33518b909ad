"""Invariants of the synthetic signer and of the dataset it writes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from src.commands.data.synth import main as synth_main
from src.data.keypoints import (
    BODY, FACE, FEET, HEAD_WIDTH, L_ELBOW, L_SHOULDER, L_WRIST, LEFT_EYELID, LEFT_HAND, LEFT_HAND_BONES,
    NUM_ROWS, R_ELBOW, R_SHOULDER, R_WRIST, RIGHT_EYELID, RIGHT_HAND, RIGHT_HAND_BONES, SHOULDER_WIDTH,
    UNIT_FALLBACKS,
)
from src.data.source import DataError
from src.tools.synth import NUM_SIGNERS, synth_sequence, synthetic_marker, write_synthetic_dataset

LEGS = list(range(14, 18)) + list(FEET)


def clean(seed: int, frames: int = 200, **kw) -> np.ndarray:
    return synth_sequence(np.random.default_rng(seed), frames, noise=False, **kw)[0].astype(np.float64)


def dist(pose: np.ndarray, a, b) -> np.ndarray:
    """Per-frame distance between rows ``a`` and ``b`` (ints or sequences of rows)."""
    return np.linalg.norm(pose[:, a, :2] - pose[:, b, :2], axis=-1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth50")
    counts = write_synthetic_dataset(root, 50, seed=1, min_frames=30, max_frames=80)
    return root, counts


def test_shape_dtype_and_size_row():
    pose, glosses = synth_sequence(np.random.default_rng(0), 37, width=640, height=480)
    assert pose.shape == (37, NUM_ROWS, 3) and pose.dtype == np.float32
    assert np.array_equal(pose[:, 0], np.tile([640, 480, 0], (37, 1)))
    assert 2 <= len(glosses) <= 6 and all(g.isupper() for g in glosses)
    assert not np.nan_to_num(pose[:, LEGS]).any()  # out of frame, like real data


def test_short_sequence_and_bad_length():
    assert synth_sequence(np.random.default_rng(0), 1)[0].shape == (1, NUM_ROWS, 3)
    with pytest.raises(ValueError, match="num_frames must be >= 1, got 0"):
        synth_sequence(np.random.default_rng(0), 0)


def test_deterministic_for_a_seed():
    a, ga = synth_sequence(np.random.default_rng(7), 90)
    b, gb = synth_sequence(np.random.default_rng(7), 90)
    c, _ = synth_sequence(np.random.default_rng(8), 90)
    assert np.array_equal(a, b, equal_nan=True) and ga == gb
    assert not np.array_equal(a, c, equal_nan=True)


def test_noise_is_small_on_top_of_the_same_motion():
    noisy = synth_sequence(np.random.default_rng(4), 120)[0]
    truth = clean(4, 120)
    ok = (noisy[..., 2] > 0) & np.isfinite(noisy[..., 2])
    err = np.linalg.norm(noisy[..., :2] - truth[..., :2], axis=-1)[ok]
    assert np.median(err) < 2.0 and np.percentile(err, 99) < 8.0
    valid = np.isfinite(noisy[..., 2])
    assert np.all((noisy[..., 2][valid] >= 0) & (noisy[..., 2][valid] <= 1))
    assert not noisy[:, 1:, :2][(noisy[:, 1:, 2] == 0)].any()  # score 0 => x = y = 0


def test_scales_with_the_frame_size():
    small, big = clean(3, 20), clean(3, 20, width=1024, height=1024)
    assert np.allclose(big[:, 1:, :2], (small[:, 1:, :2] - 256) * 2 + 512, atol=1e-3)


@pytest.mark.parametrize("signer", range(NUM_SIGNERS))
def test_arm_bones_have_constant_length(signer):
    pose = clean(signer, 150, signer=signer)
    for a, b in ((L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST)):
        length = dist(pose, a, b)
        assert np.ptp(length) < 0.01 and 120 < length.mean() < 190


def test_arm_bones_under_jitter():
    noisy = synth_sequence(np.random.default_rng(2), 150, signer=0)[0]
    noisy = noisy[np.isfinite(noisy[:, 1, 0])]
    length = dist(noisy, L_SHOULDER, L_ELBOW)[(noisy[:, [L_SHOULDER, L_ELBOW], 2] > 0).all(1)]
    assert length.std() < 2.0


@pytest.mark.parametrize("signer", [0, NUM_SIGNERS - 1])  # the last signer is left-handed
def test_left_is_on_the_image_right(signer):
    pose = clean(10 + signer, 120, signer=signer)
    assert np.all(pose[:, L_SHOULDER, 0] > pose[:, R_SHOULDER, 0] + 150)
    assert np.all(pose[:, L_ELBOW, 0] > pose[:, R_ELBOW, 0])


def test_dominant_hand_moves_more():
    def travel(signer: int, wrist: int) -> float:
        steps = [np.diff(clean(s, 150, signer=signer)[:, wrist, :2], axis=0) for s in range(10)]
        return float(sum(np.linalg.norm(d, axis=-1).sum() for d in steps))

    assert travel(0, R_WRIST) > 1.2 * travel(0, L_WRIST)
    assert travel(NUM_SIGNERS - 1, L_WRIST) > 1.2 * travel(NUM_SIGNERS - 1, R_WRIST)


def test_hand_wrists_coincide_with_body_wrists():
    pose = clean(5)
    assert np.abs(pose[:, LEFT_HAND.start] - pose[:, L_WRIST]).max() < 1e-3
    assert np.abs(pose[:, RIGHT_HAND.start] - pose[:, R_WRIST]).max() < 1e-3
    noisy = synth_sequence(np.random.default_rng(5), 200)[0]
    seen = (noisy[:, [RIGHT_HAND.start, R_WRIST], 2] > 0.3).all(1)
    assert np.percentile(dist(noisy[seen], RIGHT_HAND.start, R_WRIST), 95) < 8.0


def test_hands_have_plausible_size():
    pose = np.concatenate([clean(s, 100) for s in range(6)])
    for hand, bones in ((LEFT_HAND, LEFT_HAND_BONES), (RIGHT_HAND, RIGHT_HAND_BONES)):
        assert 0 < dist(pose, *zip(*bones)).max() < 45
        points = pose[:, hand.start:hand.stop, :2]
        span = np.linalg.norm(points - points[:, :1], axis=-1).max(1)  # wrist to the farthest point
        assert 30 < span.min() and 70 < np.percentile(span, 95) < 110  # an open hand is 75-97 px


def test_face_units_match_the_keypoint_layout():
    pose = clean(7, 240)
    eyelid = (dist(pose, *LEFT_EYELID) + dist(pose, *RIGHT_EYELID)) / 2
    assert eyelid.min() > 0 and 16 < np.median(eyelid) < 20
    for (a, b), ratio in UNIT_FALLBACKS:
        assert np.median(dist(pose, a, b) / eyelid) == pytest.approx(ratio, rel=0.12), (a, b)
    assert dist(pose, *HEAD_WIDTH).min() > 0 and dist(pose, *SHOULDER_WIDTH).min() > 150


def test_layout_is_upright_and_framed():
    pose = clean(8)
    nose, shoulders, hips = pose[:, 1, 1], pose[:, [6, 7], 1].mean(1), pose[:, [12, 13], 1].mean(1)
    assert np.all((90 < nose) & (nose < 160)) and np.all((200 < shoulders) & (shoulders < 260))
    assert np.all((470 < hips) & (hips < 530))
    face = pose[:, list(FACE), :2]
    assert np.all(face[:, :, 1].min(1) > 40) and np.all(face[:, :, 1].max(1) < shoulders)
    assert np.all(face[:, :, 0].max(1) - face[:, :, 0].min(1) > 80)


def test_blinks_close_the_eyelids_for_a_few_frames():
    pose = clean(9, 300)
    # upper lid landmarks 38/39 and lower 42/41 of the right eye: rows 61/62 and 65/64
    gap = np.abs(pose[:, [61, 62], 1] - pose[:, [65, 64], 1]).max(1)
    edges = np.flatnonzero(np.diff(np.r_[0, (gap < 1e-3).astype(int), 0])).reshape(-1, 2)
    inner = edges[(edges[:, 0] > 0) & (edges[:, 1] < len(pose))]  # blinks cut by the ends are shorter
    runs = inner[:, 1] - inner[:, 0]
    assert len(runs) >= 2 and np.all((3 <= runs) & (runs <= 5))
    assert np.median(gap) > 3.0  # open most of the time


def test_mouth_opens_and_closes():
    gaps = [np.ptp(dist(clean(s, 200), 86, 90)) for s in range(6)]  # inner lips 63-67
    assert max(gaps) > 4.0


def test_static_holds_and_moving_parts():
    pose = clean(11, 200)
    hands = pose[:, list(LEFT_HAND) + list(RIGHT_HAND), :2]
    windows = np.lib.stride_tricks.sliding_window_view(hands, 10, axis=0)  # (T-9, 42, 2, 10)
    extent = np.ptp(windows, axis=-1).max(axis=(1, 2))
    assert (extent < 1.0).sum() >= 10  # holds: run-length compression has something to find
    assert (extent > 30.0).sum() >= 10
    assert np.ptp(pose[:, list(BODY)[:5], :2], axis=0).max() > 1.0  # the head moves a little


def test_dataset_layout(dataset):
    root, counts = dataset
    annotations = json.loads((root / "annotations.json").read_text())
    splits = json.loads((root / "split_files.json").read_text())
    files = sorted(p.stem for p in (root / "frames_512x512").iterdir())
    names = [n for s in ("train", "val", "test") for n in splits[s]]
    assert sorted(names) == files == sorted(annotations) and len(files) == 50
    assert counts == {s: len(splits[s]) for s in ("train", "val", "test")}
    assert all(counts.values()) and 38 <= counts["train"] <= 42
    assert files[0] == "synth_000000"
    for name in files[:10]:
        entry, pose = annotations[name], np.load(root / "frames_512x512" / f"{name}.npy")
        assert pose.shape == (entry["num_frames"], NUM_ROWS, 3) and 30 <= entry["num_frames"] <= 80
        assert 0 <= entry["signer"] < NUM_SIGNERS and entry["text"] and entry["gloss"]
        assert entry["text"].lower().rstrip(".?") == entry["gloss"].lower().replace("-", " ")


def test_dataset_has_detector_failures(dataset):
    root, _ = dataset
    nan_seqs = lost_hands = 0
    for path in (root / "frames_512x512").iterdir():
        pose = np.load(path)
        nan_frames = np.isnan(pose[:, 1:]).all(axis=(1, 2))
        assert np.array_equal(np.isnan(pose).any(axis=(1, 2)), nan_frames)  # NaN means a whole frame
        assert not np.isnan(pose[:, 0]).any()
        nan_seqs += nan_frames.any()
        scores = pose[~nan_frames][:, list(LEFT_HAND) + list(RIGHT_HAND), 2].reshape(-1, 2, 21)
        lost_hands += (scores.max(-1) < 0.3).any()
    assert 1 <= nan_seqs <= 15 and lost_hands >= 5


def test_every_split_non_empty_for_ten(tmp_path):
    counts = write_synthetic_dataset(tmp_path, 10, min_frames=20, max_frames=30)
    assert all(counts.values()) and sum(counts.values()) == 10


def test_prefix_stable_and_atomic(tmp_path):
    write_synthetic_dataset(tmp_path / "a", 5, seed=3, min_frames=20, max_frames=40)
    write_synthetic_dataset(tmp_path / "b", 8, seed=3, min_frames=20, max_frames=40)
    for i in range(5):
        name = f"frames_512x512/synth_{i:06d}.npy"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a = json.loads((tmp_path / "a" / "annotations.json").read_text())
    b = json.loads((tmp_path / "b" / "annotations.json").read_text())
    assert all(a[n] == b[n] for n in a)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".npy", ".json")]
    assert not leftovers


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"split_fractions must be 3 numbers >= 0 summing to 1, got \(0.5, 0.5, 0.5\)"):
        write_synthetic_dataset(tmp_path, 3, split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="need 1 <= min_frames <= max_frames, got 50, 40"):
        write_synthetic_dataset(tmp_path, 3, min_frames=50, max_frames=40)


def test_command(tmp_path, capsys):
    out = tmp_path / "ds"
    assert synth_main(["--out", str(out), "--num", "12", "--min-frames", "20", "--max-frames", "30"]) == 0
    line = capsys.readouterr().out.strip()
    assert str(out) in line and "train" in line and "frames" in line and "\n" not in line
    assert len(list((out / "frames_512x512").iterdir())) == 12


def test_rewriting_a_synthetic_folder_replaces_stale_files(tmp_path):
    root = tmp_path / "ds"
    write_synthetic_dataset(root, 12, seed=1, min_frames=20, max_frames=30)
    (root / "frames_512x512" / "notes.txt").write_text("mine")  # not ours: kept
    write_synthetic_dataset(root, 10, seed=1, min_frames=20, max_frames=30)
    names = sorted(p.stem for p in (root / "frames_512x512").glob("*.npy"))
    assert names == [f"synth_{i:06d}" for i in range(10)]
    assert (root / "frames_512x512" / "notes.txt").read_text() == "mine"
    assert synthetic_marker(root)["num"] == 10


def test_a_folder_with_other_data_is_refused(tmp_path):
    (tmp_path / "frames_512x512").mkdir()
    (tmp_path / "frames_512x512" / "video_01.npy").write_bytes(b"someone's data")
    with pytest.raises(DataError, match="video_01.npy"):
        write_synthetic_dataset(tmp_path, 10, min_frames=20, max_frames=30)
    assert (tmp_path / "frames_512x512" / "video_01.npy").read_bytes() == b"someone's data"


def test_demo_regenerates_a_set_of_another_size(tmp_path):
    from src.pipelines.demo import ensure_synthetic

    root = tmp_path / "ds"
    assert ensure_synthetic(root, 10) and not ensure_synthetic(root, 10)
    assert ensure_synthetic(root, 11)
    assert len(list((root / "frames_512x512").glob("*.npy"))) == 11


def test_data_check_says_the_nan_are_planted(tmp_path):
    from src.tools.check import check_root, format_report

    write_synthetic_dataset(tmp_path, 10, seed=0, min_frames=60, max_frames=90)
    text = format_report(check_root(tmp_path))
    assert "NaN/inf" in text and "planted on purpose" in text
    (tmp_path / "synthetic.json").unlink()
    assert "planted" not in format_report(check_root(tmp_path))


def test_like_csl_daily_has_its_lengths_and_split_shares(tmp_path):
    """--like-csl-daily: sequences of 60-400 frames split in CSL-Daily's proportions (18,401 /
    1,077 / 1,176 of 20,654), here for 400 of them."""
    assert synth_main(["--out", str(tmp_path / "r"), "--num", "400", "--like-csl-daily"]) == 0
    splits = json.loads((tmp_path / "r" / "split_files.json").read_text())
    shares = np.array([len(splits[s]) for s in ("train", "val", "test")]) / 400
    np.testing.assert_allclose(shares, np.array([18401, 1077, 1176]) / 20654, atol=0.01)
    frames = [a["num_frames"] for a in json.loads((tmp_path / "r" / "annotations.json").read_text()).values()]
    assert 60 <= min(frames) and max(frames) <= 400 and max(frames) > 300
    assert synthetic_marker(tmp_path / "r")["max_frames"] == 400
