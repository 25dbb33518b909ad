"""bench: measure streaming latency, throughput, training speed, data loading.

Measure streaming latency, export throughput against the matmul peak, training
speed and memory, and data loading (per-file .npy versus the pack, cold page cache)."""
from __future__ import annotations

import argparse
import json
import sys

from src.cli import add_config_args, add_threads_arg, parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("bench", __doc__.split(":", 1)[1].strip())
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs")
    p.add_argument("--json", help="also write the report here (atomically)")
    p.add_argument("--fast", action="store_true",
                   help="quick run with few repeats and 200 sequences; a tiny model unless --checkpoint")
    p.add_argument("--checkpoint", help="time this checkpoint's model (else a fresh one from the config)")
    add_threads_arg(p)
    add_config_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    import torch

    from src.pipelines.bench import FAST, FAST_OVERRIDES, FULL, run_bench, table, thread_advice
    from src.config import ConfigError, apply_overrides, load_config
    from src.hardware import cpu_caps
    from src.runtime import set_threads
    from src.files import write_json

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available (use --device cpu)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    model = None
    if args.checkpoint:
        from src.inference import load_tokenizer

        if any(o.startswith("model.") for o in args.overrides):
            raise ConfigError("model.* overrides do not apply with --checkpoint (its model is fixed)")
        model, cfg = load_tokenizer(args.checkpoint, device)
        cfg.threads = 0  # the training machine's setting is not this one's
        cfg = apply_overrides(cfg, args.overrides)
    else:
        cfg = load_config(args.config, (FAST_OVERRIDES if args.fast else []) + args.overrides)
    if args.threads is not None:
        cfg.threads = args.threads
    set_threads(cfg.threads)  # the "default" threads of the figures; 1 thread is measured beside
    print(f"cpu: {cpu_caps().describe()}", file=sys.stderr)   # figures of other CPUs do not compare
    report = run_bench(cfg, device, FAST if args.fast else FULL, model)
    print(table(report), file=sys.stderr)
    advice = thread_advice(report)
    if advice:
        print(f"note: {advice}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    if args.json:
        write_json(args.json, report)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
