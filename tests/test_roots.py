"""Several roots at once (data.roots): one dataset of tagged names, weighted draws per epoch,
and training that validates every root on its own."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from conftest import tiny_config
from src.config import ConfigError
from src.data.dataset import PoseDataset, RootsDataset, split_dataset
from src.tools.synth import write_synthetic_dataset


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("roots")
    write_synthetic_dataset(base / "alpha", num=10, seed=1, min_frames=30, max_frames=50)
    write_synthetic_dataset(base / "beta", num=6, seed=2, min_frames=30, max_frames=50)
    return base / "alpha", base / "beta"


def test_roots_dataset_tags_interleaves_and_draws_by_weight(two_roots, tmp_path):
    alpha, beta = two_roots
    cfg = tiny_config(alpha, tmp_path, f"data.roots={{{alpha}: 1.0, {beta}: 2.5}}").data
    own = {tag: PoseDataset(tiny_config(root, tmp_path).data, "train") for tag, root in
           (("alpha", alpha), ("beta", beta))}
    train = split_dataset(cfg, "train", train=True, seed=3)
    assert isinstance(train, RootsDataset)
    assert sorted(train.names) == sorted(f"{t}/{n}" for t, d in own.items() for n in d.names)
    assert [n.split("/")[0] for n in train.names[:4]] == ["alpha", "beta", "alpha", "beta"]   # interleaved
    n_a, n_b = len(own["alpha"]), len(own["beta"])
    assert len(train) == n_a + 2 * n_b + round(0.5 * n_b)
    drawn = []
    for epoch in (0, 1):
        train.set_epoch(epoch)
        drawn.append(Counter(train.draws))
        per_root = Counter(tag for tag, _ in train.draws)
        assert per_root == {"alpha": n_a, "beta": 2 * n_b + round(0.5 * n_b)}
        assert all(drawn[-1][("alpha", i)] == 1 for i in range(n_a))
        assert all(drawn[-1][("beta", i)] in (2, 3) for i in range(n_b))
    assert drawn[0] != drawn[1]   # the fractional draw is new each epoch
    sample = train[0]
    tag, i = train.draws[0]
    assert sample["name"] == f"{tag}/{own[tag].names[i]}"
    np.testing.assert_array_equal(train.source.load(train.names[1]), own["beta"].source.load(own["beta"].names[0]))
    val = split_dataset(cfg, "val")
    assert len(val) == len(val.names) and [val[i]["name"] for i in range(len(val))] == val.names


def test_roots_must_be_distinct_folders_with_positive_weights(two_roots, tmp_path):
    alpha, beta = two_roots
    with pytest.raises(ConfigError, match="data.roots"):
        tiny_config(alpha, tmp_path, f"data.roots={{{alpha}: 1.0, {beta}: 0}}")
    with pytest.raises(ConfigError, match="data.roots"):
        tiny_config(alpha, tmp_path, f"data.roots={{{alpha}: 1.0, {beta / '..' / 'x' / 'alpha'}: 1}}")


def test_training_on_two_roots_validates_each(two_roots, tmp_path):
    from src.train.loop import train

    alpha, beta = two_roots
    cfg = tiny_config(alpha, tmp_path, f"data.roots={{{alpha}: 1.0, {beta}: 2.0}}", "train.epochs=1",
                      "train.token_samples_every=0")
    run = train(cfg)
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(line["val_roots"]) == {"alpha", "beta"}
    for figures in line["val_roots"].values():
        assert set(figures["mpjpe_px"]) == set(figures["oracle_chunk_mean_px"]) == {"F", "LH", "RH", "B", "FB"}
        assert all(v > 0 for v in figures["mpjpe_px"].values())


def test_fit_curve_and_training_fraction(synth_root, tmp_path):
    """train.fit_every logs the training split's MPJPE beside its oracle; data.train_fraction
    trains on a seeded, nested share of the split."""
    from src.train.loop import Trainer, train
    from src import distributed

    half = tiny_config(synth_root, tmp_path, "data.train_fraction=0.5", "train.epochs=2", "train.fit_every=1",
                       "train.token_samples_every=0")
    quarter = tiny_config(synth_root, tmp_path, "data.train_fraction=0.25")
    full = PoseDataset(tiny_config(synth_root, tmp_path).data, "train")
    names = {f: PoseDataset(c.data, "train").names for f, c in (("half", half), ("quarter", quarter))}
    assert len(names["half"]) == round(0.5 * len(full)) and set(names["quarter"]) <= set(names["half"])
    assert Trainer(half, distributed.setup("cpu")).train_set.names == names["half"]
    lines = [json.loads(x) for x in (train(half) / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        fit = line["train_fit"]
        assert fit["num_sequences"] == len(names["half"])
        assert set(fit["mpjpe_px"]) == set(fit["oracle_chunk_mean_px"]) == {"F", "LH", "RH", "B", "FB"}
    assert sum(lines[1]["train_fit"]["mpjpe_px"].values()) < sum(lines[0]["train_fit"]["mpjpe_px"].values())



def test_a_sequence_drawn_twice_is_augmented_twice(two_roots, tmp_path):
    alpha, beta = two_roots
    cfg = tiny_config(alpha, tmp_path, f"data.roots={{{alpha}: 1.0, {beta}: 2.0}}").data
    train = split_dataset(cfg, "train", train=True, seed=3)
    first, second = [i for i, d in enumerate(train.draws) if d == ("beta", 0)]
    a, b = train[first], train[second]
    assert a["name"] == b["name"] == f"beta/{train.parts['beta'][0].names[0]}"
    assert not np.array_equal(a["x"], b["x"])
