"""The shipped tokenizer: a compact inference checkpoint (no optimizer, RNG or EMA sums) that
codes as its training checkpoint, and the commands that use it when no --checkpoint is given."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from src import cli
from src.data.dataset import PoseDataset
from src.inference import load_tokenizer, tokenize
from src.train.checkpoint import CheckpointError, inference_state, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def compact(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("shipped") / "model.pt"
    save_checkpoint(path, inference_state(load_checkpoint(tiny_checkpoint)))
    return path


def test_inference_checkpoint_codes_as_the_training_one(tiny_checkpoint, compact, synth_root):
    state = load_checkpoint(compact)
    assert state["inference_only"] and "optimizer" not in state and "rng" not in state
    assert not [k for k in state["model"] if k.endswith(".embed_sum")]
    assert compact.stat().st_size < 0.5 * tiny_checkpoint.stat().st_size
    (a, cfg), (b, _) = load_tokenizer(tiny_checkpoint), load_tokenizer(compact)
    for name, t in a.state_dict().items():   # every weight and codeword as trained; EMA sums rebuilt
        if not name.endswith(".embed_sum"):
            assert torch.equal(t, b.state_dict()[name]), name
    data = PoseDataset(cfg.data.__class__(**{**vars(cfg.data), "root": str(synth_root)}), "val")
    samples = [{"name": data.names[i], **data[i]} for i in range(len(data))]
    for x, y in zip(tokenize(a, samples), tokenize(b, samples)):
        np.testing.assert_array_equal(x.codes, y.codes)


def test_an_inference_checkpoint_cannot_be_resumed(compact, synth_root, tmp_path):
    from conftest import tiny_config
    from src.train.loop import train

    with pytest.raises(CheckpointError, match="cannot resume, missing optimizer"):
        train(tiny_config(synth_root, tmp_path), resume=str(compact))


def test_commands_use_the_shipped_model_without_checkpoint(compact, synth_root, tmp_path, monkeypatch, capsys):
    from src.commands.infer.export_tokens import main as export_main

    monkeypatch.setattr(cli, "SHIPPED_CHECKPOINT", tmp_path / "missing.pt")
    assert export_main(["--root", str(synth_root), "--split", "val", "--out", str(tmp_path / "t.jsonl")]) == 2
    assert "no --checkpoint given and the shipped model is missing" in capsys.readouterr().err
    monkeypatch.setattr(cli, "SHIPPED_CHECKPOINT", compact)
    assert export_main(["--root", str(synth_root), "--split", "val", "--out", str(tmp_path / "t.jsonl")]) == 0
    assert f"using the shipped model {compact}" in capsys.readouterr().err
    assert (tmp_path / "t.jsonl").read_text().count("\n") >= 1
