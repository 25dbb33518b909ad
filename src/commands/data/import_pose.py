"""data-import: convert .pose files (MediaPipe, OpenPose, COCO-WholeBody) into a root.

Convert .pose files (pose-format: MediaPipe Holistic, OpenPose, COCO-WholeBody 133)
into a CSL-Daily-layout root that every other command reads."""
from __future__ import annotations

import argparse
import sys

from src.cli import UsageError, parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("data-import", __doc__.split(":", 1)[1].strip())
    p.epilog = ("Each file becomes <out>/frames_512x512/<name>.npy (512x512 crop, 30 fps; docs/pose_import.md), "
                "listed in annotations.json and split_files.json (added to what the root already lists); "
                "provenance.json records the estimator, crop and scale. Needs: pip install pose-format")
    p.add_argument("--pose", nargs="+", required=True, metavar="DIR_OR_FILE", help=".pose files or folders of them")
    p.add_argument("--out", required=True, help="root folder to write (created if needed)")
    p.add_argument("--split", default="train",
                   help="split the imported sequences are listed under (data-check wants a non-empty train split)")
    p.add_argument("--val-frac", type=float, default=0.0, help="share of the imported sequences for val (by signer)")
    p.add_argument("--test-frac", type=float, default=0.0, help="share of the imported sequences for test (by signer)")
    p.add_argument("--seed", type=int, default=0, help="seed of the val/test draw")
    p.add_argument("--texts", metavar="CSV_OR_JSON",
                   help="text, gloss and signer per sequence: a CSV with header name,text,gloss,signer (name: the "
                        "sequence or .pose file name) or a JSON {name: {text, gloss, signer}}")
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    if not (0 <= args.val_frac < 1 and 0 <= args.test_frac < 1 and args.val_frac + args.test_frac < 1):
        raise UsageError("--val-frac and --test-frac must be in [0, 1) and sum to under 1 (train keeps the rest)")

    import json
    from collections import Counter
    from pathlib import Path

    from src.data.posefile import import_pose_files, pose_inputs, read_texts, require_pose_format

    require_pose_format()
    files = pose_inputs(args.pose)
    if not files:
        print(f"error: no .pose file in {' '.join(args.pose)}", file=sys.stderr)
        return 2
    texts = read_texts(args.texts) if args.texts else None
    written, skipped, split_of = import_pose_files(files, args.out, args.split, texts, args.val_frac,
                                                   args.test_frac, args.seed)
    for f, reason in skipped:
        print(f"skipped {f}: {reason}")
    if not written:
        print(f"error: none of the {len(files)} files could be imported; {args.out} was not written", file=sys.stderr)
        return 1
    counts = ", ".join(f"{s} {n}" for s, n in sorted(Counter(split_of.values()).items()))
    print(f"imported {len(written)} of {len(files)} files into {args.out} ({counts})")
    if texts is not None:
        print(f"texts: {sum(1 for n in written if n in texts)} of {len(written)} sequences have one")
    splits = json.loads((Path(args.out) / "split_files.json").read_text(encoding="utf-8"))
    if not splits.get("train") or not splits.get("val"):
        print("note: train-rvq needs a train and a val split; import again with --val-frac 0.2 (by signer "
              f"when --texts names them), or list names under \"val\" in {Path(args.out) / 'split_files.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
