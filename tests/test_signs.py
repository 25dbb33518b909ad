"""The recognition probe: a classifier that learns what a view carries, controls that carry nothing,
and the eval-signs command on a tokenizer checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest

from src.pipelines import signs


def views(rng: np.random.Generator, labels: np.ndarray, classes: int) -> dict[str, np.ndarray]:
    """``pose``: the label plus noise in 5 of 40 features; ``tokens``: a bag whose code 3c+k
    (k random) is set for class c, among random codes (2% of K = 30)."""
    pose = rng.normal(size=(len(labels), 40)).astype(np.float32)
    pose[:, :5] += 4.0 * np.eye(classes, 5)[labels]
    bag = (rng.random((len(labels), 30)) < 0.02).astype(np.float32)
    bag[np.arange(len(labels)), 3 * labels + rng.integers(0, 3, len(labels))] = 1.0
    return {"tokens": bag, "pose": pose}


def test_probe_learns_what_a_view_carries_and_controls_stay_at_chance():
    rng = np.random.default_rng(0)
    classes = 3
    train_labels = rng.integers(0, classes, 300)
    test_labels = np.array([0] * 30 + [1] * 20 + [2] * 10)
    results = signs.probe(views(rng, train_labels, classes), {"test": views(rng, test_labels, classes)},
                          train_labels, {"test": test_labels}, classes)
    acc = {r.view: r.accuracy["test"] for r in results}
    assert set(acc) == {"tokens", "pose", "tokens, shuffled labels", "majority class"}
    assert acc["tokens"] > 0.85 and acc["pose"] > 0.9   # near the views' own limits (overlapping codes, noise)
    assert acc["tokens, shuffled labels"] < 0.6
    majority = np.bincount(train_labels).argmax()
    assert acc["majority class"] == pytest.approx(np.mean(test_labels == majority))   # 30, 20 or 10 of 60
    assert all(r.n == {"test": 60} for r in results)


def test_token_features_count_each_code_per_stream_and_position():
    class Tok:   # two chunks, 2 streams, 2 positions; -1 = a position the stream does not code
        codes = np.array([[[1, 2], [0, -1]], [[1, 3], [2, -1]]])

    feats = signs.token_features(Tok(), 4).reshape(2, 2, 4)
    assert feats[0, 0].tolist() == [0, 1, 0, 0]            # code 1 in both chunks
    assert feats[0, 1].tolist() == [0, 0, 0.5, 0.5]
    assert feats[1, 0].tolist() == [0.5, 0, 0.5, 0] and feats[1, 1].sum() == 0


def test_decoded_view_reads_the_reconstruction_where_the_pose_was_observed():
    """The decoded view is the pose view's own features of the decoded pose: equal to the pose's
    when the decoding is exact, and blind to what the decoder puts at unobserved points."""
    from src.data import keypoints as kp
    from src.inference import Tokenized

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, kp.NUM_STREAM_POINTS, 2)).astype(np.float32)
    conf = rng.random((2, 4, kp.NUM_STREAM_POINTS)) > 0.3
    sample = {"x": x, "conf": conf, "frame_mask": np.ones((2, 4), bool)}
    recon = np.where(conf[..., None], x, 100.0).astype(np.float32)
    exact = Tokenized("a", np.zeros((2, 5, 1), int), np.zeros((2, 5, 1)), recon, sample)
    np.testing.assert_allclose(signs.pose_features(exact, decoded=True), signs.pose_features(exact), rtol=1e-6)
    off = Tokenized("a", exact.codes, exact.residuals, recon + 1.0, sample)
    assert not np.allclose(signs.pose_features(off, decoded=True), signs.pose_features(off))


def test_eval_signs_command(tiny_checkpoint, synth_root, tmp_path, capsys):
    """On the synthetic root, labelled by signer: every view and split reported, the majority
    class as hand-computed, the JSON written."""
    from src.commands.eval.signs import main

    out = tmp_path / "signs.json"
    assert main(["--checkpoint", str(tiny_checkpoint), "--root", str(synth_root), "--label", "signer",
                 "--splits", "val", "test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert "tokens / pose accuracy on val+test" in printed
    views_reported = [r["view"] for r in figures["results"]]
    assert views_reported == ["tokens", "pose", "tokens, decoded", "tokens, shuffled labels", "majority class"]
    accuracy = {r["view"]: r["accuracy"]["val+test"] for r in figures["results"]}
    assert figures["decoded_over_pose"] == pytest.approx(accuracy["tokens, decoded"] / max(accuracy["pose"], 1e-9))
    annotations = json.loads((synth_root / "annotations.json").read_text())
    split = json.loads((synth_root / "split_files.json").read_text())
    train = [str(annotations[n]["signer"]) for n in split["train"]]
    majority = max(sorted(set(train)), key=train.count)
    scored = [str(annotations[n]["signer"]) for n in split["val"] + split["test"] if str(annotations[n]["signer"]) in train]
    got = figures["results"][-1]["accuracy"]["val+test"]
    assert got == pytest.approx(np.mean([s == majority for s in scored]))
