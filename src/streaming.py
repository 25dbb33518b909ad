"""Streaming tokenization: frames in as they arrive, each chunk's tokens out as soon as it is complete.

>>> tok = StreamingTokenizer.from_checkpoint("ckpt_best.pt")
>>> for frames in camera:                      # any number of [n, 134, 3] frames in pixels
...     for chunk in tok.push(frames):
...         print(chunk.t, chunk.entry)
>>> tail = tok.flush()                          # the last partial chunk, the NC runs still open

Preprocessing is the causal mode of ``src/data/causal.py``; each chunk goes through
``model.step(x, observed, context)`` with ``context`` = the decoded last frame of the previous
chunk. The run-length "NC" coding is decided online (:class:`OnlineRLE`): see docs/streaming.md.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from src.config import Config
from src.data import keypoints as kp
from src.data.causal import CausalCleaner, CausalFrames, causal_centres, concat_frames
from src.data.pose import chunk
from src.data.sample import local_chunks, to_pixels
from src.hardware import resolve_precision
from src.inference import bf16_weights, load_tokenizer, precision_context, set_adaptive_depth, shared_copy
from src.models.stitch import stitch_chunks
from src.models.tokenizer import SignTokenizer
from src.tokens.rle import NC
from src.tokens.sequence import codes_to_streams


class OnlineRLE:
    """Lossless run-length "no change" coding decided chunk by chunk.

    A chunk whose codes equal its stream's anchor (last explicit codes) is left out of its
    entry; the run's marker ``["NC", k]`` is only known when the run ends (codes change, the
    run reaches ``max_run``, or the stream ends) and is then reported as ``(start, k)``.
    Placing each marker at entry ``start`` gives exactly ``rle_encode(codes, max_run=max_run)``.
    """

    def __init__(self, max_run: int | None = None, enabled: bool = True):
        self.max_run, self.enabled = max_run, enabled
        self.anchor: dict[str, list[int]] = {}
        self.run: dict[str, list[int]] = {}       # stream -> [start, length] of its open run

    def step(self, t: int, streams: dict[str, list[int]]) -> tuple[dict, dict[str, tuple[int, int]]]:
        """One chunk's codes per stream -> its entry and the runs that closed at it."""
        entry, closed = {"t": t}, {}
        for name, codes in streams.items():
            if not self.enabled or name not in self.anchor or codes != self.anchor[name]:
                if name in self.run:
                    closed[name] = tuple(self.run.pop(name))
                self.anchor[name] = codes
                entry[name] = codes
                continue
            run = self.run.setdefault(name, [t, 0])
            run[1] += 1
            if self.max_run is not None and run[1] == self.max_run:
                closed[name] = tuple(self.run.pop(name))
        return entry, closed

    def close(self) -> dict[str, tuple[int, int]]:
        """End of the stream: every open run, closed."""
        closed = {name: tuple(run) for name, run in self.run.items()}
        self.run = {}
        return closed


def rebuild_entries(chunks: list["ChunkTokens"]) -> list[dict]:
    """The offline JSONL ``tokens`` list from a stream's outputs (in order): entries with each
    closed run's ``["NC", k]`` placed at the run's first chunk."""
    entries = [dict(c.entry) for c in chunks if c.entry is not None]
    for c in chunks:
        for name, (start, k) in c.closed.items():
            entries[start][name] = [NC, k]
    return [{"t": e["t"], **{s: e[s] for s in kp.STREAM_NAMES if s in e}} for e in entries]


@dataclass
class ChunkTokens:
    """What the stream gives for one completed chunk (or, with ``entry`` None, the end of the stream)."""

    t: int                                  # chunk index (the number of chunks, for the end item)
    codes: np.ndarray | None                # (S, codes per stream) int, -1 where a stream codes fewer
    entry: dict | None                      # the chunk's JSONL entry; streams in an open NC run left out
    closed: dict[str, tuple[int, int]] = field(default_factory=dict)  # stream -> (first chunk, k)
    num_frames: int = 0                     # real frames in the chunk (fewer than L for the last)
    pose: np.ndarray | None = None          # (num_frames, 134, 3) decoded, pixels, unstitched
    display: np.ndarray | None = None       # frames finalised by border stitching now (pixels)


@torch.inference_mode()   # as no_grad, with less bookkeeping per op (~5% of a streamed chunk)
def step_chunk(model: SignTokenizer, x: np.ndarray, conf: np.ndarray, context: torch.Tensor | None,
               device: str | torch.device = "cpu", precision: str = "fp32",
               decode: bool = True) -> tuple[np.ndarray, torch.Tensor | None]:
    """One chunk x (L, P, 2), conf (L, P) -> codes (S, levels) and the decoded chunk (1, L, P, 2)
    (None when ``decode`` is off and the model needs no context)."""
    xt = torch.from_numpy(np.ascontiguousarray(x))[None].to(device)
    ct = torch.from_numpy(np.ascontiguousarray(conf))[None].to(device)
    with precision_context(device, precision):
        codes, decoded = model.step(xt, ct, context, decode)
    return codes[0].cpu().numpy(), None if decoded is None else decoded.float()


# bf16 streaming picks codes from the 16 nearest by int8 (CPU) or bf16 codewords, rescored in
# fp32 (Codebook.encode_shortlist): one chunk reads a quarter (half) of the codebook bytes.
BF16_SHORTLIST = 16


def step_model(model: SignTokenizer, precision: str = "fp32", compile: bool = False,
               decode: bool = False) -> SignTokenizer:
    """The model a chunk goes through: ``model`` itself in fp32; in bf16 a copy with prepacked
    bf16 linear layers (:func:`src.inference.bf16_weights`) whose quantiser shortlists codes
    (``BF16_SHORTLIST``). The stream and the causal offline path both use it.

    ``compile``: a copy whose ``step`` is compiled (:func:`compile_step`; ``decode``: for
    chunks that are to be decoded): the same function in fewer, fused kernels. Its codes can
    differ from the eager copy's where a last bit decides; the stream and the causal offline
    path share it. Where it cannot compile, the eager model of ``precision``.
    """
    if compile:
        twin = shared_copy(model)   # plain linear layers: the compiled graph holds their weights (bf16 in bf16)
    elif precision == "bf16":
        twin = bf16_weights(model)
    else:
        return model
    if precision == "bf16" and twin.quantizer.rvq is not None:   # streams with EMA codebooks (FSQ reads none)
        twin.quantizer.rvq.shortlist = BF16_SHORTLIST
        for level in twin.quantizer.rvq.levels:   # built now (~50 ms), not in the first chunk's latency
            level.shortlist_tables()
    if compile and not compile_step(twin, precision, decode):
        return step_model(model, precision)
    return twin


def compile_step(twin: SignTokenizer, precision: str, decode: bool = False) -> bool:
    """Replace ``twin.step`` by ``torch.compile(twin.step)`` and compile it now, on zero chunks
    (seconds, once, not in the first chunks' latency; tens of seconds for a context model's two
    graphs), with inductor's weight freezing: weights and codebooks are folded into the graph,
    so the compiled step holds those of this moment. On failure (no C++ compiler, an
    unsupported platform) a warning, ``twin.step`` as it was, and False."""
    x = np.zeros((twin.chunk_len, kp.NUM_STREAM_POINTS, 2), np.float32)
    observed = np.ones(x.shape[:2], bool)
    device = next(twin.parameters()).device

    def chunks() -> None:   # a first chunk and, for a context model, one after it
        # with the caller's decode flag: the graph is specialised on it, another value compiles anew
        _, decoded = step_chunk(twin, x, observed, None, device, precision, decode)
        if twin.uses_context:
            step_chunk(twin, x, observed, decoded[:, -1], device, precision, decode)

    try:
        import torch._dynamo.config as dynamo_config
        import torch._inductor.config as inductor_config
        chunks()   # the eager caches the compiled quantiser reads (codeword norms, shortlist tables)
        twin.step = torch.compile(twin.step, dynamic=False)   # an instance attribute over the method
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        # Each model compiled in a process adds graphs to the one function (two for a context
        # model); past recompile_limit (8) torch.compile would run eagerly without a word.
        # The limit counts only while compiling: the calls after find their graph.
        limit = max(dynamo_config.recompile_limit, 1024)
        with inductor_config.patch(freezing=True), dynamo_config.patch(recompile_limit=limit):
            chunks()
        if torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs:
            raise RuntimeError("torch.compile made no graph (it ran eagerly)")
        return True
    except Exception as err:   # any backend failure: the eager step computes the same function
        twin.__dict__.pop("step", None)
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"torch.compile of the streaming step failed ({type(err).__name__}: {reason}); "
                      "streaming eagerly", RuntimeWarning, stacklevel=2)
        return False


def causal_codes(model: SignTokenizer, sample: dict, device: str | torch.device = "cpu",
                 precision: str = "fp32", compile: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The causal offline path: a dataset sample's chunks through ``model.step`` in order, each
    with the previous chunk's decoded last frame as context -> codes (C, S, levels), recon (C, L, P, 2)."""
    precision = resolve_precision(precision, device, "causal tokens in bf16")
    model = step_model(model, precision, compile, decode=True)
    codes, recon, context = [], [], None
    for c in range(sample["x"].shape[0]):
        code, decoded = step_chunk(model, sample["x"][c], sample["conf"][c], context, device, precision)
        codes.append(code)
        recon.append(decoded[0].cpu().numpy())
        context = decoded[:, -1]
    return np.stack(codes), np.stack(recon)


class StreamingTokenizer:
    """Push frames, get tokens: the causal tokenizer of one sequence at a time (``reset`` for the next)."""

    def __init__(self, model: SignTokenizer, cfg: Config, device: str | torch.device = "cpu",
                 precision: str | None = None, decode: bool = False, compile: bool = False):
        self.model, self.cfg, self.device = set_adaptive_depth(model.eval(), cfg), cfg, device
        self.precision = resolve_precision(precision or cfg.export.precision, device, "stream in bf16")
        self.step_model = step_model(self.model, self.precision, compile, decode)
        self.decode = decode
        self.chunk_len = cfg.data.chunk_len
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", precision: str | None = None,
                        decode: bool = False, compile: bool = False) -> "StreamingTokenizer":
        """The model and its data settings from a train-rvq checkpoint."""
        model, cfg = load_tokenizer(path, device)
        return cls(model, cfg, device, precision, decode, compile)

    @property
    def compiled(self) -> bool:
        """Whether chunks go through a compiled step (``compile`` asked, and it compiled)."""
        return "step" in self.step_model.__dict__

    def reset(self) -> None:
        """Start a new sequence."""
        d = self.cfg.data
        # unrotated frames: a chunk is rotated upright at once (_chunk), not frame by frame
        self.cleaner = CausalCleaner(d.conf_thresh, d.lowpass_sigma, d.causal_warmup, upright=False)
        self.rle = OnlineRLE(self.cfg.export.max_run, self.cfg.export.enable_rle)
        self.raw: list[np.ndarray] = []      # frames pushed, not yet cleaned
        self.num_raw = 0
        self.ready: list[CausalFrames] = []   # cleaned frames not yet in a complete chunk
        self.num_ready = 0                    # frames in ``ready``
        self.context: torch.Tensor | None = None
        self.pending_display: torch.Tensor | None = None  # last decoded chunk (1, L, P, 2), second half unshown
        self.pending_info: dict | None = None
        self.num_chunks = 0
        self.seen_rows = np.zeros(kp.NUM_ROWS, dtype=bool)   # rows seen in earlier chunks (centres)
        self.reference_state: tuple[np.ndarray, np.ndarray] | None = None   # running sums of the reference pose

    def push(self, frames: np.ndarray) -> list[ChunkTokens]:
        """Frames ``[n, 134, 3]`` (pixels and scores, as the dataset stores them; n may be 0) ->
        the tokens of every chunk they complete."""
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 3 or frames.shape[1:] != (kp.NUM_ROWS, 3):
            raise ValueError(f"frames must be [n, {kp.NUM_ROWS}, 3], got {list(frames.shape)}")
        if len(frames):
            self.raw.append(frames)
            self.num_raw += len(frames)
        # Cleaned a chunk at a time (the cleaner's output does not depend on how frames are
        # pushed): one vectorised pass instead of one per frame of a live stream.
        if self.num_ready + self.num_raw < self.chunk_len:
            return []
        self._clean(self.cleaner.push(self._take_raw()))
        if self.num_ready < self.chunk_len:   # the warm-up still holds frames back
            return []
        frames_ready = concat_frames(self.ready)
        out = []
        full = len(frames_ready) // self.chunk_len * self.chunk_len
        for start in range(0, full, self.chunk_len):
            out.append(self._chunk(_take(frames_ready, slice(start, start + self.chunk_len))))
        self.ready = [_take(frames_ready, slice(full, None))]
        self.num_ready = len(frames_ready) - full
        return out

    def _take_raw(self) -> np.ndarray:
        """The raw frames pushed and not yet cleaned, in order."""
        raw = np.concatenate(self.raw) if self.raw else np.zeros((0, kp.NUM_ROWS, 3), np.float32)
        self.raw, self.num_raw = [], 0
        return raw

    def _clean(self, part: CausalFrames) -> None:
        if len(part):
            self.ready.append(part)
            self.num_ready += len(part)

    def flush(self) -> list[ChunkTokens]:
        """End of the sequence: the last partial chunk (edge-padded, as offline), the NC runs
        still open and the last stitched frames; the tokenizer is then reset."""
        self._clean(self.cleaner.push(self._take_raw()))
        self.ready.append(self.cleaner.flush())
        frames_ready = concat_frames(self.ready)
        out = [self._chunk(frames_ready)] if len(frames_ready) else []
        closed = self.rle.close()
        tail = self._display_tail()
        if out:
            out[-1].closed.update(closed)
            if tail is not None:
                out[-1].display = np.concatenate([out[-1].display, tail])
        elif closed or tail is not None:
            out.append(ChunkTokens(self.num_chunks, None, None, closed, display=tail))
        self.reset()
        return out

    def _chunk(self, frames: CausalFrames) -> ChunkTokens:
        """One chunk's frames through ``local_chunks`` (as ``make_sample``), then ``model.step``."""
        frames = self.cleaner.to_upright(frames)
        centres = causal_centres(frames.xy, frames.conf, self.seen_rows)
        self.seen_rows |= frames.conf.any(axis=0)
        x, conf, _, reference, self.reference_state = local_chunks(
            frames.xy, frames.conf, centres, frames.unit, self.chunk_len, self.cfg.data.reference,
            state=self.reference_state)
        codes, decoded = step_chunk(self.step_model, x[0], conf[0], self.context, self.device, self.precision,
                                    decode=self.decode)
        self.context = None if decoded is None else decoded[:, -1]
        t, self.num_chunks = self.num_chunks, self.num_chunks + 1
        entry, closed = self.rle.step(t, {s: v[0] for s, v in codes_to_streams(codes[None]).items()})
        result = ChunkTokens(t, codes, entry, closed, len(frames))
        if self.decode:
            info = {"centres": chunk(centres, self.chunk_len)[0], "conf": conf, "num_frames": len(frames),
                    "unit": chunk(frames.unit, self.chunk_len)[0], "angle": chunk(frames.angle, self.chunk_len)[0],
                    "size": np.array(self.cleaner.size, dtype=np.float32), "reference": reference}
            result.pose = to_pixels(decoded.cpu().numpy(), info)
            result.display = self._display(decoded, info)
        return result

    def _display(self, decoded: torch.Tensor, info: dict) -> np.ndarray:
        """Stitch the previous chunk to this one: its second half and this chunk's first half are final."""
        half = self.chunk_len // 2
        if self.pending_display is None:
            shown = to_pixels(decoded.cpu().numpy(), info)[:half]
        else:
            pair = stitch_chunks(torch.cat([self.pending_display, decoded]), torch.ones(1, 2, dtype=torch.bool))
            prev = to_pixels(pair[:1].cpu().numpy(), self.pending_info)[half:]
            shown = np.concatenate([prev, to_pixels(pair[1:].cpu().numpy(), info)[:half]])
        self.pending_display, self.pending_info = decoded, info
        return shown

    def _display_tail(self) -> np.ndarray | None:
        if self.pending_display is None:
            return None
        return to_pixels(self.pending_display.cpu().numpy(), self.pending_info)[self.chunk_len // 2:]


def _take(frames: CausalFrames, rows: slice) -> CausalFrames:
    return CausalFrames(frames.xy[rows], frames.conf[rows], frames.unit[rows], frames.angle[rows])
