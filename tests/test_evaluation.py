"""Evaluation beyond one split's errors: token rates, codes on holds, controlled shifts,
the rate-distortion report and split errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from src.data import keypoints as kp
from src.data.pose import rotate
from src.data.dataset import PoseDataset, truth_in_input_frame
from src.data.sample import make_sample
from src.data.source import DataError
from src.tools.synth import frame_ranges, synth_sequence_with_holds
from src.inference import load_tokenizer
from src.metrics import shifts as sh
from src.metrics.holds import annotated_hold_chunks, hold_token_sums, motion_hold_chunks
from src.metrics.report import evaluation_report
from src.tokens.rle import chunk_token_counts, count_tokens, rle_encode
from tests.conftest import tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    pose, _, _ = synth_sequence_with_holds(np.random.default_rng(11), 120)
    return pose


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_tokenizer(tiny_checkpoint)


@pytest.fixture(scope="module")
def report(tiny):
    model, cfg = tiny
    return evaluation_report(model, cfg, "train", CPU, progress=False)  # 20 sequences: holds to find

# ---------------------------------------------------------------------------- shifts


def _seen(pose: np.ndarray) -> np.ndarray:
    return sh.observed(pose)


@pytest.mark.parametrize("name", list(sh.SHIFTS))
def test_every_shift_is_deterministic_and_changes_the_input(raw, name):
    shift = sh.SHIFTS[name]
    a, b = shift.input(raw, "seq_a"), shift.input(raw, "seq_a")
    assert a.shape == raw.shape and a.dtype == raw.dtype
    assert np.array_equal(a, b, equal_nan=True)
    assert not np.array_equal(a, raw, equal_nan=True)
    assert np.array_equal(a[:, kp.SIZE_ROW], raw[:, kp.SIZE_ROW])  # the size row stays the video size


def test_geometric_shifts_move_points_as_specified(raw):
    seen = _seen(raw)
    centre = np.array([256.0, 256.0])
    scaled = sh.SHIFTS["scale_1.5"].input(raw, "s")
    assert np.allclose(scaled[seen][:, :2] - centre, 1.5 * (raw[seen][:, :2] - centre), atol=1e-3)
    assert np.array_equal(scaled[..., 2], raw[..., 2], equal_nan=True)

    moved = sh.SHIFTS["translate_-60"].input(raw, "s")
    assert np.allclose(moved[seen][:, :2], raw[seen][:, :2] - 60, atol=1e-3)

    pivot = sh.shoulder_midpoint(raw)
    turned = sh.SHIFTS["rotate_+15"].input(raw, "s")
    d_before = np.linalg.norm(raw[seen][:, :2] - pivot, axis=-1)
    d_after = np.linalg.norm(turned[seen][:, :2] - pivot, axis=-1)
    assert np.allclose(d_before, d_after, atol=1e-3)  # a rotation about the pivot
    v0, v1 = raw[seen][:, :2] - pivot, turned[seen][:, :2] - pivot
    angle = np.degrees(np.arctan2(v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0], (v0 * v1).sum(-1)))
    assert np.allclose(angle[d_before > 5], 15, atol=0.01)


def test_closeup_zooms_and_hides_what_leaves_the_frame(raw):
    out = sh.SHIFTS["closeup_1.6"].input(raw, "s")
    pivot = sh.shoulder_midpoint(raw)
    seen = _seen(raw)
    assert np.allclose(out[..., :2][seen] - pivot, 1.6 * (raw[..., :2][seen] - pivot), atol=1e-3)
    inside = (out[:, 1:, :2] >= 0).all(-1) & (out[:, 1:, :2] < 512).all(-1)
    assert (out[:, 1:, 2][~inside] == 0).all()
    assert (out[:, sh.BELOW_HIPS, 2] == 0).all()
    kept = inside & (np.arange(1, kp.NUM_ROWS) < sh.BELOW_HIPS[0])[None] | (np.arange(1, kp.NUM_ROWS) > 23)[None]
    assert np.array_equal(out[:, 1:, 2][kept & inside], raw[:, 1:, 2][kept & inside], equal_nan=True)
    assert sh.SHIFTS["closeup_1.6"].px_scale == 1.6


def test_leg_shifts_touch_exactly_the_legs(raw):
    absent = sh.SHIFTS["legs_absent"].input(raw, "s")
    legs = np.zeros(kp.NUM_ROWS, bool)
    legs[12:24] = True
    assert (absent[:, legs, 2] == 0).all()
    assert np.array_equal(absent[:, ~legs], raw[:, ~legs], equal_nan=True)
    assert np.array_equal(absent[..., :2], raw[..., :2], equal_nan=True)

    present = sh.SHIFTS["legs_present"].input(raw, "s")
    assert np.array_equal(present[:, ~legs], raw[:, ~legs], equal_nan=True)
    assert (present[:, 14:24, 2] == 0.6).all()
    knees, hips = present[:, [14, 15], 1], present[:, [12, 13], 1]
    assert (knees > hips).all()  # hung below the hips (image y points down)


def test_part_gaps_hide_whole_stretches_of_one_part(raw):
    face = sh.SHIFTS["face_gaps"].input(raw, "s")
    changed = face[..., 2] != raw[..., 2]
    assert changed.any() and not changed[:, [r for r in range(kp.NUM_ROWS) if r not in kp.FACE]].any()
    hidden = (face[:, kp.FACE.start:kp.FACE.stop, 2] == 0).all(1)
    assert 30 <= hidden.sum() <= len(raw) * 0.6  # ~1 s stretches covering about a third
    assert np.array_equal(face[..., :2], raw[..., :2], equal_nan=True)

    hands = [sh.SHIFTS["hand_gaps"].input(raw, f"seq{i}") for i in range(8)]
    for out in hands:
        touched = {name for name, rows in (("L", kp.LEFT_HAND), ("R", kp.RIGHT_HAND))
                   if (out[:, rows.start:rows.stop, 2] != raw[:, rows.start:rows.stop, 2]).any()}
        assert len(touched) == 1
    assert len({(out[:, kp.LEFT_HAND.start, 2] == 0).sum() for out in hands}) > 1  # drawn per sequence


def test_jitter_perturbs_the_input_but_not_the_truth(raw):
    shift = sh.SHIFTS["jitter_2px"]
    truth, noisy = shift.truth(raw, "s"), shift.input(raw, "s")
    assert np.array_equal(truth, raw, equal_nan=True)
    seen = _seen(raw)
    delta = (noisy - raw)[..., :2]
    assert np.all(delta[~seen] == 0) | np.isnan(delta[~seen]).all()
    assert 1.8 < delta[seen].std() < 2.2
    assert not np.array_equal(shift.input(raw, "s"), shift.input(raw, "t"))


def test_select_names_and_rejects_unknown():
    assert [s.name for s in sh.select("scale_0.6, legs_absent")] == ["scale_0.6", "legs_absent"]
    assert len(sh.select("all")) == len(sh.SHIFTS) >= 12
    with pytest.raises(ValueError, match="known: all, scale_0.6"):
        sh.select("scale_2")


@pytest.mark.parametrize("reference", ["none", "head"])
def test_truth_in_input_frame_maps_through_pixels(raw, tiny, reference):
    _, cfg = tiny
    data = dataclasses.replace(cfg.data, max_frames=0, reference=reference)
    clean = make_sample(raw, data)
    same = truth_in_input_frame(clean, clean)
    assert np.allclose(same["x_true"], clean["x"], atol=1e-5) and np.array_equal(same["conf_true"], clean["conf"])
    noisy = make_sample(sh.SHIFTS["jitter_2px"].input(raw, "s"), data)
    mapped = truth_in_input_frame(clean, noisy)
    counts, size = [s.num_keypoints for s in kp.STREAMS], tuple(clean["size"])
    # back to the picture's pixels, each through its own frame (centres, unit, roll, reference)
    def to_px(x, sample):
        local = x + sample["reference"][:, None]
        return rotate(local * sample["unit"] + np.repeat(sample["centres"], counts, axis=2), float(sample["angle"]), size)

    pixels, clean_px = to_px(mapped["x_true"], noisy), to_px(clean["x"], clean)
    assert np.allclose(pixels, clean_px, atol=1e-3)  # the same pixels, expressed in the noisy input's frame


def test_sequence_mean_oracle_is_exact_on_poses_still_within_each_sequence(report):
    from src.metrics.pixel_error import sequence_mean_oracle

    g = torch.Generator().manual_seed(0)
    poses = torch.randn(2, 1, 1, kp.NUM_STREAM_POINTS, 2, generator=g)      # one pose per sequence
    x = torch.cat([poses[0].expand(3, 10, -1, -1), poses[1].expand(2, 10, -1, -1)])
    sequence = torch.tensor([0, 0, 0, 1, 1])
    conf = torch.ones(x.shape[:3], dtype=torch.bool)
    conf[0, :5] = False
    torch.testing.assert_close(sequence_mean_oracle(x, conf, sequence), x)
    moved = x.clone()
    moved[3:] += 1.0                                                         # sequence 1 moves once
    moved[4] += 2.0
    expected = x.clone()
    expected[3:] = poses[1] + 2.0
    torch.testing.assert_close(sequence_mean_oracle(moved, conf, sequence), expected)
    reported = report["result"]["oracle_sequence_mean_px"]
    assert set(reported) == set(kp.STREAM_NAMES) and all(v > 0 for v in reported.values())


def test_shift_report_is_in_unshifted_pixels(tiny, report):
    model, cfg = tiny
    shifts = sh.select("scale_1.5,translate_+60,jitter_2px")
    out = sh.shift_report(model, cfg, "train", CPU, report, shifts, progress=False)
    base = report["result"]["oracle_chunk_mean_px"]
    for name in ("scale_1.5", "translate_+60"):
        row = out["shifts"][name]
        # the oracle depends on the data only: a pure change of units or position leaves it as it was
        for s in ("F", "LH", "RH", "B"):
            assert row["oracle_chunk_mean_px"][s] == pytest.approx(base[s], rel=1e-3)
        # ... and so does the model's error: the frames of reference take out scale and position
        assert row["ratio"] == pytest.approx({s: 1.0 for s in kp.STREAM_NAMES}, abs=0.01)
        assert row["pass"] is True
    assert out["shifts"]["jitter_2px"]["num_sequences"] == report["result"]["num_sequences"]
    assert out["pass"] is out["shifts"]["jitter_2px"]["pass"]   # the two others pass
    md = sh.shift_markdown(out)
    assert md.count("\n| ") == 4 and "jitter_2px" in md


def test_shift_verdict_on_hand_computed_errors():
    unshifted = {"F": 2.0, "LH": 10.0, "RH": 10.0, "B": 5.0, "FB": 8.0}
    at_limit = {"F": 2.6, "LH": 13.0, "RH": 9.0, "B": 5.0, "FB": 8.0}      # 1.3x exactly: within
    ratio, ok = sh.within(at_limit, unshifted, 1.3)
    assert ok and ratio == pytest.approx({"F": 1.3, "LH": 1.3, "RH": 0.9, "B": 1.0, "FB": 1.0})
    ratio, ok = sh.within({**at_limit, "FB": 10.5}, unshifted, 1.3)      # 1.3125x on FB alone
    assert not ok and ratio["FB"] == pytest.approx(1.3125)
    assert sh.within({**at_limit, "FB": 10.5}, unshifted, 1.5)[1]

# ---------------------------------------------------------------------------- holds and token rates


def test_chunk_token_counts_attribute_rle_tokens():
    codes = {s: [[1, 2], [1, 2], [1, 2], [3, 4], [3, 4]] for s in kp.STREAM_NAMES}
    codes["F"] = [[1, 2], [5, 2], [1, 2], [3, 4], [3, 5]]
    entries = rle_encode(codes)
    counts = chunk_token_counts(entries)
    assert counts["LH"] == [2, 1, 0, 2, 1] and counts["F"] == [2, 2, 2, 2, 2]
    assert sum(map(sum, counts.values())) == count_tokens(entries)


def test_hold_measures_count_a_constructed_sequence():
    # one sequence, 4 chunks of 5 frames, 2 streams' worth of points: still, still, moving, still
    chunk_len, c = 5, 4
    t = torch.arange(c * chunk_len, dtype=torch.float64)
    motion = torch.where((t >= 10) & (t < 15), t * 3.0, torch.zeros_like(t))   # chunk 2 moves 3 px/frame
    motion = torch.where(t >= 15, torch.full_like(t, 42.0), motion)           # then holds a new place
    gt = motion[None, :, None, None].expand(1, -1, kp.NUM_STREAM_POINTS, 2).clone()
    mask = torch.ones(1, c * chunk_len, kp.NUM_STREAM_POINTS, dtype=torch.bool)
    still = motion_hold_chunks(gt, mask, torch.ones(1, c, dtype=torch.bool), chunk_len, 0.5)[0]
    # chunk 0: never (its codes must be sent); 1: still with chunk 0; 2: moves; 3: jumps in from chunk 2
    assert still[:, 0].tolist() == [False, True, False, False]
    assert (still == still[:, :1]).all()  # every stream moved together
    alone = motion_hold_chunks(gt, mask, torch.ones(1, c, dtype=torch.bool), chunk_len, 0.5, span=1)[0]
    assert alone[:, 0].tolist() == [True, True, False, True]  # static chunks, each on its own

    frames = np.zeros(23, bool)
    frames[:10] = frames[15:] = True
    assert annotated_hold_chunks(frames, 23, 5, 5).tolist() == [False, True, False, False, True]
    assert annotated_hold_chunks(frames, 23, 5, 5, span=1).tolist() == [True, True, False, True, True]
    tokens, codes = np.array([[2, 2], [1, 2], [0, 2], [2, 2]]), np.full((4, 2), 2)
    held = np.array([[0, 0], [1, 1], [1, 0], [0, 0]], bool)
    t_sum, c_sum, n = hold_token_sums(tokens, codes, held)
    assert t_sum.tolist() == [1, 2] and c_sum.tolist() == [4, 2] and n.tolist() == [2, 1]


def test_synthetic_signer_records_its_holds():
    pose, _, still = synth_sequence_with_holds(np.random.default_rng(5), 150, noise=False)
    hands = list(kp.LEFT_HAND) + list(kp.RIGHT_HAND) + [kp.L_WRIST, kp.R_WRIST]
    step = np.linalg.norm(np.diff(pose[:, hands, :2], axis=0), axis=-1).mean(1)
    both = still[1:] & still[:-1]
    assert 0.2 < still.mean() < 0.8 and step[both].max() < 0.2 and step[~both].mean() > 1.0
    ranges = frame_ranges(still)
    rebuilt = np.zeros_like(still)
    for a, b in ranges:
        rebuilt[a:b] = True
    assert np.array_equal(rebuilt, still)


def test_report_gives_rates_holds_and_split_sizes(report, synth_root, tiny):
    _, cfg = tiny
    tok = report["result"]["tokens"]
    assert tok["tokens_per_s_rle"] == pytest.approx(tok["tokens_per_chunk_rle"] * cfg.data.fps / cfg.data.chunk_len)
    assert tok["codes_per_s"] == pytest.approx(tok["codes_per_chunk"] * 3.0)
    assert sum(tok["tokens_per_chunk_rle_stream"].values()) == pytest.approx(tok["tokens_per_chunk_rle"])
    assert tok["tokens_per_chunk_rle"] <= tok["codes_per_chunk"] == cfg.model.rvq.codes_per_chunk
    holds = report["result"]["holds"]
    assert holds["annotated"]["LH"]["chunks"] > 0  # the synthetic signer's annotations know its holds
    for kind in ("motion", "motion_static", "annotated", "annotated_static"):
        for s, v in holds[kind].items():
            assert v["tokens_rle"] <= v["codes"] == cfg.model.rvq.stream_codes(s) * v["chunks"]
            if kind.endswith("_static"):  # a hold chunk is also static
                assert v["chunks"] >= holds[kind[:-7]][s]["chunks"]
    splits = json.loads((synth_root / "split_files.json").read_text())
    assert report["split_sizes"] == {k: len(v) for k, v in splits.items()}


def test_empty_or_missing_split_is_a_clear_error(synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path)
    splits = json.loads((synth_root / "split_files.json").read_text())
    root = tmp_path / "root"
    root.mkdir()
    (root / "frames_512x512").symlink_to(synth_root / "frames_512x512")
    (root / "annotations.json").write_text((synth_root / "annotations.json").read_text())
    (root / "split_files.json").write_text(json.dumps({"train": [], "val": splits["val"]}))
    data = dataclasses.replace(cfg.data, root=str(root))
    with pytest.raises(DataError, match="split 'train' has no usable sequence: split_files.json lists none"):
        PoseDataset(data, "train")
    with pytest.raises(DataError, match="no split 'test' .has train, val"):
        PoseDataset(data, "test")

# ---------------------------------------------------------------------------- commands


def test_eval_rd_writes_table_and_plot(tiny_run, tmp_path, capsys):
    from src.commands.eval.rd import main

    first = sorted(tiny_run.glob("ckpt_epoch*.pt"))[0]
    out = tmp_path / "rd"
    last = str(tiny_run / "ckpt_last.pt")
    assert main(["--checkpoints", str(first), last, last + "@LH=1,RH=1", "--out", str(out),
                 "--labels", "early", "last", "last 6 codes", "--device", "cpu"]) == 0
    result = json.loads((out / "rd.json").read_text())
    assert [r["label"] for r in result["rows"]] == ["early", "last", "last 6 codes"]
    assert [r["codes_per_chunk"] for r in result["rows"]] == [8, 8, 6]  # a lower rate from the same weights
    md = (out / "rd.md").read_text()
    assert "| early |" in md and "| last |" in md and "oracle: exact chunk line" in md
    png = (out / "rd.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "tokens/s (RLE)" in capsys.readouterr().out


def test_eval_rvq_shifts_option(tiny_checkpoint, tmp_path, capsys):
    from src.commands.eval.rvq import main

    out = tmp_path / "report.json"
    assert main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--device", "cpu",
                 "--shifts", "legs_absent,face_gaps"]) == 0
    report = json.loads(out.read_text())
    assert list(report["shifts"]["shifts"]) == ["legs_absent", "face_gaps"]
    assert "| legs_absent |" in (tmp_path / "report.shifts.md").read_text()
    printed = capsys.readouterr().out
    assert "tokens after lossless RLE" in printed and "hold chunks (" in printed and "static chunks (" in printed
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tiny_checkpoint), "--shifts", "nope"])


def test_thresholded_rle_on_holds_counts_what_export_writes(tiny, report):
    """With export.rle_threshold the hold figures also count thresholded RLE: never more
    tokens than lossless RLE, and a huge threshold leaves one token per run."""
    model, cfg = tiny
    loose = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, rle_threshold=1e9))
    result = evaluation_report(model, loose, "train", CPU, progress=False)["result"]
    held, lossless = result["holds"], report["result"]["holds"]
    for kind in ("motion", "motion_static"):
        for s, v in held[f"{kind}_thresholded"].items():
            assert v["chunks"] == lossless[kind][s]["chunks"]
            assert v["tokens_rle"] <= lossless[kind][s]["tokens_rle"]
    assert "motion_thresholded" not in lossless
    assert result["tokens"]["tokens_per_chunk_rle_thresholded"] < result["tokens"]["tokens_per_chunk_rle"]
