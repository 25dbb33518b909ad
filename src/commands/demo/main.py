"""demo: whole pipeline on the synthetic signer (or --root): train, eval, export, viz.

The whole pipeline on the built-in synthetic signer (or --root): generate data,
train a small tokenizer, evaluate, export tokens, draw reconstructions and token pictures."""
from __future__ import annotations

import argparse
from src.cli import add_threads_arg, config_from_args, parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("demo", __doc__.split(":", 1)[1].strip())
    p.add_argument("--root", help="CSL-Daily-layout folder (default: the synthetic signer, made if missing)")
    p.add_argument("--config", default="configs/demo.yaml", help="YAML config of the demo run")
    p.add_argument("--num-synthetic", type=int, default=200, help="sequences of the synthetic set (remade when the one there differs)")
    p.add_argument("--split", default="val", help="split to evaluate, export and draw")
    add_threads_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    from src.pipelines.demo import ensure_synthetic, run_demo, summary_table

    cfg = config_from_args(args)
    if not args.root:
        made = ensure_synthetic(cfg.data.root, args.num_synthetic)
        print(f"{'wrote' if made else 'using the'} {args.num_synthetic} synthetic signer sequences "
              f"{'to' if made else 'in'} {cfg.data.root}")
    print(summary_table(run_demo(cfg, args.split)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
