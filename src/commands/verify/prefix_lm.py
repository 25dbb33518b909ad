"""verify-prefix-lm: downstream proxy: a small LM reads glosses off the tokens, vs 2 controls.

Train a small causal LM on `sign tokens <SEP> text` and score greedy decoding
against two controls (shuffled tokens, another video's tokens)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from src.cli import UsageError, checkpoint_path, parser, run_command

EPILOG = """With --checkpoint, a fresh synthetic signer set (other seeds than the demo's) is
tokenized and the target is each video's gloss sequence; the videos of --holdout-signers are
never trained on. With --tokens, any export-tokens JSONL whose records carry a text is used
(held out: --val-tokens, or a seeded --val-frac of the videos). Needs transformers and
tokenizers (pip install transformers tokenizers); runs on the CPU. Exit status 0 when the
tokens beat both controls by --min-margin on the held-out videos, 1 otherwise."""


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("verify-prefix-lm", __doc__.split(":", 1)[1].strip())
    p.epilog = EPILOG
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="tokenizer checkpoint: proxy on the synthetic signer's glosses "
                                          "(default without --tokens: the shipped model, docs/model_card.md)")
    src.add_argument("--tokens", nargs="+", metavar="JSONL", help="exported token records with a text field")
    p.add_argument("--val-tokens", nargs="+", metavar="JSONL", help="held-out records for --tokens")
    p.add_argument("--val-frac", type=float, default=0.2, help="videos held out when no --val-tokens")
    p.add_argument("--unit", choices=("auto", "word", "char"), default="auto",
                   help="scoring unit: word (WER) or char (CER; auto when most texts have no spaces)")
    p.add_argument("--num", type=int, default=1500, help="synthetic videos (with --checkpoint)")
    p.add_argument("--synth-seed", type=int, default=1, help="seed of the synthetic set (the demo trains on 0)")
    p.add_argument("--frames", type=int, nargs=2, default=(40, 120), metavar=("MIN", "MAX"),
                   help="synthetic video lengths (2-3 signs)")
    p.add_argument("--holdout-signers", type=int, nargs="*", default=[6], metavar="ID",
                   help="signers never trained on (synthetic 0-7, 7 left-handed; with --tokens, meta.signer)")
    p.add_argument("--save-tokens", metavar="JSONL",
                   help="with --checkpoint: also write the synthetic records (gloss text, meta.signer) for --tokens")
    p.add_argument("--max-codes", type=int, default=1, metavar="N",
                   help="keep each stream's first N codes per chunk (level 0 with one part; with "
                        "model.rvq.splits=p level 0 is the first p codes); 0 = all")
    p.add_argument("--layers", type=int, default=2, help="LM layers")
    p.add_argument("--width", type=int, default=128, help="LM hidden size")
    p.add_argument("--heads", type=int, default=4, help="LM attention heads")
    p.add_argument("--steps", type=int, default=500, help="LM training steps per condition")
    p.add_argument("--batch-size", type=int, default=16, help="LM batch size")
    p.add_argument("--lr", type=float, default=3e-3, help="LM peak learning rate")
    p.add_argument("--prefix-weight", type=float, default=0.3,
                   help="weight of the LM's next-sign-token loss on the prefix (0 = text loss only)")
    p.add_argument("--seed", type=int, default=0, help="LM initialisation, batches, controls and held-out draw")
    p.add_argument("--min-margin", type=float, default=0.1,
                   help="error-rate margin over both controls needed to pass")
    p.add_argument("--out", default="exports/prefix_lm", help="folder for prefix_lm.json and prefix_lm_loss.png")
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    if args.val_tokens and not args.tokens:
        raise UsageError("--val-tokens needs --tokens")
    if not 0 < args.val_frac < 1 or args.steps < 1 or args.num < 10 or args.max_codes < 0:
        raise UsageError("need 0 < --val-frac < 1, --steps >= 1, --num >= 10 and --max-codes >= 0")

    if not args.tokens:
        checkpoint_path(args)
    from src.config import ConfigError
    from src.pipelines import prefix_lm as pl
    from src.tokens.llm import require_hf

    try:
        require_hf()
    except ImportError as e:
        raise ConfigError(f"verify-prefix-lm: {e}") from None
    try:
        vocab, train, evals, unit, notes = (_synthetic(args) if args.checkpoint else _from_files(args))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    settings = pl.LMSettings(args.layers, args.width, args.heads, args.steps, args.batch_size, args.lr,
                             max(1, args.steps // 10), args.seed, args.prefix_weight)
    tokenizer = pl.make_tokenizer(vocab, train)
    print(f"sign vocabulary: {len(vocab.tokens())} tokens (codebook {vocab.codebook_size}, codes per "
          f"chunk {vocab.codes_per_stream}, NC runs up to {vocab.max_run}); tokenizer {len(tokenizer)} ids")
    for line in notes:
        print(line)
    results = {}
    for condition in pl.CONDITIONS:
        results[condition] = pl.run_condition(tokenizer, train, evals, condition, settings)
        print(f"  trained on {condition}: {results[condition].seconds:.0f} s", flush=True)
    return _report(args, pl, results, settings, unit, len(train), evals)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


def _synthetic(args):
    """Tokenize a fresh synthetic set with the checkpoint; items hold gloss sequences."""
    from src.tools.synth import write_synthetic_dataset
    from src.inference import load_tokenizer
    from src.pipelines import prefix_lm as pl
    from src.pipelines.export import export_config, export_tokens
    from src.tokens.llm import vocab_of

    model, ckpt_cfg = load_tokenizer(args.checkpoint, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        # Every video in one split: the proxy draws its own held-out sets below.
        write_synthetic_dataset(tmp, args.num, args.synth_seed, *args.frames, split_fractions=(1.0, 0.0, 0.0))
        annotations = json.loads((Path(tmp) / "annotations.json").read_text())
        records, stats, failures = export_tokens(model, export_config(ckpt_cfg, root=tmp), "train",
                                                 checkpoint=args.checkpoint, progress=False)
    for rec in records:
        rec["text"] = annotations[rec["video_name"]]["gloss"]
        rec["meta"]["signer"] = annotations[rec["video_name"]]["signer"]
    if args.save_tokens:
        from src.tokens.records import write_jsonl_atomic

        write_jsonl_atomic(args.save_tokens, records)
    vocab = vocab_of(records, "export")
    items, skipped = pl.items_from_records(records, vocab, "word", "export", args.max_codes or None)
    held = set(args.holdout_signers)
    signers = [i for i in items if i.signer in held]
    train, videos = pl.hold_out([i for i in items if i.signer not in held], args.val_frac, args.seed)
    notes = [f"synthetic signer: {args.num} videos (seed {args.synth_seed}, {args.frames[0]}-{args.frames[1]} "
             f"frames), tokenized by {args.checkpoint}: " + stats.lines()[1],
             f"target: gloss sequence; {len(failures) + len(skipped)} videos not used"]
    return vocab, train, {"held-out videos": videos, f"held-out signers {sorted(held)}": signers}, "word", notes


def _read(files: list[str]) -> list[dict]:
    from src.tokens.records import read_jsonl

    return [rec for f in files for rec in read_jsonl(f)]


def _from_files(args):
    """Items of exported JSONL files; held out: --val-tokens or a seeded fraction, and the
    videos of --holdout-signers where the records carry ``meta.signer``."""
    from src.pipelines import prefix_lm as pl
    from src.tokens.llm import vocab_of

    records, val_records = _read(args.tokens), _read(args.val_tokens or [])
    vocab = vocab_of(records + val_records, " ".join(args.tokens + (args.val_tokens or [])))
    texts = [r["text"] for r in records if isinstance(r.get("text"), str)]
    unit = pl.guess_unit(texts) if args.unit == "auto" else args.unit
    items, skipped = pl.items_from_records(records, vocab, unit, max_codes=args.max_codes or None)
    held_signers = set(args.holdout_signers) if all(i.signer is not None for i in items) else set()
    signers = [i for i in items if i.signer in held_signers]
    items = [i for i in items if i.signer not in held_signers]
    if val_records:
        train, (held, more) = items, pl.items_from_records(val_records, vocab, unit, max_codes=args.max_codes or None)
        skipped += more
    else:
        train, held = pl.hold_out(items, args.val_frac, args.seed)
    if len(train) < 2 or len(held) < 2:
        raise ValueError(f"{args.tokens[0]}: {len(train)} training and {len(held)} held-out videos with text; "
                         "need at least 2 of each")
    notes = [f"{len(train)} training and {len(held)} held-out videos; {len(skipped)} records skipped"
             + (f" (first: {skipped[0]})" if skipped else "")]
    evals = {"held-out videos": held}
    if signers:
        evals[f"held-out signers {sorted(held_signers)}"] = signers
    elif not held_signers:
        notes.append("held-out signers: not measured (the records carry no meta.signer)")
    return vocab, train, evals, unit, notes


def _report(args, pl, results, settings, unit, num_train, evals) -> int:
    """Print the table, write the figures and the plot; exit status from the margin."""
    metric = "WER" if unit == "word" else "CER"
    margins = pl.margins(results)
    names = list(results["tokens"].scores)
    print(f"\n{metric} of greedy decoding (exact sentences), LM {settings.layers} layers x {settings.width}, "
          f"{settings.steps} steps of {settings.batch_size}, {num_train} training videos")
    print(f"{'':<28}" + "".join(f"{c:>22}" for c in results))
    for name in names:
        cells = "".join(f"{r.scores[name]['error_rate']:>14.3f} ({r.scores[name]['exact']:.0%})".rjust(22)
                        for r in results.values())
        print(f"{name + ' (' + str(len(evals[name])) + ')':<28}{cells}")
    for name in names:
        print(f"margin on {name}: " + ", ".join(f"{m:+.3f} over {c}" for c, m in margins[name].items()))
    for name, ref, hyp in results["tokens"].examples[names[0]]:
        print(f"  {name}: ref '{ref}' -> '{hyp}'")
    first = names[0]
    passed = min(margins[first].values()) >= args.min_margin
    print(f"{'PASS' if passed else 'FAIL'}: the tokens' {metric} on {first} is "
          f"{min(margins[first].values()):+.3f} below the best control (needed {args.min_margin:+.3f})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from src.files import write_json

    write_json(out / "prefix_lm.json", {
        "metric": metric, "pass": passed, "min_margin": args.min_margin, "margins": margins,
        "settings": vars(settings), "num_train": num_train,
        "results": {c: {"scores": r.scores, "curve": r.curve, "seconds": r.seconds, "examples": r.examples}
                    for c, r in results.items()}})
    plot = pl.plot_curves(results, out / "prefix_lm_loss.png",
                          f"prefix-LM proxy: text loss, {num_train} training videos")
    print(f"wrote {out / 'prefix_lm.json'} and {plot}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
