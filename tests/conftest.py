"""Shared fixtures: a synthetic CSL-Daily root, a temporary copy of the real sample, a tiny
config and a tiny trained checkpoint (built once per test session)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from src.config import Config, load_config
from src.tools.synth import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
# The real recorded pose sample lives outside the repository (it must never be committed).
REAL_SAMPLE = Path(os.environ.get("SIGNSTREAM_REAL_SAMPLE", REPO.parent / "shared" / "data" / "real_pose_sample"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensor tests, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """24 synthetic signer sequences (train 20 / val 2 / test 2)."""
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, num=24, seed=3, min_frames=40, max_frames=90)
    return root


@pytest.fixture(scope="session")
def real_root(tmp_path_factory) -> Path:
    """A temporary copy of the real pose sample (never inside the repository); skipped when absent."""
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real pose sample not found at {REAL_SAMPLE}; set SIGNSTREAM_REAL_SAMPLE=<its folder> "
                    "to run this test")
    dst = tmp_path_factory.mktemp("real") / "real_pose_sample"
    shutil.copytree(REAL_SAMPLE, dst)
    return dst


def tiny_config(root: Path, save_path: Path, *overrides: str) -> Config:
    """configs/tiny.yaml pointed at ``root``, writing runs under ``save_path``."""
    return load_config(REPO / "configs" / "tiny.yaml",
                       [f"data.root={root}", f"save_path={save_path}", *overrides])


@pytest.fixture(scope="session")
def tiny_run(synth_root, tmp_path_factory) -> Path:
    """Run folder of a 2-epoch tiny training on the synthetic root."""
    from src.train.loop import train

    cfg = tiny_config(synth_root, tmp_path_factory.mktemp("runs"))
    return train(cfg)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    return tiny_run / "ckpt_last.pt"


@pytest.fixture
def bf16_on(monkeypatch):
    """The CPU's bf16 answer forced on (src/hardware.py): bf16 paths run on any CPU, emulated and
    without oneDNN's prepacked linear where the hardware lacks bf16."""
    from src.hardware import FORCE_ENV

    monkeypatch.setenv(FORCE_ENV, "1")
