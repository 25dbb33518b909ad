"""Argument helpers shared by the command entry points (config loading, friendly errors)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
import warnings
from collections.abc import Callable

from src.config import Config, ConfigError, load_config
from src.files import describe_os_error


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (those options say in their help what happens without them)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


class _IntermixedParser(argparse.ArgumentParser):
    """``key=value`` overrides may come before, between or after the options
    (plain parsing stops taking them at the first option that follows)."""

    def parse_args(self, args=None, namespace=None):  # noqa: D102 (argparse's signature)
        return self.parse_intermixed_args(args, namespace)


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose usage line reads ``run.py <name>``; overrides may sit anywhere."""
    return _IntermixedParser(prog=f"run.py {name}", description=description, formatter_class=_DefaultsFormatter)


def add_config_args(p: argparse.ArgumentParser, default: str | None = "configs/default.yaml") -> None:
    """``--config FILE`` plus trailing ``key=value`` overrides."""
    p.add_argument("--config", default=default, help="YAML config (defaults in src/config.py)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides, e.g. train.lr=1e-4 data.root=CSL-Daily")


def add_threads_arg(p: argparse.ArgumentParser, from_config: bool = True) -> None:
    """``--threads N``: intra-op CPU threads for this command (``threads=N`` in a config)."""
    default = "the config's 'threads'" if from_config else "torch's default"
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op CPU threads (0 = torch's default, one per core; 1 is often faster "
                        f"when other processes share the CPUs); default: {default}")


# The tokenizer that ships with the project (docs/model_card.md): what commands use without --checkpoint.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "pretrained" / "signstream_real.pt"


def add_checkpoint_arg(p: argparse.ArgumentParser, what: str = "checkpoint of train-rvq") -> None:
    """``--checkpoint``, optional: the shipped model when left out."""
    p.add_argument("--checkpoint", help=f"{what}; default: the shipped model "
                                        "(checkpoints/pretrained/signstream_real.pt, docs/model_card.md)")


def checkpoint_path(args: argparse.Namespace) -> str:
    """``--checkpoint``, or the shipped model with one line saying so (an error if it is missing)."""
    if args.checkpoint:
        return args.checkpoint
    if not SHIPPED_CHECKPOINT.is_file():
        raise ConfigError(f"no --checkpoint given and the shipped model is missing ({SHIPPED_CHECKPOINT}); "
                          "pass --checkpoint <run>/ckpt_best.pt")
    # relative to the working directory where it lies below it: outputs record no machine's folders
    here = Path.cwd()
    args.checkpoint = str(SHIPPED_CHECKPOINT.relative_to(here) if SHIPPED_CHECKPOINT.is_relative_to(here)
                          else SHIPPED_CHECKPOINT)
    print(f"using the shipped model {args.checkpoint} (no --checkpoint given; docs/model_card.md)", file=sys.stderr)
    return args.checkpoint


def config_from_args(args: argparse.Namespace) -> Config:
    """The config of ``--config`` and the overrides; ``--root`` and ``--threads`` (where the command has them) last."""
    root, threads = getattr(args, "root", None), getattr(args, "threads", None)
    extra = ([f"data.root={root}"] if root is not None else []) + ([f"threads={threads}"] if threads is not None else [])
    return load_config(args.config or None, [*args.overrides, *extra])


def apply_threads(threads: int | None) -> int:
    """Set ``--threads`` for a command that reads no config (None: leave torch's default)."""
    from src.runtime import set_threads

    return set_threads(threads or 0)


class UsageError(ValueError):
    """Arguments of a command that do not fit together: reported as argparse reports a bad
    argument (the usage line, the message, exit status 2)."""


def run_command(p: argparse.ArgumentParser, fn: Callable[[argparse.Namespace], int | None],
                argv: list[str] | None = None) -> int:
    """Every command's ``main``: ``argv`` parsed by ``p``, then ``fn(args)`` inside :func:`run`."""
    args = p.parse_args(argv)
    try:
        return run(lambda: fn(args))
    except UsageError as e:
        p.error(str(e))


def run(fn: Callable[[], int | None]) -> int:
    """Run a command body; known input errors print one line (file and fix) and exit 2."""
    from src.data.source import DataError
    from src.train.checkpoint import CheckpointError
    from src.distributed import LaunchError

    from src.runtime import reuse_freed_memory
    from src.train.runlog import setup_logging

    setup_logging()
    reuse_freed_memory()
    warnings.showwarning = _one_line_warning
    try:
        return fn() or 0
    except (ConfigError, DataError, CheckpointError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written (or an input that cannot be read)
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one ``warning: ...`` line, without the source line Python adds."""
    print(f"warning: {message}", file=file or sys.stderr)
