"""data-import: convert .pose files (pose-format: MediaPipe Holistic, OpenPose, COCO-WholeBody 133)
into a CSL-Daily-layout root that every other command reads."""
from __future__ import annotations

import sys

from src.cli import parser, run


def main(argv: list[str] | None = None) -> int:
    p = parser("data-import", __doc__.split(":", 1)[1].strip())
    p.epilog = ("Each file becomes <out>/frames_512x512/<name>.npy (512x512 crop, 30 fps; docs/pose_import.md), "
                "listed in annotations.json and split_files.json (added to what the root already lists); "
                "provenance.json records the estimator, crop and scale. Needs: pip install pose-format")
    p.add_argument("--pose", nargs="+", required=True, metavar="DIR_OR_FILE", help=".pose files or folders of them")
    p.add_argument("--out", required=True, help="root folder to write (created if needed)")
    p.add_argument("--split", default="train",
                   help="split the imported sequences are listed under (data-check wants a non-empty train split)")
    args = p.parse_args(argv)

    def body() -> int:
        from src.data.posefile import import_pose_files, pose_inputs, require_pose_format

        require_pose_format()
        files = pose_inputs(args.pose)
        if not files:
            print(f"error: no .pose file in {' '.join(args.pose)}", file=sys.stderr)
            return 2
        written, skipped = import_pose_files(files, args.out, args.split)
        for f, reason in skipped:
            print(f"skipped {f}: {reason}")
        print(f"imported {len(written)} of {len(files)} files into {args.out} (split '{args.split}')")
        return 0 if written else 1

    return run(body)


if __name__ == "__main__":
    raise SystemExit(main())
