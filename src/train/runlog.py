"""What a run leaves behind: its folder, resolved config, provenance, log file, metrics."""
from __future__ import annotations

import json
import logging
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from src.config import Config, ConfigError, save_config
from src.files import describe_os_error, write_json, write_text

log = logging.getLogger("signstream")
PACKAGES = ("torch", "numpy", "pyyaml", "tensorboard", "matplotlib", "imageio", "tqdm")


def git_info(cwd: str | Path = ".") -> dict[str, Any]:
    """Commit hash and dirty flag of the working tree (``None`` outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def environment() -> dict[str, Any]:
    """Python, platform and package versions."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def create_run_dir(cfg: Config) -> Path:
    """``<save_path>/<experiment_name>/<timestamp>/`` with config, git and environment written."""
    base = Path(cfg.save_path) / cfg.experiment_name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run, n = base / stamp, 1
    try:
        base.mkdir(parents=True, exist_ok=True)
        while True:   # two runs in the same second get distinct folders; mkdir decides who got which
            try:
                run.mkdir()
                break
            except FileExistsError:
                run, n = base / f"{stamp}-{n}", n + 1
    except OSError as e:
        raise _no_run_folder(cfg, e) from None
    try:
        save_config(cfg, run / "config.yaml")
        write_json(run / "provenance.json", {"git": git_info(), "environment": environment(),
                                              "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    except OSError as e:
        shutil.rmtree(run, ignore_errors=True)  # no half-made run folder (this process made it)
        raise _no_run_folder(cfg, e) from None
    return run


def _no_run_folder(cfg: Config, e: OSError) -> ConfigError:
    return ConfigError(f"save_path={cfg.save_path}: cannot create the run folder there "
                       f"({describe_os_error(e)}; or set save_path=<a writable folder>)")


def drop_epochs_after(path: str | Path, epoch: int) -> int:
    """Rewrite a metrics.jsonl without the lines past ``epoch`` (and any half-written line); returns
    how many were dropped. A run killed after its metrics line but before its checkpoint, then
    resumed, would otherwise log that epoch twice."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)["epoch"] <= epoch:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass
    if len(keep) < len(lines):
        write_text(path, "".join(line + "\n" for line in keep))
    return len(lines) - len(keep)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """One JSON line, flushed (a crash loses at most the line being written)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def setup_logging(run_dir: Path | None = None, is_main: bool = True, level: int = logging.INFO) -> None:
    """Console (and ``train.log`` in the run folder) on the main process; warnings only elsewhere."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_signstream", False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if run_dir is not None and is_main:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for h in handlers:
        h.setFormatter(fmt)
        h._signstream = True
        root.addHandler(h)
    root.setLevel(level if is_main else logging.WARNING)
