#!/usr/bin/env python
"""SignStream: one dispatcher for every command. ``python run.py --help`` lists them.

Only the chosen command's module is imported, so help costs no torch import.
"""
from __future__ import annotations

import difflib
import importlib
import sys

# name -> (module with main(argv), one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("src.commands.demo.main", "whole pipeline on the synthetic signer (or --root): train, eval, export, viz"),
    "data-synth": ("src.commands.data.synth", "write a synthetic signer dataset in the CSL-Daily layout"),
    "data-check": ("src.commands.data.check", "validate a CSL-Daily-layout root and print its statistics"),
    "data-import": ("src.commands.data.import_pose", "convert .pose files (MediaPipe, OpenPose, COCO-WholeBody) into a root"),
    "data-pack": ("src.commands.data.pack", "pack all pose .npy files of a root into one memory-mapped array"),
    "train-rvq": ("src.commands.train.rvq", "train the multi-stream RVQ tokenizer (one process)"),
    "train-rvq-ddp": ("src.commands.train.rvq_ddp", "train with DDP under torchrun (gloo on CPU, nccl on CUDA)"),
    "verify-overfit16": ("src.commands.verify.overfit16", "sanity check: overfit 16 sequences, exit 0 if recon <= 0.2x"),
    "verify-prefix-lm": ("src.commands.verify.prefix_lm", "downstream proxy: a small LM reads glosses off the tokens, vs 2 controls"),
    "eval-rvq": ("src.commands.eval.rvq", "evaluate a checkpoint: errors in px, oracles, smoothness, codebooks, speed"),
    "eval-signs": ("src.commands.eval.signs", "recognition probe: the sign from the tokens on unseen signers, vs the pose"),
    "eval-rd": ("src.commands.eval.rd", "rate-distortion report of several checkpoints: table and plot of px vs tokens/s"),
    "export-tokens": ("src.commands.infer.export_tokens", "export sign tokens as JSONL with RLE and LLM templates"),
    "viz-recon": ("src.commands.viz.recon", "render original vs reconstructed skeleton (GIF/MP4/PNG)"),
    "viz-tokens": ("src.commands.viz.tokens", "plot token timelines and codebook usage"),
    "stream": ("src.commands.infer.stream", "tokenize a .npy or .pose file frame by frame, as a live stream"),
    "bench": ("src.commands.eval.bench", "measure streaming latency, throughput, training speed, data loading"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python run.py <command> [options]   (python run.py <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
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
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
