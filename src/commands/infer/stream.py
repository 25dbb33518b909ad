"""stream: tokenize a .npy or .pose file frame by frame, as a live stream.

Tokenize a pose file frame by frame as a live stream (causal preprocessing), print each
chunk's tokens as they come and the latency from a chunk's last frame to its tokens."""
from __future__ import annotations

import argparse
import json
import sys
import time

from src.cli import add_checkpoint_arg, checkpoint_path, parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("stream", __doc__.split(":", 1)[1].strip())
    p.epilog = ("Lossless NC runs, decided online: a stream that repeats its codes is left out of the chunk's "
                "line, and the run's ['NC', k] is printed (closed: stream -> [first chunk, k]) when it ends. "
                "--out writes the same JSONL record as export-tokens. See docs/streaming.md.")
    add_checkpoint_arg(p)
    p.add_argument("--input", required=True, help=".npy in the dataset layout, or a .pose file (pip install pose-format)")
    p.add_argument("--realtime", action="store_true", help="feed frames at the data frame rate (else as fast as possible)")
    p.add_argument("--out", default=None, help="also write the token record (JSONL, one line) here")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: the checkpoint's export.precision")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model step first (seconds, once; needs a C++ compiler): "
                        "25-45%% less time per chunk, for a long-running stream")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p


def run(args: argparse.Namespace) -> int:
    """The command itself, inside the error boundary of :func:`src.cli.run_command`."""
    checkpoint_path(args)
    import numpy as np
    import torch

    from src.data.posefile import load_frames
    from src.streaming import StreamingTokenizer, rebuild_entries
    from src.tokens.rle import count_tokens

    torch.set_num_threads(max(1, args.threads))
    start = time.perf_counter()
    tok = StreamingTokenizer.from_checkpoint(args.checkpoint, precision=args.precision, compile=args.compile)
    if args.compile:
        print(f"compiled the step in {time.perf_counter() - start:.1f} s" if tok.compiled
              else "not compiled: streaming eagerly")
    cfg = tok.cfg
    if not cfg.data.causal:
        print("warning: this checkpoint was trained without causal preprocessing (data.causal=false): the "
              "streamed tokens differ from its export-tokens output; train with data.causal=true for equal "
              "tokens", file=sys.stderr)
    if cfg.export.rle_threshold > 0:
        print("note: the stream's RLE is lossless (export.rle_threshold applies to export-tokens only)")
    frames = load_frames(args.input)
    fps = float(cfg.data.fps)
    chunks, latencies = [], []

    def show(outs: list, arrival: float) -> None:
        done = time.perf_counter()
        for out in outs:
            chunks.append(out)
            if out.entry is None:
                line = {"end": True, "closed": out.closed}
            else:
                latencies.append(done - arrival)
                line = {**out.entry, "closed": out.closed} if out.closed else dict(out.entry)
                line["latency_ms"] = round(1e3 * (done - arrival), 2)
            if not args.quiet:
                print(json.dumps(line), flush=True)

    start = time.perf_counter()
    for i in range(frames.shape[0]):
        if args.realtime:
            time.sleep(max(0.0, start + i / fps - time.perf_counter()))
        arrival = time.perf_counter()
        show(tok.push(frames[i:i + 1]), arrival)
    arrival = time.perf_counter()
    show(tok.flush(), arrival)
    ms = 1e3 * np.array(latencies)
    codes = np.stack([c.codes for c in chunks if c.codes is not None])
    entries = rebuild_entries(chunks)
    print(f"{frames.shape[0]} frames, {len(codes)} chunks of {cfg.data.chunk_len}; latency from a chunk's last "
          f"frame to its tokens: p50 {np.percentile(ms, 50):.2f} ms, p95 {np.percentile(ms, 95):.2f} ms "
          f"(max {ms.max():.2f}); {count_tokens(entries)} tokens after RLE")
    if args.out:
        _write_record(args, cfg, codes, entries, frames.shape[0], tok.precision)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


def _write_record(args, cfg, codes, entries: list[dict], num_frames: int, precision: str) -> None:
    """The export-tokens record of the streamed codes; its tokens must equal the stream's rebuilt entries."""
    from pathlib import Path

    from src.pipelines.export import token_settings
    from src.tokens.records import validate_record, write_jsonl_atomic
    from src.tokens.sequence import sequence_record

    settings = token_settings(cfg)
    meta = {"checkpoint": args.checkpoint, "source": Path(args.input).name, "causal": True, "num_frames": num_frames,
            "precision": precision}
    record, _ = sequence_record(Path(args.input).stem, codes, settings, meta)
    if record["tokens"] != entries:
        raise RuntimeError("the streamed NC runs differ from the offline RLE of the same codes")
    validate_record(record, settings.num_levels, settings.codebook_size)
    write_jsonl_atomic(args.out, [record])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
