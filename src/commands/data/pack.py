"""`run.py data-pack`: pack every pose .npy of a root into one memory-mapped array plus an index.

The loader finds ``<root>/packed`` by itself; a pack elsewhere needs ``data.pack_dir=DIR``.
A pack whose files changed since (added, removed, rewritten) is ignored by the loader, with
a warning, until this command is run again.
"""
from __future__ import annotations

from pathlib import Path

from src import cli
from src.config import DataConfig


def build_parser():
    p = cli.parser("data-pack", "Pack <root>/frames_512x512/*.npy into one memory-mapped array "
                                "(poses.npy) and an index (index.json: name -> offset, length).")
    p.add_argument("--root", required=True, help="dataset folder in the CSL-Daily layout")
    p.add_argument("--out", default="", metavar="DIR", help="pack folder; default <root>/packed")
    p.add_argument("--pose-dir", default=DataConfig().pose_dir, help="folder of <name>.npy, relative to the root")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from src.data.pack import pack_dir_of, write_pack
        from src.data.source import PACK_ARRAY

        out = pack_dir_of(args.root, args.out or None)
        index = write_pack(args.root, out, args.pose_dir)
        megabytes = (out / PACK_ARRAY).stat().st_size / 2**20
        print(f"packed {len(index['items'])} sequences, {index['total_frames']} frames, "
              f"{megabytes:.1f} MB -> {out}")
        for name, reason in sorted(index["skipped"].items()):
            print(f"skipped {Path(args.root) / args.pose_dir / name}.npy: {reason}")
        if args.out and out.resolve() != pack_dir_of(args.root).resolve():
            print(f"the loader reads it with data.pack_dir={out}")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
