"""viz-recon: render original vs reconstructed skeleton (GIF/MP4/PNG).

Render one sequence's original vs reconstructed skeleton (GIF, MP4 or PNG)
and print its reconstruction error in pixels per stream."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.cli import UsageError, add_checkpoint_arg, add_threads_arg, apply_threads, checkpoint_path, parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("viz-recon", __doc__.split(":", 1)[1].strip())
    add_checkpoint_arg(p)
    p.add_argument("--name", default=None, help="video name (searched in every split); default: first of --split")
    p.add_argument("--root", default=None, help="data root in the CSL-Daily layout (replaces data.root)")
    p.add_argument("--split", default="val", help="split searched first, and the one --name defaults from")
    p.add_argument("--out", default="outputs/recon.gif", help=".gif, .mp4 (needs pip install imageio-ffmpeg) or .png")
    p.add_argument("--frame", type=int, default=None, help="render only this frame, as a PNG")
    p.add_argument("--stream", choices=("parts", "FB"), default="parts",
                   help="parts: body, face and hands from their own streams; FB: all from the full body")
    p.add_argument("--max-frames", type=int, default=None, metavar="N",
                   help="cap an animation at about N frames by striding (real speed kept)")
    p.add_argument("--pose-out", default=None, metavar="FILE.pose",
                   help="also write the reconstruction as a .pose file (COCO-WholeBody 133 header; pip install pose-format)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    add_threads_arg(p, from_config=False)
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError("--max-frames must be >= 1")

    checkpoint_path(args)
    apply_threads(args.threads)
    from src.inference import load_tokenizer
    from src.viz.compare import reconstruct, render_recon

    model, cfg = load_tokenizer(args.checkpoint, args.device)
    if args.root is not None:
        cfg.data.root = args.root
    out = Path(args.out)
    if args.frame is not None and out.suffix.lower() != ".png":
        out = out.with_suffix(".png")
    rec = reconstruct(model, cfg, args.name, args.split, args.stream, args.device)
    try:
        path = render_recon(rec, out, cfg.data.fps, cfg.data.chunk_len, args.frame, args.max_frames, args.stream)
    except (IndexError, ValueError) as e:  # --frame out of range, unsupported --out suffix
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.pose_out:
        from src.data.posefile import write_pose

        print(f"wrote {write_pose(args.pose_out, rec.recon, cfg.data.fps)}")
    errors = ", ".join(f"{s} {v:.2f}" for s, v in rec.mpjpe_px.items())
    print(f"{rec.name} ({rec.split}, {len(rec.original)} frames, {rec.num_chunks} chunks)")
    print(f"MPJPE px per stream: {errors}")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
