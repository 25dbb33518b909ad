"""data-check: validate a CSL-Daily-layout root and print its statistics.

Exit status 0 when the root is usable for training (at least one usable train sequence;
warnings are printed but allowed), 2 when it is not, with what is wrong, where, and the fix."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from src.cli import parser, run_command
from src.config import DataConfig


def build_parser() -> argparse.ArgumentParser:
    d = DataConfig()
    p = parser("data-check", "Validate a CSL-Daily-layout root (layout, per-file arrays, splits, "
                             "confident keypoints, pack) and print a report.")
    p.add_argument("--root", required=True, help="dataset folder in the CSL-Daily layout")
    p.add_argument("--split-file", default=d.split_file, help="split file, relative to the root")
    p.add_argument("--annotation-file", default=d.annotation_file, help="annotations, relative to the root")
    p.add_argument("--pose-dir", default=d.pose_dir, help="folder of <name>.npy, relative to the root")
    p.add_argument("--pack-dir", default=d.pack_dir, help="pack folder; '' = <root>/packed")
    p.add_argument("--conf-thresh", type=float, default=d.conf_thresh, help="score at which a keypoint counts as seen")
    p.add_argument("--min-frames", type=int, default=d.min_frames, help="shorter sequences are skipped")
    p.add_argument("--min-valid-frac", type=float, default=d.min_valid_frac,
                   help="least fraction of frames with both shoulders seen")
    p.add_argument("--fps", type=float, default=d.source_fps, help="frame rate of the .npy files (for durations)")
    p.add_argument("--max-files", type=int, default=0, metavar="N",
                   help="read at most N pose files, train first (0 = all); for a quick look at a huge root")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON (atomically)")
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    from src.tools.check import check_root, format_report
    from src.files import write_json

    cfg = dataclasses.replace(
        DataConfig(), root=args.root, split_file=args.split_file, annotation_file=args.annotation_file,
        pose_dir=args.pose_dir, pack_dir=args.pack_dir, conf_thresh=args.conf_thresh,
        min_frames=args.min_frames, min_valid_frac=args.min_valid_frac, source_fps=args.fps)
    report = check_root(args.root, cfg, max_files=args.max_files, progress=True)
    print(format_report(report, errors=False))
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
    for error in report["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 0 if report["usable"] else 2


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
