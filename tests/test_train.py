"""The hand-written training loop: run folder contents, exact resume, failure handling."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import tiny_config
from src.train import loop
from src.train.checkpoint import CheckpointError, load_checkpoint
from src.train.loop import NonFiniteLoss, find_batch_size, train


def test_run_folder_has_everything(tiny_run):
    for name in ("config.yaml", "provenance.json", "train.log", "metrics.jsonl", "ckpt_best.pt", "ckpt_last.pt",
                 "ckpt_epoch1.pt", "ckpt_epoch2.pt"):
        assert (tiny_run / name).is_file(), name
    assert list(tiny_run.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert sorted(p.name for p in (tiny_run / "token_samples").iterdir()) == ["epoch_0001.jsonl", "epoch_0002.jsonl"]
    provenance = json.loads((tiny_run / "provenance.json").read_text())
    assert {"commit", "dirty"} <= set(provenance["git"]) and provenance["environment"]["packages"]["torch"]
    lines = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        assert r["ranks_agree"] is True
        assert {"recon/F", "temporal/LH", "commit/RH", "usage/B"} <= set(r["train"])
        assert set(r["val"]["mpjpe_px"]) == {"F", "LH", "RH", "B", "FB"}
        assert set(r["codebook"]["LH"]) == {"l0", "l1"}  # codebook_every=1 in tiny.yaml
        assert set(r["codebook"]["F"]) == {"l0"}  # the face codes one level


def test_checkpoint_holds_the_resumable_state(tiny_checkpoint):
    state = load_checkpoint(tiny_checkpoint)
    assert {"model", "optimizer", "scaler", "scheduler", "epoch", "step", "best", "config", "rng"} <= set(state)
    assert state["epoch"] == 2 and state["step"] > 0
    assert state["model"]["quantizer.rvq.levels.0.embed_sum"].shape == (4, 64, 32)  # streams x codes x dim
    assert state["model"]["quantizer.fsq.unused_steps"].shape == (2, 1, 64)         # the face on FSQ
    assert bool(state["model"]["quantizer.rvq.levels.1.initted"])


def _weights(path):
    return load_checkpoint(path)["model"]


# A face on FSQ beside EMA codebooks, and a context model coding the body only from its past.
FSQ_FACE_BODY_CONTEXT = ("model.rvq.fsq_streams=[F]", "model.rvq.fsq_levels=[4,4,4]",
                         "model.context=previous", "model.context_streams=[B]")


@pytest.mark.parametrize("extra", [(), FSQ_FACE_BODY_CONTEXT], ids=["ema", "fsq-face-body-context"])
def test_resume_is_exact(synth_root, tmp_path, extra):
    """4 uninterrupted epochs == 2 epochs, stop, resume for 2 more (fixed seed, CPU)."""
    cfg = tiny_config(synth_root, tmp_path / "a", "train.epochs=4", "train.token_samples_every=0", *extra)
    full = train(cfg)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copy(full / "ckpt_epoch2.pt", stopped / "ckpt_last.pt")  # what a run stopped after epoch 2 leaves
    cfg = tiny_config(synth_root, tmp_path / "b", "train.epochs=4", "train.token_samples_every=0", *extra)
    resumed = train(cfg, resume=str(stopped / "ckpt_last.pt"))
    a, b = load_checkpoint(full / "ckpt_last.pt"), load_checkpoint(resumed / "ckpt_last.pt")
    # Everything equal, bit for bit: weights and codebook buffers, optimizer moments, scheduler,
    # every RNG's state, the step and the validation metrics (only the config's paths differ).
    for key in ("model", "optimizer", "scaler", "scheduler", "rng", "epoch", "step", "best", "metrics"):
        assert_equal_trees(a[key], b[key], key)
    assert len(a["model"]) > 20 and a["optimizer"]["state"]
    # the metrics lines of epochs 3 and 4, timings aside
    assert [drop_timings(m) for m in epoch_lines(full)[2:]] == [drop_timings(m) for m in epoch_lines(resumed)]
    # ... and the resumed run really trained: its weights moved away from the epoch-2 state.
    mid = _weights(stopped / "ckpt_last.pt")
    assert not torch.equal(mid["decoder.heads.LH.weight"], b["model"]["decoder.heads.LH.weight"])


def assert_equal_trees(a, b, where: str) -> None:
    """``a == b`` exactly: tensors by ``torch.equal`` (dtype and shape too), containers item by item."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_equal_trees(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_trees(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def epoch_lines(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def drop_timings(tree):
    """A metrics line without its wall-clock figures (seconds, throughput, memory)."""
    if isinstance(tree, dict):
        return {k: drop_timings(v) for k, v in tree.items()
                if not any(t in k for t in ("time", "seconds", "per_s", "_ms", "memory", "rss", "eta"))}
    return tree


def test_checkpoint_from_before_reference_poses_fsq_and_placed_parts_reads_as_before(tiny_checkpoint):
    """Settings a checkpoint predates read as the coding it was trained with, not today's default."""
    from src.train.checkpoint import config_from_checkpoint

    state = load_checkpoint(tiny_checkpoint)
    assert config_from_checkpoint(state).data.reference == state["config"]["data"]["reference"]
    assert config_from_checkpoint(state).model.rvq.fsq_streams == ["F"]
    assert config_from_checkpoint(state).model.fb_from_parts
    del state["config"]["data"]["reference"]
    del state["config"]["model"]["rvq"]["fsq_streams"]
    del state["config"]["model"]["fb_from_parts"]
    old = config_from_checkpoint(state)
    assert old.data.reference == "none" and old.model.rvq.fsq_streams == [] and not old.model.fb_from_parts


def test_checkpoint_that_counted_restarts_in_steps_loads_and_resumes(tiny_checkpoint, synth_root, tmp_path):
    """A checkpoint of the version that restarted codes unused for N steps (``dead_after_steps``,
    buffers ``unused_steps``) loads with every code counted as just used, and resumes."""
    from src.config import RVQConfig
    from src.inference import load_tokenizer
    from src.train.checkpoint import config_from_checkpoint, save_checkpoint

    state = load_checkpoint(tiny_checkpoint)
    rvq = state["config"]["model"]["rvq"]
    rvq["dead_after_steps"] = rvq.pop("dead_after_rows")
    rows = [k for k in state["model"] if k.endswith(".unused_rows")]
    assert rows
    for key in rows:
        state["model"][key[:-len("unused_rows")] + "unused_steps"] = state["model"].pop(key) + 7
    state.pop("checksum")
    old = tmp_path / "old.pt"
    save_checkpoint(old, state)
    assert config_from_checkpoint(state).model.rvq.dead_after_rows == RVQConfig().dead_after_rows
    model, _ = load_tokenizer(old)
    assert all(int(model.state_dict()[k].abs().sum()) == 0 for k in rows)
    cfg = tiny_config(synth_root, tmp_path, "train.epochs=3")
    assert train(cfg, resume=str(old)) is not None


def test_mismatched_checkpoint_names_file_and_keys(tiny_checkpoint, synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path, "model.width=32", "model.rvq.codebook_size=32",
                      "model.rvq.refit_every=3", "model.rvq.dead_after_rows=99")
    with pytest.raises(CheckpointError) as err:
        train(cfg, resume=str(tiny_checkpoint))
    assert str(tiny_checkpoint) in str(err.value) and "model.width" in str(err.value)
    assert "model.rvq.codebook_size" in str(err.value)
    # training settings a resumed run may change are not differences
    assert "refit_every" not in str(err.value) and "dead_after_rows" not in str(err.value)


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    bad = tmp_path / "ckpt_last.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_cli_reports_corrupt_checkpoint(tmp_path, capsys, synth_root):
    from src.commands.train.rvq import main

    bad = tmp_path / "x.pt"
    bad.write_bytes(b"\x00" * 10)
    assert main(["--config", "configs/tiny.yaml", "--checkpoint", str(bad), f"data.root={synth_root}",
                 f"save_path={tmp_path}"]) == 2
    assert str(bad) in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synth_root, tmp_path, monkeypatch):
    cfg = tiny_config(synth_root, tmp_path, "train.epochs=3", "train.token_samples_every=0")
    real = loop.compute_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 4:  # tiny root: 3 training steps per epoch, so epoch 2 goes NaN
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(loop, "compute_losses", poisoned)
    with pytest.raises(NonFiniteLoss, match="non-finite loss at epoch 2"):
        train(cfg)
    run = next((tmp_path / "tiny").iterdir())
    state = load_checkpoint(run / "ckpt_last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_jittered_training_scores_the_clean_pose(synth_root, tmp_path, monkeypatch):
    # noise of up to 5000 px: a target taken from the input would be far outside the pose's range
    cfg = tiny_config(synth_root, tmp_path, "train.epochs=1", "train.token_samples_every=0",
                      "data.augment.jitter_px=5000")
    real, seen = loop.compute_losses, []

    def spy(out, target, *args, **kwargs):
        seen.append(float(target.abs().max()))
        return real(out, target, *args, **kwargs)

    monkeypatch.setattr(loop, "compute_losses", spy)
    train(cfg)
    assert seen and max(seen) < 100   # local units: a pose spans ~+-30


def test_overfit_check_shows_learning(synth_root, tmp_path):
    """Learning, not just running: 80 steps on 4 sequences cut the reconstruction loss below 0.3x
    (0.20-0.23x over seeds 42, 1, 2)."""
    from src.config import load_config
    from src.train.overfit import overfit_check

    cfg = load_config("configs/overfit16.yaml", [
        f"data.root={synth_root}", f"save_path={tmp_path}", "model.width=64", "model.latent_dim=32",
        "model.enc_layers=1", "model.dec_layers=1", "model.heads=2", "model.rvq.codebook_size=64",
        "model.rvq.levels=2", "train.epochs=80", "data.max_frames=60"])
    result = overfit_check(cfg, num=4, max_ratio=0.3)
    assert result["sequences"] == 4 and result["steps"] == 80
    assert result["ratio"] < 0.3, result
    assert result["pass"]
    assert set(result["final_mpjpe_px"]) == {"F", "LH", "RH", "B", "FB"}


def test_find_batch_size_bisects_to_the_largest_fit():
    def fits(bs):
        if bs > 37:
            raise torch.OutOfMemoryError("fake")

    assert find_batch_size(fits) == 37
    assert find_batch_size(fits, start=64) == 37
    assert find_batch_size(lambda bs: None, limit=100) == 100
    with pytest.raises(RuntimeError, match="not even a batch of 1"):
        find_batch_size(lambda bs: fits(bs * 1000))


def test_missing_root_says_how_to_point_at_it(tmp_path, monkeypatch, capsys):
    from src.commands.train.rvq import main as train_main

    monkeypatch.chdir(tmp_path)  # a fresh clone: no real_pose_sample next to run.py
    assert train_main(["--config", "configs/real_sample.yaml", "save_path=runs"]) == 2
    err = capsys.readouterr().err
    assert "data root not found: real_pose_sample" in err and "--root <folder>" in err
    assert "ln -s <folder> real_pose_sample" in err
    assert not (tmp_path / "runs").exists()


def test_tensorboard_names_and_progress_lines_without_a_bar(synth_root, tmp_path, caplog):
    """Losses sit under */loss/ (per stream too), apart from codebook/usage (a fraction); with
    output to a file (no bar) a line is logged every log_every_s seconds within an epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(synth_root, tmp_path, "train.epochs=1", "train.log_every=2", "train.log_every_s=1e-6")
    with caplog.at_level("INFO", logger="signstream.train"):
        run = train(cfg)
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss/total", "train/loss/recon/LH", "train/loss/usage/F", "train/lr", "train/grad_norm",
            "val/loss/usage", "val/loss/recon/FB", "codebook/usage/F/l0"} <= tags
    assert not {"val/usage", "train/usage"} & tags
    steps = [r.getMessage() for r in caplog.records if " step " in r.getMessage() and "/3)" in r.getMessage()]
    assert len(steps) == 3  # every step: the seconds are always up (20 sequences, batch 8)


def test_keep_last_keeps_the_newest_periodic_checkpoints(synth_root, tmp_path):
    """train.keep_last=2 with a checkpoint every epoch: epochs 3 and 4 stay, 1 and 2 go; last and
    best are never removed (best here is whichever epoch validated best)."""
    run = train(tiny_config(synth_root, tmp_path, "train.epochs=4", "train.ckpt_every=1", "train.keep_last=2",
                            "train.token_samples_every=0"))
    assert sorted(p.name for p in run.glob("ckpt_epoch*.pt")) == ["ckpt_epoch3.pt", "ckpt_epoch4.pt"]
    assert (run / "ckpt_last.pt").is_file() and (run / "ckpt_best.pt").is_file()
    every = train(tiny_config(synth_root, tmp_path / "all", "train.epochs=3", "train.ckpt_every=1",
                              "train.token_samples_every=0"))
    assert len(list(every.glob("ckpt_epoch*.pt"))) == 3   # 0: all kept
