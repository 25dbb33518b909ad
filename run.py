#!/usr/bin/env python
"""SignStream: one dispatcher for every command. ``python run.py --help`` lists them.

Only the chosen command's module is imported, so help costs no torch import.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import sys
from pathlib import Path

# name -> module with build_parser(), run(args) and main(argv); its docstring's first line
# ("name: summary") is the summary --help lists
COMMANDS: dict[str, str] = {
    "demo": "src.commands.demo.main",
    "data-synth": "src.commands.data.synth",
    "data-check": "src.commands.data.check",
    "data-import": "src.commands.data.import_pose",
    "data-pack": "src.commands.data.pack",
    "train-rvq": "src.commands.train.rvq",
    "train-rvq-ddp": "src.commands.train.rvq_ddp",
    "verify-overfit16": "src.commands.verify.overfit16",
    "verify-prefix-lm": "src.commands.verify.prefix_lm",
    "eval-rvq": "src.commands.eval.rvq",
    "eval-signs": "src.commands.eval.signs",
    "eval-rd": "src.commands.eval.rd",
    "export-tokens": "src.commands.infer.export_tokens",
    "viz-recon": "src.commands.viz.recon",
    "viz-tokens": "src.commands.viz.tokens",
    "stream": "src.commands.infer.stream",
    "bench": "src.commands.eval.bench",
}


def summary(module: str) -> str:
    """The first line of a command module's docstring without its "name: ", read without
    importing the module (help stays free of torch)."""
    spec = importlib.util.find_spec(module)
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    return doc.split("\n", 1)[0].split(": ", 1)[-1].rstrip(".")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python run.py <command> [options]   (python run.py <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {summary(module)}" for name, module in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=3, cutoff=0.6)   # close matches only
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        print(f"run.py: unknown command '{name}'.{hint} See python run.py --help.", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
