"""Bad input, corruption and kills: each case is a one-line error naming the file or key and
the fix, a counted skip, or a detected corruption (tiny roots and configs in temp folders)."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from src.files import describe_os_error
from src.config import ConfigError, load_config
from src.data import keypoints as kp
from src.tools.check import check_root
from src.data.dataset import PoseDataset
from src.data.pack import write_pack
from src.data.source import PACK_DIR, PACK_INDEX, DataError, PoseSource, read_json, read_npy, split_names
from src.tools.synth import synth_sequence
from src.train import loop
from src.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from src.train.loop import NonFiniteLoss, train
from src.train.optim import lr_at
from src.files import host_tag, remove_stale_temps, temp_path, temp_target, write_json
from tests.conftest import REPO, tiny_config

POSE_DIR = "frames_512x512"
FACE_AND_HEAD = list(range(1, 6)) + list(kp.FACE)   # nose, eyes, ears, face: every unit pair but the shoulders


def seq(seed: int, frames: int = 30) -> np.ndarray:
    return synth_sequence(np.random.default_rng(seed), frames, noise=False, signer=0)[0]


def make_root(path: Path, arrays: dict[str, np.ndarray], train: list[str], val: list[str]) -> Path:
    """A CSL-Daily-layout root from arrays (``None`` writes a zero-byte file)."""
    (path / POSE_DIR).mkdir(parents=True)
    for name, array in arrays.items():
        if array is None:
            (path / POSE_DIR / f"{name}.npy").write_bytes(b"")
        else:
            np.save(path / POSE_DIR / f"{name}.npy", array)
    (path / "annotations.json").write_text(json.dumps({n: {"text": "", "gloss": ""} for n in arrays}))
    (path / "split_files.json").write_text(json.dumps({"train": train, "val": val, "test": []}))
    return path


def no_unit(seed: int) -> np.ndarray:
    """Only the shoulders seen, both at one point: no length unit can be measured."""
    a = seq(seed)
    a[:, FACE_AND_HEAD, 2] = 0.0
    a[:, kp.R_SHOULDER, :2] = a[:, kp.L_SHOULDER, :2]
    return a


def far_off(seed: int) -> np.ndarray:
    a = seq(seed)
    a[:, 100:110, :2] = 1e30   # confident keypoints far beyond any frame
    return a


@pytest.fixture
def bad_root(tmp_path) -> Path:
    """Good sequences next to a zero-byte file, one without a length unit and one at 1e30."""
    arrays = {f"good{i}": seq(i) for i in range(4)}
    arrays.update({"empty": None, "no_unit": no_unit(7), "far": far_off(8), "val0": seq(9), "far_val": far_off(10)})
    return make_root(tmp_path / "bad", arrays, ["good0", "empty", "good1", "no_unit", "good2", "far", "good3"],
                     ["val0", "far_val"])


SKIPS = {"unreadable": 1, "no unit length": 1, "coordinates out of range": 1}


def one_error_line(err: str, *needles: str) -> None:
    """stderr holds exactly one error line (log lines aside) and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---------------------------------------------------------------------------- bad sequences


def test_bad_sequences_are_skipped_and_counted_in_training(bad_root, tmp_path, caplog):
    train_set = PoseDataset(tiny_config(bad_root, tmp_path).data, "train")
    assert train_set.names == ["good0", "good1", "good2", "good3"]
    assert dict(train_set.report.reasons) == SKIPS
    val_set = PoseDataset(tiny_config(bad_root, tmp_path).data, "val")
    assert dict(val_set.report.reasons) == {"coordinates out of range": 1}
    # A whole (one-epoch) training run goes through, with finite validation figures.
    with caplog.at_level(logging.INFO):
        run = train(tiny_config(bad_root, tmp_path / "runs", "train.epochs=1", "train.token_samples_every=0"))
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["val"]["loss"]["recon"])
    assert all(np.isfinite(v) for v in record["val"]["mpjpe_px"].values())
    assert "kept 4, skipped 3" in caplog.text


def test_data_check_reports_the_same_skips(bad_root):
    report = check_root(bad_root)
    skipped = report["splits"]["train"]["skipped"]
    assert {r: v["count"] for r, v in skipped.items()} == SKIPS
    assert skipped["no unit length"]["examples"] == ["no_unit"]
    assert report["splits"]["val"]["skipped"]["coordinates out of range"]["examples"] == ["far_val"]


def test_zero_byte_npy_is_a_data_error_for_every_reader(bad_root, tmp_path):
    with pytest.raises(DataError, match=r"empty\.npy: cannot read pose array \(EOFError"):
        read_npy(bad_root / POSE_DIR / "empty.npy")
    index = write_pack(bad_root, tmp_path / "pack", progress=False)
    assert index["skipped"] == {"empty": "unreadable (EOFError)"} and "good0" in index["items"]


def test_only_skipped_statistics_sequences_name_the_file(bad_root, tmp_path):
    from src.data.stats import pose_statistics

    source = PoseSource(bad_root)
    with pytest.raises(DataError, match=r"no_unit\.npy: no unit length"):
        pose_statistics(source, ["good0", "no_unit"], tiny_config(bad_root, tmp_path).data)


def test_validation_that_goes_nan_stops_with_exit_1(bad_root, tmp_path, monkeypatch, capsys):
    from src.commands.train.rvq import main

    real = loop.Trainer.validate

    def nan_validate(self, codebook):
        out = real(self, codebook)
        out["val"]["loss"]["recon"] = float("nan")
        return out

    monkeypatch.setattr(loop.Trainer, "validate", nan_validate)
    assert main(["--config", str(REPO / "configs/tiny.yaml"), f"data.root={bad_root}", f"save_path={tmp_path}",
                 "train.epochs=1", "train.token_samples_every=0"]) == 1
    one_error_line(capsys.readouterr().err, "non-finite validation loss at epoch 1", "No checkpoint was written")


# ---------------------------------------------------------------------------- bad files


def test_split_value_that_is_a_string_is_an_error(tmp_path):
    root = make_root(tmp_path / "r", {"a": seq(1)}, ["a"], ["a"])
    (root / "split_files.json").write_text(json.dumps({"train": "a", "val": ["a"]}))
    with pytest.raises(DataError, match=r"split 'train' is str 'a', not a list of names") as err:
        split_names(root, "split_files.json", "val")
    assert "split_files.json" in str(err.value)


@pytest.mark.parametrize("name", ["../secret", "/etc/secret", "sub/a", "..", "a\\b"])
def test_split_names_outside_the_root_are_refused(tmp_path, name, capsys):
    """A name that would read a file outside the pose folder (here a real array one level up)
    is a one-line error naming the split file, in training, export and data-check alike."""
    root = make_root(tmp_path / "r", {"a": seq(1)}, ["a"], ["a"])
    np.save(root / "secret.npy", seq(1))   # what "../secret" would read from the pose folder
    (root / "split_files.json").write_text(json.dumps({"train": ["a", name], "val": ["a"]}))
    with pytest.raises(DataError, match=r"split 'train' names .*not a plain file name inside the root") as err:
        split_names(root, "split_files.json", "val")
    assert str(root / "split_files.json") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="not a plain file name"):
        PoseDataset(tiny_config(root, tmp_path).data, "train")
    from src.commands.data.check import main as check_main
    assert check_main(["--root", str(root)]) != 0
    assert "not a plain file name inside the root" in capsys.readouterr().err


@pytest.mark.parametrize("file", ["split_files.json", "annotations.json"])
def test_json_that_is_not_utf8_names_the_file(tmp_path, file):
    root = make_root(tmp_path / "r", {"a": seq(1)}, ["a"], ["a"])
    (root / file).write_bytes('{"train": ["caf\u00e9"]}'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text") as err:
        read_json(root / file, "file")
    assert file in str(err.value)
    with pytest.raises(DataError, match=file):
        PoseDataset(tiny_config(root, tmp_path).data, "train")


@pytest.mark.parametrize("text, expected", [
    (b"experiment_name: caf\xe9\n", "not UTF-8 text"),
    (b"train:\n\tlr: 1\n", "YAML syntax error at line 2, column 1"),
    (b"train: {lr: 1\n", "YAML syntax error at line 2"),
])
def test_bad_yaml_is_a_one_line_error(tmp_path, capsys, text, expected):
    from src.commands.train.rvq import main

    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)
    assert main(["--config", str(path), f"save_path={tmp_path / 'runs'}"]) == 2
    one_error_line(capsys.readouterr().err, str(path), expected, "fix:")


@pytest.mark.parametrize("override, key", [
    ("train.lr=0", "train.lr"), ("train.lr=-1e-4", "train.lr"), ("train.lr=nan", "train.lr"),
    ("data.chunk_len=0", "data.chunk_len"), ("model.heads=3", "model.heads"),
    ("model.rvq.codebook_size=0", "model.rvq.codebook_size"), ("train.epochs=0", "train.epochs"),
    ("data.max_frames=-1", "data.max_frames"), ("model.rvq.splits=3", "model.rvq.splits"),
])
def test_settings_that_cannot_work_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}=.* cannot work: it must be") as err:
        load_config(REPO / "configs" / "tiny.yaml", [override])
    assert "configs/tiny.yaml" in str(err.value)


def test_every_shipped_config_passes_the_range_checks():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


@pytest.mark.parametrize("index", [b"\xff\xfe garbage \x00", b"[]", b'{"version": 3, "total_frames": 1, '
                                   b'"stamps": {}, "items": {"a": ["abc", 5]}}'])
def test_bad_pack_index_falls_back_to_the_files(tmp_path, caplog, index):
    root = make_root(tmp_path / "r", {"a": seq(1), "b": seq(2)}, ["a", "b"], ["a"])
    write_pack(root, progress=False)
    (root / PACK_DIR / PACK_INDEX).write_bytes(index)
    with caplog.at_level(logging.WARNING):
        source = PoseSource(root)
    assert not source.packed and "pack not used" in caplog.text
    assert np.array_equal(source.load("a"), np.load(root / POSE_DIR / "a.npy"))
    assert PoseDataset(tiny_config(root, tmp_path).data, "train").names == ["a", "b"]
    assert any("pack" in w and "does not match" in w for w in check_root(root)["warnings"])
    shutil.rmtree(root / POSE_DIR)  # and with nothing to fall back to: a one-line error
    with pytest.raises(DataError, match="pack not usable"):
        PoseSource(root)


# ---------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def outputs(tiny_checkpoint, synth_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("outputs")
    (base / "a_file").write_text("x")
    (base / "a_folder").mkdir()
    (base / "a_folder.png").mkdir()  # viz-recon --frame gives its output a .png suffix
    return tiny_checkpoint, synth_root, base


COMMANDS = {
    "export-tokens": lambda c, r, out: ["export-tokens", "--checkpoint", c, "--root", r, "--num-samples", "1",
                                        "--out", out],
    "eval-rvq": lambda c, r, out: ["eval-rvq", "--checkpoint", c, "--root", r, "--out", out],
    "viz-recon": lambda c, r, out: ["viz-recon", "--checkpoint", c, "--root", r, "--frame", "0", "--out", out],
    "viz-tokens": lambda c, r, out: ["viz-tokens", "--checkpoint", c, "--root", r, "--num-samples", "1",
                                     "--out", out],
    "data-check --json": lambda c, r, out: ["data-check", "--root", r, "--max-files", "2", "--json", out],
    "data-pack": lambda c, r, out: ["data-pack", "--root", r, "--out", out],
    "data-synth": lambda c, r, out: ["data-synth", "--out", out, "--num", "2"],
    "train-rvq save_path": lambda c, r, out: ["train-rvq", "--config", str(REPO / "configs/tiny.yaml"),
                                              f"data.root={r}", f"save_path={out}"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_an_output_that_cannot_be_written_is_a_one_line_error(outputs, command, where, capsys):
    import run

    checkpoint, root, base = outputs
    out = base / "a_file" / "out.x" if where == "under a file" else base / "a_folder"
    if command == "viz-recon" and where == "a folder":
        out = base / "a_folder.png"
    if command in ("viz-tokens", "data-pack", "data-synth", "train-rvq save_path") and where == "a folder":
        out = base / "a_file"  # these write into a folder: a file in its place
    code = run.main(COMMANDS[command](str(checkpoint), str(root), str(out)))
    err = capsys.readouterr().err
    assert code == 2, err
    one_error_line(err, "fix:")
    assert str(base / "a_file") in err or str(base / "a_folder") in err, err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_a_one_line_error(synth_root, tmp_path, capsys):
    import run

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert run.main(["data-check", "--root", str(synth_root), "--max-files", "2",
                         "--json", str(folder / "r.json")]) == 2
    finally:
        folder.chmod(0o700)
    one_error_line(capsys.readouterr().err, str(folder / "r.json"), "Permission denied", "fix:")


def test_export_skips_and_counts_an_empty_file(bad_root, tiny_checkpoint):
    from src.inference import load_tokenizer
    from src.pipelines.export import export_config, export_tokens

    model, cfg = load_tokenizer(tiny_checkpoint)
    records, _, failures = export_tokens(model, export_config(cfg, root=str(bad_root)), "train", progress=False)
    assert [r["video_name"] for r in records] == ["good0", "good1", "good2", "good3"]
    assert dict(failures) == {"empty": "unreadable", "no_unit": "no unit length", "far": "coordinates out of range"}


def test_no_space_and_no_permission_name_the_file(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write() errors carry no file name

    monkeypatch.setattr(Path, "write_text", full)
    target = tmp_path / "report.json"
    with pytest.raises(OSError) as err:
        write_json(target, {"a": 1})
    line = describe_os_error(err.value)
    assert line.startswith(f"{target}: No space left") and "free space" in line
    assert list(tmp_path.iterdir()) == []  # no temp file left behind
    denied = PermissionError(errno.EACCES, "Permission denied", str(temp_path(tmp_path / "ckpt_last.pt")),
                             None, str(tmp_path / "ckpt_last.pt"))
    assert describe_os_error(denied) == (f"{tmp_path / 'ckpt_last.pt'}: Permission denied (fix: choose a "
                                         "location you may write to, or change its permissions)")


# ---------------------------------------------------------------------------- corruption


def corrupt(root: Path, how: str) -> None:
    index_path = root / PACK_DIR / PACK_INDEX
    if how == "shifted offsets":
        index = json.loads(index_path.read_text())
        for item in index["items"].values():
            item[0] = max(0, item[0] - 3)
        index_path.write_text(json.dumps(index))
    elif how == "overwritten bytes":
        array = np.load(root / PACK_DIR / "poses.npy", mmap_mode="r+")
        array[5:20, 40:50, :2] += 7.0
        array.flush()
    else:  # a file rewritten with its size and mtime restored: the stamps cannot tell
        path = root / POSE_DIR / "b.npy"
        stat = path.stat()
        array = np.load(path)
        array[3:9, 40:50, :2] += 5.0
        np.save(path, array)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("how", ["shifted offsets", "overwritten bytes", "rewritten file"])
def test_pack_corruption_is_detected_and_the_files_are_read(tmp_path, caplog, how):
    names = ["a", "b", "c", "d"]
    root = make_root(tmp_path / "r", {n: seq(i) for i, n in enumerate(names)}, names[:3], names[3:])
    write_pack(root, progress=False)
    assert check_root(root)["pack"]["problems"] == []
    corrupt(root, how)
    with caplog.at_level(logging.WARNING):
        dataset = PoseDataset(tiny_config(root, tmp_path).data, "train")
    assert "pack not used" in caplog.text and not dataset.source.packed
    for name in names:
        assert np.array_equal(dataset.source.load(name), np.load(root / POSE_DIR / f"{name}.npy"))
    problems = " ".join(check_root(root)["pack"]["problems"])
    assert ("content differs from the file: 1 (e.g. b)" if how == "rewritten file"
            else "packed content does not match its checksum") in problems


def test_checkpoint_with_flipped_bytes_is_a_one_line_error(tmp_path):
    path = tmp_path / "ckpt_last.pt"
    state = {"model": {"w": torch.randn(64, 64)}, "optimizer": {"state": {0: {"exp_avg": torch.randn(64, 64)}}},
             "config": {}, "epoch": 3}
    save_checkpoint(path, state)
    assert torch.equal(load_checkpoint(path)["optimizer"]["state"][0]["exp_avg"],
                       state["optimizer"]["state"][0]["exp_avg"])
    with zipfile.ZipFile(path) as z:   # find the optimizer tensor's bytes inside the zip
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.header_offset)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    at = info.header_offset + 30 + name_len + extra_len + 1000
    raw[at] ^= 0x10
    raw[at + 5] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt, its content does not match the checksum") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_run_folder_made_by_another_run_meanwhile_is_never_touched(synth_root, tmp_path, monkeypatch):
    """Another run creating the same timestamped folder between a look and the mkdir (the look
    is made to miss it here) costs that run nothing: this run takes the next name, and a failure
    after that removes only the folder this process made."""
    from src.train import runlog

    monkeypatch.setattr(runlog.time, "strftime", lambda fmt, *a: "20260101-000000" if "%H" in fmt else "x")
    monkeypatch.setattr(Path, "exists", lambda self: False)
    cfg = tiny_config(synth_root, tmp_path)
    other = tmp_path / cfg.experiment_name / "20260101-000000"
    other.mkdir(parents=True)
    (other / "ckpt_last.pt").write_bytes(b"another run's checkpoint")
    mine = runlog.create_run_dir(cfg)
    assert mine == other.with_name("20260101-000000-1") and (mine / "config.yaml").is_file()

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlog, "save_config", fail)
    with pytest.raises(ConfigError, match="cannot create the run folder"):
        runlog.create_run_dir(cfg)
    assert (other / "ckpt_last.pt").read_bytes() == b"another run's checkpoint" and mine.is_dir()
    assert sorted(p.name for p in other.parent.iterdir()) == ["20260101-000000", "20260101-000000-1"]


def test_checkpoint_without_its_checksum_loads_only_if_written_before_checksums(tiny_checkpoint, tmp_path, caplog):
    """Removing the checksum key does not bypass the check: a file whose config shows a version
    that stores checksums is refused; only a file from before checksums loads, and says so."""
    from src.train.checkpoint import CHECKSUM_KEY

    state = torch.load(tiny_checkpoint, weights_only=True)
    del state[CHECKSUM_KEY]
    state["model"]["point_mean"] = state["model"]["point_mean"] + 1   # an edit the checksum would have caught
    edited = tmp_path / "edited.pt"
    torch.save(state, edited)
    with pytest.raises(CheckpointError, match="no checksum stored, though the version that wrote it stores one"):
        load_checkpoint(edited)
    del state["config"]["model"]["rvq"]["fsq_streams"]   # as written before checksums existed
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with caplog.at_level("WARNING"):
        assert torch.equal(load_checkpoint(old)["model"]["point_mean"], state["model"]["point_mean"])
    assert f"{old}: written before checkpoints stored checksums; loaded unchecked" in caplog.text


# ---------------------------------------------------------------------------- kills and resumes


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temp_of(path: Path, pid: int, host: str | None = None) -> Path:
    """The temp name a writer with ``pid`` on ``host`` (default: this one) uses for ``path``."""
    return path.with_name(f".{path.name}.{host or host_tag()}.{pid}.tmp{path.suffix}")


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    """Only this host's temps whose writer is gone: a pid says nothing about another host's
    writer (a folder shared between machines), so those stay."""
    from src.tokens.records import write_jsonl_atomic

    target = tmp_path / "tokens.jsonl"
    stale = temp_of(target, dead_pid())
    live = temp_of(target, os.getppid())  # its writer (our parent) still runs
    other_host = temp_of(target, dead_pid(), host="another-machine")
    for path in (stale, live, other_host):
        path.write_text("half")
    assert temp_path(target).name == f".tokens.jsonl.{host_tag()}.{os.getpid()}.tmp.jsonl"
    assert temp_target(stale.name) == temp_target(other_host.name) == "tokens.jsonl"
    write_jsonl_atomic(target, [{"a": 1}])
    assert not stale.exists() and live.exists() and other_host.exists()
    assert remove_stale_temps(tmp_path) == [] and live.exists() and other_host.exists()


@pytest.fixture
def killed_run(tiny_run, tmp_path) -> Path:
    """A copy of a finished 2-epoch run as a kill during epoch 2's save leaves it: metrics of
    epoch 2 written, its checkpoint not renamed yet (ckpt_last.pt is epoch 1), a temp file."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    shutil.copy(run / "ckpt_epoch1.pt", run / "ckpt_last.pt")
    temp_of(run / "ckpt_last.pt", dead_pid()).write_bytes(b"half a checkpoint")
    temp_of(run / "token_samples" / "epoch_0002.jsonl", dead_pid()).write_text("half")
    return run


def epochs_logged(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_cleans_what_a_kill_left(killed_run, synth_root):
    assert epochs_logged(killed_run) == [1, 2]
    train(tiny_config(synth_root, killed_run.parent, "train.token_samples_every=0"),
          resume=str(killed_run / "ckpt_last.pt"))
    assert epochs_logged(killed_run) == [1, 2]  # epoch 2 once, from the resumed run
    assert not list(killed_run.glob(".*.tmp*")) and not list((killed_run / "token_samples").glob(".*.tmp*"))
    assert load_checkpoint(killed_run / "ckpt_last.pt")["epoch"] == 2


def test_changing_epochs_on_resume_warns(killed_run, synth_root, caplog):
    with caplog.at_level(logging.WARNING):
        train(tiny_config(synth_root, killed_run.parent, "train.epochs=3", "train.token_samples_every=0"),
              resume=str(killed_run / "ckpt_last.pt"))
    assert "train.epochs is 3, the checkpoint's run planned 2" in caplog.text and "--extend-epochs" in caplog.text


def test_extend_epochs_keeps_the_finished_schedule_at_its_floor(tiny_run, synth_root, tmp_path, capsys):
    from src.commands.train.rvq import main

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    cfg = load_config(run / "config.yaml")
    floor = cfg.train.lr * cfg.train.min_lr_ratio
    assert main(["--config", str(run / "config.yaml"), "--checkpoint", str(run / "ckpt_last.pt"),
                 "--extend-epochs", "2", "train.token_samples_every=0"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[2]["lr"] == pytest.approx(floor) and records[3]["lr"] == pytest.approx(floor)
    state = load_checkpoint(run / "ckpt_last.pt")
    assert state["epoch"] == 4 and state["config"]["train"]["epochs"] == 4
    assert state["scheduler"]["tail"][0] == records[1]["step"]
    with pytest.raises(SystemExit):  # --extend-epochs needs the run to extend
        main(["--config", str(run / "config.yaml"), "--extend-epochs", "1"])


def test_extension_tail_is_a_cosine_from_the_resume_lr_to_the_floor():
    cfg = load_config(REPO / "configs" / "tiny.yaml").train
    floor = cfg.lr * cfg.min_lr_ratio
    start_lr = lr_at(40, cfg, 100)
    assert lr_at(40, cfg, 160, (40, start_lr)) == pytest.approx(start_lr)
    assert lr_at(100, cfg, 160, (40, start_lr)) == pytest.approx((start_lr + floor) / 2)
    assert lr_at(160, cfg, 160, (40, start_lr)) == pytest.approx(floor)
    assert lr_at(39, cfg, 160, (40, start_lr)) == lr_at(39, cfg, 160)  # before the tail: as before


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    with pytest.raises(DataError, match="data root not found"):
        train(tiny_config(tmp_path / "missing", tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["stream", "data-import", "export-tokens"])
def test_a_missing_input_names_its_path(command, tiny_checkpoint, tmp_path, capsys):
    import run as dispatcher

    missing = tmp_path / "nothere.pose"
    args = {"stream": ["--checkpoint", str(tiny_checkpoint), "--input", str(missing)],
            "data-import": ["--pose", str(missing), "--out", str(tmp_path / "root")],
            "export-tokens": ["--checkpoint", str(tiny_checkpoint), "--input", str(missing),
                              "--out", str(tmp_path / "t.jsonl")]}[command]
    assert dispatcher.main([command, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and str(missing) in err[-1] and "fix: check the path" in err[-1], err


def test_an_unknown_command_suggests_only_close_matches(capsys):
    import run as dispatcher

    assert dispatcher.main(["nosuchcmd"]) == 2
    assert "Did you mean" not in capsys.readouterr().err
    assert dispatcher.main(["trian-rvq"]) == 2
    assert "Did you mean: train-rvq" in capsys.readouterr().err
