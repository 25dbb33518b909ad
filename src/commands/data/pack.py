"""data-pack: pack all pose .npy files of a root into one memory-mapped array.

The array comes with an index (name -> offset, length). The loader finds ``<root>/packed`` by itself; a pack elsewhere needs ``data.pack_dir=DIR``.
A pack whose files changed since (added, removed, rewritten) is ignored by the loader, with
a warning, until this command is run again."""
from __future__ import annotations

import argparse
from pathlib import Path

from src.cli import parser, run_command
from src.config import DataConfig


def build_parser() -> argparse.ArgumentParser:
    p = parser("data-pack", "Pack <root>/frames_512x512/*.npy into one memory-mapped array "
                        "(poses.npy) and an index (index.json: name -> offset, length).")
    p.add_argument("--root", required=True, help="dataset folder in the CSL-Daily layout")
    p.add_argument("--out", default="", metavar="DIR", help="pack folder; default <root>/packed")
    p.add_argument("--pose-dir", default=DataConfig().pose_dir, help="folder of <name>.npy, relative to the root")
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
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


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
