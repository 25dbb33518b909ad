"""export-tokens: export sign tokens as JSONL with RLE and LLM templates.

Export sign tokens of a split as JSONL (per chunk, stream and level), with
run-length NC compression and LLM templates."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile

from src.cli import UsageError, add_checkpoint_arg, add_threads_arg, apply_threads, checkpoint_path, parser, run_command

EPILOG = """The model and its data processing come from the checkpoint. --config and key=value
overrides may change only export.* (enable_rle, rle_threshold, max_run, max_chunks,
adaptive_depth, depth_threshold, precision) and the data location keys (data.root, data.split_file,
data.annotation_file, data.pose_dir, data.pack_dir); other keys of --config are ignored,
other overrides are an error. Whole sequences are exported (data.max_frames is ignored)."""


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("export-tokens", __doc__.split(":", 1)[1].strip())
    p.epilog = EPILOG
    add_checkpoint_arg(p)
    p.add_argument("--config", default=None, help="YAML whose export.* and data location keys are used")
    p.add_argument("--root", default=None, help="data root in the CSL-Daily layout (replaces data.root)")
    p.add_argument("--split", default="val", help="split of the split file to export")
    p.add_argument("--input", nargs="+", default=None, metavar="FILE_OR_DIR",
                   help=".pose files (or folders of them) to export instead of a split: converted as data-import "
                        "does (pip install pose-format)")
    p.add_argument("--texts", metavar="CSV_OR_JSON",
                   help="with --input: text (and gloss, signer) per sequence, a CSV with header name,text,gloss,signer "
                        "or a JSON {name: {text: ...}}; the LLM lines of --to-llm need a text")
    p.add_argument("--num-samples", type=int, default=10, metavar="N", help="first N sequences of the split; 0 = all")
    p.add_argument("--out", default="exports/tokens.jsonl", help="JSONL output, one line per sequence")
    p.add_argument("--to-llm", action="store_true",
                   help="also write <out stem>.vocab.json (sign-token vocabulary) and <out stem>.llm.jsonl")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="sequences per forward pass")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_threads_arg(p, from_config=False)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="export.* or data location overrides, e.g. export.rle_threshold=0.2")
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    if args.texts and not args.input:
        raise UsageError("--texts goes with --input (a root's texts are in its annotations.json)")
    if args.num_samples < 0 or args.batch_size < 1:
        raise UsageError("--num-samples must be >= 0 and --batch-size >= 1")

    checkpoint_path(args)
    apply_threads(args.threads)
    from src.config import ConfigError
    from src.inference import load_tokenizer
    from src.pipelines.export import export_config, export_tokens, summary_lines, token_settings, write_llm_files
    from src.tokens.records import write_jsonl_atomic
    from src.distributed import pick_device

    try:
        device = pick_device(args.device)
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    model, ckpt_cfg = load_tokenizer(args.checkpoint, device)
    with tempfile.TemporaryDirectory() as tmp:
        root, split = args.root, args.split
        if args.input:
            root, split = _import_inputs(args.input, tmp, args.texts)
        cfg = export_config(ckpt_cfg, args.config, args.overrides, root)
        if args.input:  # the temporary root has the default layout names
            cfg.data = dataclasses.replace(cfg.data, split_file="split_files.json", pose_dir="frames_512x512",
                                           annotation_file="annotations.json", pack_dir="")
        records, stats, failures = export_tokens(model, cfg, split, 0 if args.input else args.num_samples,
                                                 args.checkpoint, device, args.batch_size)
    for line in summary_lines(stats, failures):
        print(line)
    if not records:
        print("error: no sequence could be exported; nothing written", file=sys.stderr)
        return 1
    write_jsonl_atomic(args.out, records)
    print(f"wrote {args.out} ({len(records)} lines)")
    if args.to_llm:
        vocab, llm, n = write_llm_files(records, args.out, token_settings(cfg))
        untexted = f", {len(records) - n} without text left out" if n < len(records) else ""
        print(f"wrote {vocab} (vocabulary) and {llm} ({n} LLM lines{untexted})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


def _import_inputs(paths: list[str], tmp: str, texts: str | None) -> tuple[str, str]:
    """Convert ``.pose`` inputs into a temporary root (with ``texts``, a CSV or JSON of text per
    name); returns (root, split)."""
    from src.data.posefile import import_pose_files, pose_inputs, read_texts, require_pose_format
    from src.data.source import DataError

    require_pose_format()
    files = pose_inputs(paths)
    written, skipped, _ = import_pose_files(files, tmp, split="input", texts=read_texts(texts) if texts else None)
    for f, reason in skipped:
        print(f"skipped {f}: {reason}")
    if not written:
        raise DataError(f"no readable .pose file in {' '.join(paths)}")
    return tmp, "input"


if __name__ == "__main__":
    raise SystemExit(main())
