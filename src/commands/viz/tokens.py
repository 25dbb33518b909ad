"""viz-tokens: plot token timelines and codebook usage.

Plot token timelines (one PNG per video) and codebook usage, from an exported
JSONL file or straight from a checkpoint."""
from __future__ import annotations

import argparse
from src.cli import UsageError, add_threads_arg, apply_threads, parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("viz-tokens", __doc__.split(":", 1)[1].strip())
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokens", default=None, help="JSONL written by export-tokens")
    source.add_argument("--checkpoint", default=None, help="tokenize --split with this checkpoint first")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for timeline_<video>.png and codebook_usage.png")
    p.add_argument("--max-records", type=int, default=5, metavar="N", help="timelines of the first N records; 0 = all")
    p.add_argument("--root", default=None, help="with --checkpoint: data root (replaces data.root)")
    p.add_argument("--split", default="val", help="with --checkpoint: split to tokenize")
    p.add_argument("--num-samples", type=int, default=5, metavar="N",
                   help="with --checkpoint: first N sequences; 0 = all")
    p.add_argument("--device", default="cpu", help="with --checkpoint: cpu | cuda")
    add_threads_arg(p, from_config=False)  # with --checkpoint
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    if args.max_records < 0 or args.num_samples < 0:
        raise UsageError("--max-records and --num-samples must be >= 0")

    from src.data.source import DataError
    from src.viz.token_report import write_token_plots

    records, raw_counts = (_from_file(args.tokens), None) if args.tokens else _from_checkpoint(args)
    try:
        paths = write_token_plots(records, args.out, args.max_records, raw_counts=raw_counts)
    except ValueError as e:
        raise DataError(f"{args.tokens or args.checkpoint}: {e}") from None
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


def _from_file(path: str) -> list[dict]:
    from src.data.source import DataError
    from src.tokens.records import read_jsonl

    try:
        return read_jsonl(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read token file ({e.strerror or e})") from None
    except ValueError as e:
        raise DataError(str(e)) from None


def _from_checkpoint(args) -> tuple[list[dict], dict]:
    """Records of the first sequences of ``--split``, and their raw code counts per stream."""
    from src.inference import load_tokenizer
    from src.pipelines.export import export_config, export_tokens, summary_lines

    apply_threads(args.threads)
    model, cfg = load_tokenizer(args.checkpoint, args.device)
    cfg = export_config(cfg, root=args.root)
    records, stats, failures = export_tokens(model, cfg, args.split, args.num_samples, args.checkpoint, args.device)
    for line in summary_lines(stats, failures):
        print(line)
    return records, stats.raw_code_counts
