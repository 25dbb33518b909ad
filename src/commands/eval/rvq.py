"""eval-rvq: evaluate a checkpoint on a split: errors in pixels next to the chunk oracles,
temporal smoothness, codebook health, token rates and speed."""
from __future__ import annotations

from src.cli import parser, run


def main(argv: list[str] | None = None) -> int:
    p = parser("eval-rvq", __doc__.split(":", 1)[1].strip())
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train-rvq")
    p.add_argument("--root", help="data root (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="val", help="split to evaluate")
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--levels", default="",
                   help="code fewer residual levels than trained, e.g. F=1,LH=1 (a lower rate from the same weights)")
    args = p.parse_args(argv)

    def body() -> int:
        from src.inference import load_tokenizer, parse_levels
        from src.metrics.report import evaluation_report, table
        from src.train.distributed import pick_device
        from src.train.runlog import write_json

        device = pick_device(args.device)
        levels = parse_levels(args.levels)
        model, cfg = load_tokenizer(args.checkpoint, device, levels)
        if args.root:
            cfg.data.root = args.root
        report = {"checkpoint": args.checkpoint,
                  **evaluation_report(model, cfg, args.split, device, args.batch_size)}
        print(table(report))
        if args.out:
            write_json(args.out, report)
            print(f"report: {args.out}")
        return 0

    return run(body)


if __name__ == "__main__":
    raise SystemExit(main())
