"""`.pose` import/export: the four real files, the mapping, left/right, crop, fps, and the command."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from src.data import keypoints as kp
from src.data.source import DataError

from tests.conftest import REPO

POSE_FILES = REPO.parent / "shared" / "data" / "pose_files"
REFERENCE = REPO.parent / "shared" / "data" / "real_pose_dev"
# file -> the same clip as converted independently into the dataset layout
PAIRS = {"sgbfss_example.openpose.pose": "sgbfss_pipelines_openpose",
         "sgbfss_example.mediapipe.pose": "sgbfss_pipelines_mediapipe",
         "autsl_signer0_sample1000.holistic.pose": "autsl_signer0_sample1000",
         "phoenix14t_tagesschau17.holistic.pose": "phoenix14t_25oct2010_tagesschau_17"}


@pytest.fixture(scope="module")
def pose_dir(tmp_path_factory):
    """A temporary copy of the real .pose files; skipped without them or without pose-format."""
    pytest.importorskip("pose_format", reason="pose-format not installed (pip install pose-format)")
    if not POSE_FILES.is_dir():
        pytest.skip(f"real .pose files not available ({POSE_FILES.name} folder absent)")
    dst = tmp_path_factory.mktemp("pose_files")
    for f in PAIRS:
        shutil.copy(POSE_FILES / f, dst / f)
    return dst


def test_missing_package_says_how_to_install(monkeypatch):
    from src.data.posefile import require_pose_format

    monkeypatch.setitem(sys.modules, "pose_format", None)
    with pytest.raises(DataError, match="pip install pose-format"):
        require_pose_format()


@pytest.mark.parametrize("file", list(PAIRS))
def test_import_matches_the_independent_conversion(pose_dir, file):
    from src.data.posefile import read_pose, to_layout

    src = read_pose(pose_dir / file)
    rows, info = to_layout(src)
    assert rows.shape[1:] == (kp.NUM_ROWS, 3) and tuple(rows[0, kp.SIZE_ROW]) == (512, 512, 0)
    # 30 fps over the source duration
    assert rows.shape[0] == int((src.rows.shape[0] - 1) * 30 / src.fps + 1e-9) + 1
    if not REFERENCE.is_dir():
        pytest.skip("reference conversion (real_pose_dev) not available")
    ref = np.load(REFERENCE / "frames_512x512" / f"{PAIRS[file]}.npy")
    np.testing.assert_array_equal(rows[..., 2] > 0, ref[..., 2] > 0)
    assert np.abs(rows - ref).max() < 1e-3


@pytest.mark.parametrize("file", list(PAIRS))
def test_left_is_the_signers_left(pose_dir, file):
    """A signer facing the camera has the left shoulder, eye and hand on the image right, and the
    hand model's wrist next to the body model's wrist of the same side."""
    from src.data.posefile import load_pose_file

    rows = load_pose_file(pose_dir / file)
    seen = lambda *r: np.all([rows[:, i, 2] > 0 for i in r], axis=0)  # noqa: E731
    both = seen(kp.L_SHOULDER, kp.R_SHOULDER)
    assert np.mean(rows[both, kp.L_SHOULDER, 0] > rows[both, kp.R_SHOULDER, 0]) > 0.95
    eyes = seen(kp.FACE.start + 36, kp.FACE.start + 45)      # iBUG 37 (right eye, outer), 46 (left, outer)
    assert np.mean(rows[eyes, kp.FACE.start + 45, 0] > rows[eyes, kp.FACE.start + 36, 0]) > 0.95
    width = np.median(np.linalg.norm(rows[both, kp.L_SHOULDER, :2] - rows[both, kp.R_SHOULDER, :2], axis=-1))
    for wrist, hand in ((kp.L_WRIST, kp.LEFT_HAND.start), (kp.R_WRIST, kp.RIGHT_HAND.start)):
        ok = seen(wrist, hand)
        if ok.sum() >= 5:
            gap = np.linalg.norm(rows[ok, wrist, :2] - rows[ok, hand, :2], axis=-1)
            assert np.median(gap) < 0.3 * width


def test_upper_body_inside_the_crop(pose_dir):
    from src.data.posefile import load_pose_file

    for file in PAIRS:
        rows = load_pose_file(pose_dir / file)
        upper = rows[:, list(kp.UPPER_BODY) + list(kp.FACE)]
        xy = upper[upper[..., 2] > 0, :2]
        assert np.mean((xy >= 0).all(-1) & (xy <= 512).all(-1)) > 0.98, file


def test_pose_round_trip(pose_dir, tmp_path):
    from src.data.posefile import load_pose_file, read_pose, write_pose

    rows = load_pose_file(pose_dir / "sgbfss_example.openpose.pose")
    back = read_pose(write_pose(tmp_path / "out.pose", rows))
    assert back.estimator == "coco133" and back.fps == 30 and back.size == (512, 512)
    np.testing.assert_allclose(back.rows, rows, atol=1e-4)


def test_data_import_then_data_check(pose_dir, tmp_path, capsys):
    from src.commands.data.check import main as check
    from src.commands.data.import_pose import main as import_pose

    root = tmp_path / "root"
    assert import_pose(["--pose", str(pose_dir), "--out", str(root)]) == 0
    assert "imported 4 of 4" in capsys.readouterr().out
    assert len(list((root / "frames_512x512").glob("*.npy"))) == 4
    assert check(["--root", str(root)]) == 0
    assert "result: usable" in capsys.readouterr().out
    broken = tmp_path / "broken.pose"
    broken.write_bytes(b"not a pose file")
    assert import_pose(["--pose", str(broken), "--out", str(root)]) == 1
    assert "not a readable .pose file" in capsys.readouterr().out


def test_stream_and_export_accept_pose_input(pose_dir, tiny_checkpoint, tmp_path, capsys):
    from src.commands.infer.export_tokens import main as export
    from src.commands.infer.stream import main as stream

    src = pose_dir / "autsl_signer0_sample1000.holistic.pose"
    assert stream(["--checkpoint", str(tiny_checkpoint), "--input", str(src), "--quiet"]) == 0
    assert "5 chunks" in capsys.readouterr().out          # 43 frames at 30 fps
    out = tmp_path / "tokens.jsonl"
    assert export(["--checkpoint", str(tiny_checkpoint), "--input", str(src), "--out", str(out)]) == 0
    assert "exported 1/1" in capsys.readouterr().out and out.is_file()


def test_import_with_splits_and_texts_then_llm_lines(pose_dir, tiny_checkpoint, tmp_path, capsys):
    """The issue's path: data-import --val-frac 0.25 --texts texts.csv, then export-tokens of the
    train split --to-llm writes LLM lines with those texts; a signer's files stay in one split;
    an import that converts nothing leaves no root behind."""
    import csv
    import json

    from src.commands.data.import_pose import main as import_pose
    from src.commands.infer.export_tokens import main as export

    files = sorted(pose_dir.glob("*.pose"))
    texts = tmp_path / "texts.csv"
    with open(texts, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "text", "gloss", "signer"])
        for k, p in enumerate(files):   # the two sgbfss files: one signer
            w.writerow([p.name, f"sentence {k}", f"GLOSS{k}", "sgb" if "sgbfss" in p.name else f"s{k}"])
    root = tmp_path / "R"
    assert import_pose(["--pose", str(pose_dir), "--out", str(root), "--val-frac", "0.25", "--texts", str(texts)]) == 0
    printed = capsys.readouterr().out
    assert "imported 4 of 4 files" in printed and "(train " in printed and ", val " in printed
    assert "texts: 4 of 4 sequences have one" in printed
    splits = json.loads((root / "split_files.json").read_text())
    annotations = json.loads((root / "annotations.json").read_text())
    sgb = [n for n in annotations if n.startswith("sgbfss")]
    assert len({s for s, names in splits.items() for n in sgb if n in names}) == 1   # one signer, one split
    val_signers = {annotations[n]["signer"] for n in splits["val"]}
    assert len(val_signers) == 1 and not splits["test"]   # 0.25 of 3 signers: one signer in val
    assert all(annotations[n]["text"].startswith("sentence ") for n in annotations)
    out = tmp_path / "t.jsonl"
    assert export(["--checkpoint", str(tiny_checkpoint), "--root", str(root), "--split", "train", "--num-samples", "0",
                   "--to-llm", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (tmp_path / "t.llm.jsonl").read_text().splitlines()]
    assert lines and {x["video_name"] for x in lines} == set(splits["train"])
    assert all(x["text"] == annotations[x["video_name"]]["text"] for x in lines)
    broken = tmp_path / "broken.pose"
    broken.write_bytes(b"not a pose file")
    assert import_pose(["--pose", str(broken), "--out", str(tmp_path / "never")]) == 1
    assert "was not written" in capsys.readouterr().err and not (tmp_path / "never").exists()
