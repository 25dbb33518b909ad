"""Argument helpers shared by the command entry points (config loading, friendly errors)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from src.config import Config, ConfigError, load_config


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (those options say in their help what happens without them)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose usage line reads ``run.py <name>``."""
    return argparse.ArgumentParser(prog=f"run.py {name}", description=description,
                                   formatter_class=_DefaultsFormatter)


def add_config_args(p: argparse.ArgumentParser, default: str | None = "configs/default.yaml") -> None:
    """``--config FILE`` plus trailing ``key=value`` overrides."""
    p.add_argument("--config", default=default, help="YAML config (defaults in src/config.py)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides, e.g. train.lr=1e-4 data.root=CSL-Daily")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config or None, args.overrides)


def run(fn: Callable[[], int | None]) -> int:
    """Run a command body; known input errors print one line (file and fix) and exit 2."""
    from src.data.source import DataError
    from src.train.checkpoint import CheckpointError
    from src.train.distributed import LaunchError

    from src.runtime import reuse_freed_memory
    from src.train.runlog import setup_logging

    setup_logging()
    reuse_freed_memory()
    try:
        return fn() or 0
    except (ConfigError, DataError, CheckpointError, LaunchError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
