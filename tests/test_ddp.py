"""torch.distributed with gloo on CPU: EMA codebooks and training stay identical across ranks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REPO, tiny_config
from src.config import RVQConfig
from src.models.quantizer import Codebook

WORLD = 2


def _data(steps: int = 4, groups: int = 2, n: int = 64, dim: int = 8) -> torch.Tensor:
    return torch.randn(steps, groups, n, dim, generator=torch.Generator().manual_seed(0)) * 2 + 1


def _codebook(dead_after: int) -> Codebook:
    torch.manual_seed(1)  # same initial codebook everywhere
    return Codebook(8, RVQConfig(codebook_size=16, init="random", dead_after_rows=dead_after), groups=2)


def _init(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)  # two processes on a small machine: no oversubscription
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD)


def _codebook_worker(rank: int, tmp: str) -> None:
    _init(rank, tmp)
    try:
        data = _data()
        cb = _codebook(dead_after=10**9).train()
        for batch in data:
            cb(batch.chunk(WORLD, dim=1)[rank])  # each rank sees its half of every batch
        torch.save(cb.state_dict(), f"{tmp}/ema{rank}.pt")
        torch.manual_seed(100 + rank)  # ranks draw differently; restarts must still agree
        restarting = _codebook(dead_after=1).train()
        for batch in data:
            restarting(batch.chunk(WORLD, dim=1)[rank] * 3)
        torch.save(restarting.state_dict(), f"{tmp}/restart{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ema_over_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_codebook_worker, args=(str(tmp_path),), nprocs=WORLD)
    single = _codebook(dead_after=10**9).train()
    for batch in _data():
        single(batch)
    expected = single.state_dict()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"ema{rank}.pt")
        for k, v in expected.items():
            assert torch.allclose(got[k].double(), v.double(), atol=1e-5), (rank, k)
    a, b = (torch.load(tmp_path / f"restart{r}.pt") for r in range(WORLD))
    assert int(a["unused_rows"].eq(0).sum()) > 0
    for k in a:  # dead-code restarts are drawn on rank 0 and broadcast: bit-identical
        assert torch.equal(a[k], b[k]), k
    fresh = _codebook(dead_after=1)
    assert not torch.equal(a["embed"], fresh.embed), "no code was ever restarted"


def _torchrun_env(rank: int) -> None:
    """The variables torchrun sets, so a spawned worker goes through distributed.setup."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_DDP_PORT"])


def _train_worker(rank: int, tmp: str, root: str, device: str = "cpu") -> None:
    _torchrun_env(rank)
    torch.set_num_threads(1)
    from src.data.dataset import PoseDataset, collate
    from src import distributed
    from src.train.loop import Trainer

    # refit_every=1: the k-means refit of the codebooks must leave the ranks identical too
    cfg = tiny_config(Path(root), Path(tmp) / "runs", "train.epochs=2", "train.token_samples_every=0",
                      "model.rvq.refit_every=1")
    info = distributed.setup(device)
    try:
        trainer = Trainer(cfg, info)
        trainer.fit()
        val = PoseDataset(cfg.data, "val")
        batch = collate([val[i] for i in range(len(val))]).to(info.device)
        codes = trainer.model.eval().encode(batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask])
        state = {k: v.cpu() for k, v in trainer.model.state_dict().items()}
        torch.save({"state": state, "codes": codes.cpu(), "device": str(codes.device)}, f"{tmp}/rank{rank}.pt")
    finally:
        distributed.teardown()


def _diverging_worker(rank: int, tmp: str, root: str) -> None:
    """Rank 1's codebook drifts away from rank 0's after each validation (as a rank-local bug
    would make it): the first epoch's check must stop the run on both ranks."""
    _torchrun_env(rank)
    from src import distributed
    from src.train.loop import Trainer

    cfg = tiny_config(Path(root), Path(tmp) / "runs", "train.epochs=2", "train.token_samples_every=0")
    info = distributed.setup("cpu")
    try:
        trainer = Trainer(cfg, info)
        validate = trainer.validate

        def drifting(*args, **kwargs):
            out = validate(*args, **kwargs)
            if rank == 1:
                with torch.no_grad():
                    trainer.model.quantizer.rvq.levels[0].embed.add_(1e-3)
            return out

        trainer.validate = drifting
        try:
            trainer.fit()
            outcome = "finished"
        except RuntimeError as e:
            outcome = str(e)
        Path(f"{tmp}/outcome{rank}.txt").write_text(f"{outcome}\nepoch {trainer.epoch}")
    finally:
        distributed.teardown()


def test_ranks_that_disagree_stop_the_run(synth_root, tmp_path, monkeypatch):
    """ranks_agree can say False: codebooks that differ between ranks stop training on every rank
    at the first check, before anything is saved as agreed."""
    monkeypatch.setenv("TEST_DDP_PORT", _free_port())
    mp.spawn(_diverging_worker, args=(str(tmp_path), str(synth_root)), nprocs=WORLD)
    for rank in range(WORLD):
        outcome = (tmp_path / f"outcome{rank}.txt").read_text()
        assert outcome == "ranks hold different weights or codebooks; stopping\nepoch 0", (rank, outcome)
    run = next((tmp_path / "runs" / "tiny").iterdir())
    assert not (run / "ckpt_last.pt").exists()


def _teardown_worker(rank: int, tmp: str) -> None:
    _torchrun_env(rank)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from src import distributed

    distributed.setup("cpu")
    model = DDP(torch.nn.Linear(4, 4))
    model(torch.randn(3, 4)).sum().backward()
    del model
    distributed.teardown()
    names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
    Path(f"{tmp}/threads{rank}.json").write_text(json.dumps(names))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to list threads")
def test_teardown_frees_the_process_group(tmp_path, monkeypatch):
    # A group kept alive past teardown takes its gloo threads into interpreter exit, where a
    # finished run was seen to abort.
    monkeypatch.setenv("TEST_DDP_PORT", _free_port())
    mp.spawn(_teardown_worker, args=(str(tmp_path),), nprocs=WORLD)
    for rank in range(WORLD):
        names = json.loads((tmp_path / f"threads{rank}.json").read_text())
        assert not [n for n in names if "gloo" in n], names


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_ddp_training_keeps_ranks_identical(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_DDP_PORT", _free_port())
    mp.spawn(_train_worker, args=(str(tmp_path), str(synth_root)), nprocs=WORLD)
    _assert_ranks_identical(tmp_path)


@pytest.mark.skipif(torch.cuda.device_count() < WORLD, reason=f"needs {WORLD} CUDA GPUs (NCCL)")
def test_ddp_training_on_gpus_with_nccl_keeps_ranks_identical(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_DDP_PORT", _free_port())
    mp.spawn(_train_worker, args=(str(tmp_path), str(synth_root), "cuda"), nprocs=WORLD)
    _assert_ranks_identical(tmp_path)
    assert [torch.load(tmp_path / f"rank{r}.pt")["device"] for r in range(WORLD)] == [f"cuda:{r}" for r in range(WORLD)]


def _assert_ranks_identical(tmp_path: Path) -> None:
    """Both ranks hold the same weights and codebook buffers, code the same, and only rank 0 wrote a run."""
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k  # weights and every codebook buffer
    assert torch.equal(a["codes"], b["codes"])
    assert int(a["state"]["quantizer.rvq.levels.0.updates"]) > 0
    runs = list((tmp_path / "runs" / "tiny").iterdir())
    assert len(runs) == 1, "only rank 0 writes a run folder"
    lines = [json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["ranks_agree"] for r in lines] == [True, True]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_launches_train_rvq_ddp(synth_root, tmp_path):
    cmd = ["torchrun", "--standalone", f"--nproc_per_node={WORLD}", "run.py", "train-rvq-ddp",
           "--config", "configs/tiny.yaml", f"data.root={synth_root}", f"save_path={tmp_path}",
           "train.epochs=1", "train.token_samples_every=0"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    run = next((tmp_path / "tiny").iterdir())
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["ranks_agree"] is True
    assert f"world size {WORLD}" in (run / "train.log").read_text()


def test_train_rvq_ddp_outside_torchrun_says_how_to_launch(monkeypatch, capsys):
    from src.commands.train.rvq_ddp import main

    monkeypatch.delenv("RANK", raising=False)
    assert main(["--config", "configs/tiny.yaml"]) == 2
    assert "torchrun --nproc_per_node" in capsys.readouterr().err
