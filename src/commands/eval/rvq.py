"""eval-rvq: evaluate a checkpoint: errors in px, oracles, smoothness, codebooks, speed.

Evaluate a checkpoint on a split: errors in pixels next to the chunk oracles,
temporal smoothness, codebook health, token rates, codes on holds, speed, and optionally
the errors under controlled shifts of the input."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from src.cli import UsageError, add_checkpoint_arg, add_threads_arg, apply_threads, checkpoint_path, parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("eval-rvq", __doc__.split(":", 1)[1].strip())
    add_checkpoint_arg(p)
    p.add_argument("--root", help="data root (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="val", help="split to evaluate")
    p.add_argument("--out", help="write the report as JSON here (with --shifts also <out>.shifts.md)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when any check fails (for scripts and CI); the report is written first")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--levels", default="",
                   help="code fewer residual levels than trained, e.g. F=1,LH=1 (a lower rate from the same weights)")
    p.add_argument("--depth-threshold", metavar="off|X|STREAM=X,...",
                   help="adaptive depth as export.depth_threshold: off, one value for every stream, or per "
                        "stream, e.g. LH=0.32,RH=0.32 (default: the checkpoint's export settings)")
    p.add_argument("--hand-codes", type=int, metavar="N",
                   help="as export.hand_codes: the hands share N codes per chunk (0: as the model trained; "
                        "default: the checkpoint's export settings)")
    p.add_argument("--rle-threshold", type=float,
                   help="also count tokens after thresholded RLE, as export.rle_threshold (eyelid units)")
    p.add_argument("--hold-motion-px", type=float, default=0.5,
                   help="a chunk is a hold where the ground truth moves less than this, px per frame")
    p.add_argument("--shifts", help="also evaluate controlled shifts of the input: all, or names "
                                    "separated by commas (src/metrics/shifts.py lists them)")
    p.add_argument("--causal", choices=("checkpoint", "off", "on", "both"), default="checkpoint",
                   help="preprocessing: the checkpoint's data.causal, offline, causal, or both side by side")
    add_threads_arg(p, from_config=False)
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    if args.shifts and args.causal == "both":
        raise UsageError("--shifts evaluates one preprocessing mode: use --causal off or on with it")
    if args.shifts:
        from src.metrics.shifts import select
        try:
            select(args.shifts)  # a typo fails here, before the evaluation
        except ValueError as e:
            raise UsageError(f"--shifts: {e}")

    checkpoint_path(args)
    apply_threads(args.threads)
    from pathlib import Path

    from src.config import validate
    from src.inference import depth_setting, load_tokenizer, parse_levels, set_adaptive_depth
    from src.metrics.report import evaluation_report, failed_checks, table
    from src.metrics.shifts import select, shift_markdown, shift_report
    from src.distributed import pick_device
    from src.files import atomic_path, write_json

    shifts = select(args.shifts) if args.shifts else []
    device = pick_device(args.device)
    levels = parse_levels(args.levels)
    model, cfg = load_tokenizer(args.checkpoint, device, levels)
    if args.root:
        cfg.data.root = args.root
    if args.rle_threshold is not None:
        cfg.export = dataclasses.replace(cfg.export, rle_threshold=args.rle_threshold)
    if args.depth_threshold is not None:
        cfg.export = depth_setting(cfg, args.depth_threshold)
    if args.hand_codes is not None:
        cfg.export = dataclasses.replace(cfg.export, hand_codes=args.hand_codes)
        validate(cfg)
    set_adaptive_depth(model, cfg)
    modes = {"checkpoint": [cfg.data.causal], "off": [False], "on": [True], "both": [False, True]}[args.causal]
    reports = {}
    for causal in modes:
        cfg.data = dataclasses.replace(cfg.data, causal=causal)
        name = "causal" if causal else "offline"
        reports[name] = {"checkpoint": args.checkpoint, "causal": causal,
                         **evaluation_report(model, cfg, args.split, device, args.batch_size,
                                             hold_motion_px=args.hold_motion_px)}
        print(f"== {name} preprocessing ==\n{table(reports[name])}" if len(modes) > 1 else table(reports[name]))
    report = reports if len(modes) > 1 else next(iter(reports.values()))
    if len(modes) > 1:
        print(side_by_side(reports["offline"], reports["causal"]))
    if shifts:
        report["shifts"] = shift_report(model, cfg, args.split, device, report, shifts, args.batch_size)
        markdown = shift_markdown(report["shifts"])
        print("\ncontrolled shifts\n" + markdown)
    if args.out:
        write_json(args.out, report)
        print(f"report: {args.out}")
        if shifts:
            md = Path(args.out).with_suffix(".shifts.md")
            with atomic_path(md) as tmp:
                tmp.write_text(markdown)
            print(f"shifts table: {md}")
    # --causal both: the checks of each preprocessing mode count
    checked = reports if len(modes) > 1 else {"": report}
    failed = [f"{mode} {name}".strip() for mode, rep in checked.items() for name in failed_checks(rep["checks"])]
    if args.strict and failed:
        total = sum(len(rep["checks"]) for rep in checked.values())
        print(f"error: {len(failed)} of {total} checks failed ({', '.join(failed)}); exit status 1 (--strict)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


def side_by_side(offline: dict, causal: dict) -> str:
    """MPJPE px per stream, offline vs causal preprocessing: the cost of causality."""
    offline, causal = offline["result"], causal["result"]
    streams = list(offline["mpjpe_px"])
    lines = ["MPJPE px      " + "".join(f"{s:>8}" for s in streams)]
    for name, rep in (("offline", offline), ("causal", causal)):
        lines.append(f"{name:<14}" + "".join(f"{rep['mpjpe_px'][s]:8.2f}" for s in streams))
    lines.append(f"{'causal/offline':<14}" + "".join(
        f"{causal['mpjpe_px'][s] / max(offline['mpjpe_px'][s], 1e-9):8.2f}" for s in streams))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
