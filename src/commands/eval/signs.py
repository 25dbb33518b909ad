"""eval-signs: recognition probe: the sign from the tokens on unseen signers, vs the pose.

Recognition probe: can a classifier tell the sign from the tokens, on signers it
never saw? Trained on one split's signers, scored on the others, next to the unquantised pose,
shuffled labels and the majority class."""
from __future__ import annotations

import argparse
import sys

from src.cli import add_checkpoint_arg, add_threads_arg, apply_threads, checkpoint_path, parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("eval-signs", __doc__.split(":", 1)[1].strip())
    add_checkpoint_arg(p)
    p.add_argument("--root", required=True, help="a labelled root (CSL-Daily layout), e.g. ../shared/data/crowd_signs")
    p.add_argument("--train-split", default="train", help="the split whose signers the classifier learns from")
    p.add_argument("--splits", nargs="+", default=["val", "test"], help="splits of other signers to score")
    p.add_argument("--label", default="gloss", help="annotation field that names the sign")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    p.add_argument("--out", help="also write the figures as JSON here")
    add_threads_arg(p, from_config=False)
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    checkpoint_path(args)
    apply_threads(args.threads)
    import numpy as np

    from src.config import ConfigError
    from src.files import write_json
    from src.inference import load_tokenizer
    from src.pipelines.signs import probe, split_views

    model, cfg = load_tokenizer(args.checkpoint)
    cfg.data.root = args.root
    train, train_labels, classes = split_views(model, cfg, args.train_split, args.label, None, args.batch_size)
    if len(classes) < 2:
        raise ConfigError(f"{args.root}: split '{args.train_split}' has {len(classes)} distinct "
                          f"'{args.label}' values; a probe needs at least 2")
    scored, scored_labels, unseen = {}, {}, {}
    for split in args.splits:
        scored[split], scored_labels[split], _ = split_views(model, cfg, split, args.label, classes,
                                                             args.batch_size, unseen.setdefault(split, []))
    both = "+".join(args.splits)
    scored[both] = {v: np.concatenate([scored[s][v] for s in args.splits]) for v in train}
    scored_labels[both] = np.concatenate([scored_labels[s] for s in args.splits])
    results = probe(train, scored, train_labels, scored_labels, len(classes))
    print(f"{len(train_labels)} training sequences ({args.train_split}), {len(classes)} signs: "
          + ", ".join(classes[:10]) + (" ..." if len(classes) > 10 else ""))
    for split, names in unseen.items():
        if names:
            print(f"{split}: {len(names)} sequences with a sign the training split lacks left out "
                  f"(e.g. {names[0]})")
    width = max(len(r.view) for r in results) + 2
    print(f"{'view':<{width}}" + "".join(f"{s + ' (' + str(results[0].n[s]) + ')':>18}" for s in scored))
    for r in results:
        print(f"{r.view:<{width}}" + "".join(f"{r.accuracy[s]:>18.3f}" for s in scored))
    pose = max(next(r for r in results if r.view == "pose").accuracy[both], 1e-9)
    ratios = {r.view: r.accuracy[both] / pose for r in results if r.view in ("tokens", "tokens, decoded")}
    for view, ratio in ratios.items():
        print(f"{view} / pose accuracy on {both}: {ratio:.3f}")
    if args.out:
        write_json(args.out, {"checkpoint": args.checkpoint, "root": args.root, "label": args.label,
                              "train_split": args.train_split, "classes": classes,
                              "results": [vars(r) for r in results], "tokens_over_pose": ratios["tokens"],
                              "decoded_over_pose": ratios["tokens, decoded"],
                              "left_out": unseen})
        print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
