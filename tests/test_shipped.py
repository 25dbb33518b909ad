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
    assert f"using the shipped model {compact} (no --checkpoint given" in capsys.readouterr().err
    assert (tmp_path / "t.jsonl").read_text().count("\n") >= 1


def test_the_shipped_model_gives_its_recorded_codes():
    """The committed model streams a fixed real sequence (other sources, never trained on) to the
    codes recorded when it was shipped: a change that alters the shipped tokens fails here. The
    closest calls: a chosen code and the next 4e-4 of the distance apart, the hands' split of
    their 4 codes 7e-4 of its cost from the next split, the face's grid 9e-4 of a step from a
    rounding boundary; all far above the last-bit differences of another CPU's kernels."""
    import json
    from pathlib import Path

    from conftest import REAL_SAMPLE
    from src.streaming import StreamingTokenizer

    recorded = json.loads((Path(__file__).parent / "data" / "shipped_codes.json").read_text())
    source = REAL_SAMPLE.parent / recorded["input"]
    if not source.is_file():
        pytest.skip(f"real pose not found at {source}; set SIGNSTREAM_REAL_SAMPLE=<shared data>/real_pose_sample")
    assert cli.SHIPPED_CHECKPOINT.is_file(), f"the shipped model is missing: {cli.SHIPPED_CHECKPOINT}"
    tok = StreamingTokenizer.from_checkpoint(cli.SHIPPED_CHECKPOINT)
    assert tok.cfg.data.causal and tok.precision == "fp32"
    outs = tok.push(np.load(source)) + tok.flush()
    codes = np.stack([o.codes for o in outs if o.codes is not None])
    np.testing.assert_array_equal(codes, np.array(recorded["codes"]))


def test_the_example_export_parses_and_decodes():
    """docs/examples: the shipped model's tokens of real_pose_dev (val) still validate, decode
    with the current token codec, and the LLM line's prefix is the record's tokens."""
    import json
    from pathlib import Path

    from src.tokens.llm import vocab_of
    from src.tokens.records import read_jsonl, validate_record
    from src.tokens.rle import rle_decode

    folder = Path(__file__).resolve().parents[1] / "docs" / "examples"
    records = read_jsonl(folder / "tokens.jsonl")
    assert len(records) == 4
    for rec in records:
        meta = rec["meta"]
        validate_record(rec, meta["num_levels"], meta["codebook_size"])
        codes = rle_decode(rec["tokens"])
        assert all(len(chunks) == meta["num_chunks"] for chunks in codes.values())
    vocab = vocab_of(records, "docs/examples/tokens.jsonl")
    assert json.loads((folder / "tokens.vocab.json").read_text()) == vocab.tokens()
    lines = read_jsonl(folder / "tokens.llm.jsonl")
    assert [line["video_name"] for line in lines] == [r["video_name"] for r in records if r.get("text")]
