"""Causal preprocessing and the streaming tokenizer: pieces == whole == the causal offline path."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from src.data import keypoints as kp
from src.data.causal import CausalCleaner, causal_clean, concat_frames
from src.data.pose import observed_mask, pair_lengths, shoulder_angles
from src.data.dataset import collate
from src.data.sample import local_chunks, make_sample, to_pixels
from src.data.source import DataError
from src.inference import PackedLinear, bf16_weights, can_prepack, load_tokenizer, precision_context
from src.metrics.evaluate import chunk_units
from src.metrics.pixel_error import point_error_px
from src.metrics.temporal import timeline_px
from src.models.stitch import stitch_chunks
from src.models.tokenizer import SignTokenizer
from src.streaming import OnlineRLE, StreamingTokenizer, causal_codes, rebuild_entries, step_chunk, step_model
from src.tokens.rle import rle_encode
from src.tokens.sequence import codes_to_streams


@pytest.fixture(scope="module")
def model_cfg(tiny_checkpoint, one_thread):
    return load_tokenizer(tiny_checkpoint)


@pytest.fixture(scope="module")
def raw(synth_root) -> np.ndarray:
    """A synthetic sequence with 3 NaN frames and a left hand seen only from frame 25 on."""
    raw = np.load(sorted((synth_root / "frames_512x512").glob("*.npy"))[0])
    raw[20:23] = np.nan
    raw[:25, list(kp.LEFT_HAND), 2] = 0
    return raw


def causal_cfg(cfg, reference: str | None = None):
    """The checkpoint's data settings in the causal mode (its own ``data.reference`` unless given)."""
    return dataclasses.replace(cfg.data, causal=True, max_frames=0, reference=reference or cfg.data.reference)


def with_reference(cfg, reference: str):
    """The checkpoint's config with ``data.reference`` set (points coded relative to their running mean)."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, reference=reference))


def stream_codes(tok: StreamingTokenizer, raw: np.ndarray, sizes) -> tuple[np.ndarray, list]:
    outs, i = [], 0
    for n in sizes:
        outs += tok.push(raw[i:i + n])
        i += n
    outs += tok.push(raw[i:]) + tok.flush()
    return np.stack([o.codes for o in outs if o.codes is not None]), outs


@pytest.mark.parametrize("reference", ["none", "head"])
def test_pieces_equal_whole_equal_causal_offline_path(model_cfg, raw, reference):
    model, cfg = model_cfg
    cfg = with_reference(cfg, reference)
    sample = make_sample(raw, causal_cfg(cfg, reference))
    offline, _ = causal_codes(model, sample)
    tok = StreamingTokenizer(model, cfg)
    whole, _ = stream_codes(tok, raw, [])
    rng = np.random.default_rng(0)
    sizes = [int(n) for n in rng.integers(0, 14, size=40)]   # zeros: empty pushes
    assert 0 in sizes
    pieces, outs = stream_codes(tok, raw, sizes)
    assert offline.shape == (-(-len(raw) // cfg.data.chunk_len), len(kp.STREAMS), cfg.model.rvq.codes_per_stream)
    np.testing.assert_array_equal(whole, offline)
    np.testing.assert_array_equal(pieces, offline)
    assert [o.t for o in outs if o.codes is not None] == list(range(len(offline)))
    assert outs[-1].num_frames == len(raw) - (len(offline) - 1) * cfg.data.chunk_len


@pytest.mark.parametrize("reference", ["none", "head"])
def test_stream_builds_the_samples_chunks_with_the_datasets_builder(model_cfg, raw, reference, monkeypatch):
    """The stream's chunks, built one at a time by ``local_chunks`` with a running reference,
    are the causal ``make_sample``'s x, conf and reference bit for bit."""
    from src import streaming

    model, cfg = model_cfg
    cfg = with_reference(cfg, reference)
    built = []

    def recording(*args, **kwargs):
        out = local_chunks(*args, **kwargs)
        built.append(out)
        return out

    monkeypatch.setattr(streaming, "local_chunks", recording)
    stream_codes(StreamingTokenizer(model, cfg), raw, [7, 3, 11])
    sample = make_sample(raw, causal_cfg(cfg, reference))
    assert len(built) == len(sample["x"]) > 1
    for i, (x, conf, _, ref, _) in enumerate(built):
        np.testing.assert_array_equal(x[0], sample["x"][i])
        np.testing.assert_array_equal(conf[0], sample["conf"][i])
        np.testing.assert_array_equal(ref[0], sample["reference"][i])


@pytest.mark.parametrize("prepack", [False, True])
def test_bf16_weights_compute_what_autocast_computes(model_cfg, prepack, bf16_on):
    """The bf16 copy holds bf16 linear weights (cast once, not per chunk; prepacked for oneDNN
    or not): under autocast it computes what the model does, bit for bit."""
    model, cfg = model_cfg
    if prepack and not can_prepack("cpu"):
        pytest.skip("oneDNN's prepacked bf16 linear does not run on this CPU (no AVX512-BW/VL/DQ or AVX-NE-CONVERT)")
    twin = bf16_weights(model, prepack=prepack)
    assert isinstance(twin.encoder.transformer.blocks[0].qkv, PackedLinear) == prepack
    assert twin.encoder.transformer.blocks[0].qkv.weight.dtype == torch.bfloat16
    assert model.encoder.transformer.blocks[0].qkv.weight.dtype == torch.float32
    assert twin.quantizer.rvq.levels[0].embed is model.quantizer.rvq.levels[0].embed  # shared, not copied
    for rows in (1, 3):
        x = torch.randn(rows, cfg.data.chunk_len, kp.NUM_STREAM_POINTS, 2)
        observed = torch.rand(rows, cfg.data.chunk_len, kp.NUM_STREAM_POINTS) < 0.9
        with precision_context("cpu", "bf16"):
            assert torch.equal(twin.encode_latent(x, observed), model.encode_latent(x, observed))
            for got, want in zip(twin.step(x, observed), model.step(x, observed)):
                assert torch.equal(got, want)


def test_bf16_stream_equals_the_causal_offline_bf16_path(model_cfg, raw, bf16_on):
    """Both run ``step_model``: prepacked bf16 weights and the quantiser's code shortlist; the
    shortlist rescored in fp32 gives the codes of the plain bf16 path here."""
    model, cfg = model_cfg
    twin = step_model(model, "bf16")
    assert twin.quantizer.rvq.shortlist > 0 and model.quantizer.rvq.shortlist == 0
    assert step_model(model, "fp32") is model
    sample = make_sample(raw, causal_cfg(cfg))
    offline, _ = causal_codes(model, sample, precision="bf16")
    pieces, _ = stream_codes(StreamingTokenizer(model, cfg, precision="bf16"), raw, [1] * 25 + [7, 3])
    np.testing.assert_array_equal(pieces, offline)
    twin.quantizer.rvq.shortlist = 0
    plain = [step_chunk(twin, sample["x"][c], sample["conf"][c], None, precision="bf16")[0]
             for c in range(len(offline))]
    np.testing.assert_array_equal(np.stack(plain), offline)


def test_bf16_without_hardware_streams_fp32_with_one_warning(model_cfg, raw, monkeypatch):
    """With the CPU's bf16 answer forced off (as on an AVX2-only CPU), a bf16 request streams in
    fp32 after one warning that names the CPU, and gives fp32's codes exactly."""
    from src.hardware import FORCE_ENV

    model, cfg = model_cfg
    monkeypatch.setenv(FORCE_ENV, "0")
    with pytest.warns(UserWarning, match=r"stream in bf16: this CPU has no bf16 matmul in hardware .*running in fp32"):
        tok = StreamingTokenizer(model, cfg, precision="bf16")
    assert tok.precision == "fp32" and tok.step_model is model
    fp32, _ = stream_codes(StreamingTokenizer(model, cfg, precision="fp32"), raw, [])
    np.testing.assert_array_equal(stream_codes(tok, raw, [4] * 10)[0], fp32)


def fsq_context_model(model: SignTokenizer, cfg):
    """A fresh model with the face on FSQ beside EMA codebooks and the body coded from its decoded past."""
    rvq = dataclasses.replace(cfg.model.rvq, fsq_streams=["F"], fsq_levels=[4, 4, 4], codebook_size=64)
    mcfg = dataclasses.replace(cfg.model, rvq=rvq, context="previous", context_streams=["B"])
    torch.manual_seed(0)
    other = SignTokenizer(mcfg, cfg.data.chunk_len).eval()
    other.set_standardisation(model.point_mean, model.point_std, model.point_std)
    return other, dataclasses.replace(cfg, model=mcfg)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fsq_face_and_body_context_stream_equals_the_causal_offline_path(model_cfg, raw, precision, bf16_on):
    """A face on FSQ beside EMA codebooks and the body coded from its decoded past: the stream,
    pushed in pieces, gives the causal offline path's codes (fp32 and the bf16 step model)."""
    other, cfg = fsq_context_model(*model_cfg)
    sample = make_sample(raw, causal_cfg(cfg))
    offline, _ = causal_codes(other, sample, precision=precision)
    pieces, _ = stream_codes(StreamingTokenizer(other, cfg, precision=precision), raw, [1] * 25 + [7, 3])
    np.testing.assert_array_equal(pieces, offline)
    assert (offline[:, kp.STREAM_NAMES.index("F"), 0] >= 0).all() and len(np.unique(offline[:, 0, 0])) > 1


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_stream_equals_the_causal_offline_compiled_path(model_cfg, raw, precision, bf16_on):
    """compile=True: the step (encode, quantise and, for the body's context, decode) through torch.compile.
    The stream in pieces gives the compiled causal offline path's codes, bit for bit, and the
    eager step's codes up to last-bit ties; the caller's model is left as it was."""
    if not shutil.which("c++") and not shutil.which("g++"):
        pytest.skip("torch.compile needs a C++ compiler")
    model, cfg = fsq_context_model(*model_cfg)
    tok = StreamingTokenizer(model, cfg, precision=precision, compile=True)
    assert tok.compiled and not StreamingTokenizer(model, cfg, precision=precision).compiled
    assert "step" not in model.__dict__
    sample = make_sample(raw, causal_cfg(cfg))
    offline, recon = causal_codes(model, sample, precision=precision, compile=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    pieces, _ = stream_codes(tok, raw, [1] * 25 + [7, 3])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs   # compiled before, not mid-stream
    np.testing.assert_array_equal(pieces, offline)
    eager, eager_recon = causal_codes(model, sample, precision=precision)
    assert (eager == offline).mean() >= 0.95
    assert np.abs(recon - eager_recon).mean() < 0.05 * np.abs(eager_recon).mean()


@pytest.mark.parametrize("failure", ["error", "eager"])
def test_compile_failure_streams_eagerly_with_a_warning(model_cfg, raw, monkeypatch, failure, bf16_on):
    """torch.compile failing (no C++ compiler), or running eagerly without a word (as past its
    recompile limit): a warning that says so, and the eager step."""
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here\nmore detail")

    model, cfg = model_cfg
    monkeypatch.setattr(torch, "compile", broken if failure == "error" else lambda fn, **kwargs: fn)
    with pytest.warns(RuntimeWarning, match="no compiler here" if failure == "error" else "made no graph"):
        tok = StreamingTokenizer(model, cfg, precision="bf16", compile=True)
    assert not tok.compiled   # the eager bf16 model: prepacked weights where oneDNN has them
    assert isinstance(tok.step_model.encoder.transformer.blocks[0].qkv, PackedLinear) == can_prepack("cpu")
    pieces, _ = stream_codes(tok, raw, [5] * 10)
    np.testing.assert_array_equal(pieces, stream_codes(StreamingTokenizer(model, cfg, precision="bf16"), raw, [])[0])


def test_cleaner_measures_each_frame_as_the_offline_helpers(raw):
    """The cleaner's per-frame lengths and shoulder angle (one vectorised difference for all
    pairs) are bit for bit those of ``pose.pair_lengths`` and ``pose.shoulder_angles``."""
    rng = np.random.default_rng(0)
    frames = raw[30:60].copy()
    frames[..., :2] += rng.normal(0, 3, frames[..., :2].shape).astype(np.float32)
    frames[rng.random(frames.shape[:2]) < 0.2, 2] = 0          # every pair seen in some frames only
    cleaner = CausalCleaner(0.3, 0.0, warmup=1000)              # never releases: only the measures
    cleaner.push(frames)
    xy = np.stack([f for f, _ in cleaner.pending])
    conf = np.stack([c for _, c in cleaner.pending])
    for pair, median in cleaner.lengths.items():
        assert median.values == sorted(pair_lengths(xy, conf, pair).tolist())
    assert any(0 < len(m.values) < len(frames) for m in cleaner.lengths.values())   # some pairs unseen at times
    assert cleaner.angles.values == sorted(shoulder_angles(xy, conf).tolist())
    assert 0 < len(cleaner.angles.values)
    assert np.array_equal(conf, observed_mask(frames, 0.3))


def test_stream_rebuilds_the_offline_jsonl_entries(model_cfg, raw):
    model, shared = model_cfg
    still = np.repeat(raw[:1], 60, axis=0)     # a still signer: long NC runs
    seq = np.concatenate([raw, still])
    for max_run in (None, 2):
        # a copy: the module's config stays as loaded, whatever this test does
        cfg = dataclasses.replace(shared, export=dataclasses.replace(shared.export, max_run=max_run))
        codes, outs = stream_codes(StreamingTokenizer(model, cfg), seq, [7] * 20)
        expected = rle_encode(codes_to_streams(codes), max_run=max_run)
        assert rebuild_entries(outs) == expected
        assert any(isinstance(v, list) and v and v[0] == "NC" for e in expected for v in e.values())
    assert shared.export.max_run == 32


def test_online_rle_matches_rle_encode_on_random_codes():
    rng = np.random.default_rng(1)
    for trial in range(50):
        n = int(rng.integers(1, 30))
        streams = {s: [[int(c)] for c in rng.integers(0, 3, size=n)] for s in ("F", "LH")}
        max_run = [None, 1, 2, 3][trial % 4]
        rle = OnlineRLE(max_run)
        entries, closed = [], []
        for t in range(n):
            entry, c = rle.step(t, {s: streams[s][t] for s in streams})
            entries.append(entry)
            closed.append(c)
        closed[-1].update(rle.close())
        for c in closed:
            for s, (start, k) in c.items():
                entries[start][s] = ["NC", k]
        assert entries == rle_encode(streams, max_run=max_run)


def test_each_frame_depends_only_on_frames_up_to_it(raw):
    cut = 30
    base, unit, angle = causal_clean(raw, 0.3, lowpass_sigma=1.5, warmup=10)
    changed = raw.copy()
    changed[cut:, 1:, :2] += 40.0                   # a different future
    other, unit2, angle2 = causal_clean(changed, 0.3, lowpass_sigma=1.5, warmup=10)
    np.testing.assert_array_equal(base.xy[:cut], other.xy[:cut])
    np.testing.assert_array_equal(unit[:cut], unit2[:cut])
    np.testing.assert_array_equal(angle[:cut], angle2[:cut])
    assert not np.array_equal(base.xy[cut:], other.xy[cut:])
    # the offline pipeline interpolates the NaN frames from the future; the causal one holds the past
    held, _, _ = causal_clean(raw, 0.3, warmup=10)
    np.testing.assert_array_equal(held.xy[21, kp.L_SHOULDER], held.xy[19, kp.L_SHOULDER])


def test_warmup_and_pieces_of_the_cleaner(raw):
    cleaner = CausalCleaner(0.3, 0.0, warmup=10)
    assert len(cleaner.push(raw[:9])) == 0            # warm-up: nothing yet
    first = cleaner.push(raw[9:10])
    assert len(first) == 10 and np.all(first.unit == first.unit[0])
    rest = concat_frames([cleaner.push(raw[10:]), cleaner.flush()])
    whole, unit, _ = causal_clean(raw, 0.3, warmup=10)
    np.testing.assert_array_equal(np.concatenate([first.xy, rest.xy]), whole.xy)
    np.testing.assert_array_equal(np.concatenate([first.unit, rest.unit]), unit)


def test_a_chunk_rotated_at_once_equals_frames_rotated_one_by_one(raw):
    """The stream rotates a whole chunk upright at once (upright=False, to_upright): the same
    values as the cleaner rotating each frame as it is released."""
    tilted = raw.copy()
    centre = np.array([256.0, 256.0], np.float32)
    c, s = np.cos(0.2), np.sin(0.2)
    d = tilted[:, 1:, :2] - centre
    tilted[:, 1:, :2] = np.stack([d[..., 0] * c - d[..., 1] * s, d[..., 0] * s + d[..., 1] * c], -1) + centre
    each, whole = CausalCleaner(0.3, 0.0, warmup=10), CausalCleaner(0.3, 0.0, warmup=10, upright=False)
    by_frame = concat_frames([each.push(tilted[i:i + 1]) for i in range(len(tilted))] + [each.flush()])
    unrotated = concat_frames([whole.push(tilted[i:i + 1]) for i in range(len(tilted))] + [whole.flush()])
    assert np.abs(by_frame.angle).max() > 0.1                         # the rotation is exercised
    assert not np.array_equal(unrotated.xy, by_frame.xy)
    np.testing.assert_array_equal(whole.to_upright(unrotated).xy, by_frame.xy)


def test_no_unit_ever_is_a_clear_error(raw):
    blind = raw.copy()
    blind[..., 2] = 0
    with pytest.raises(DataError, match="no unit length"):
        causal_clean(blind, 0.3)
    # a unit that becomes known late: the frames before wait and take the first estimate
    late = raw.copy()
    late[:15, 1:, 2] = 0
    pose, unit, _ = causal_clean(late, 0.3, warmup=5)
    assert len(unit) == len(raw) and np.all(unit[:16] == unit[15])


@pytest.mark.parametrize("reference", ["none", "head"])
def test_causal_sample_maps_back_to_pixels(model_cfg, raw, reference):
    _, cfg = model_cfg
    sample = make_sample(raw, causal_cfg(cfg, reference))
    assert np.any(sample["reference"]) == (reference != "none")
    assert sample["unit"].shape == sample["frame_mask"].shape and np.ptp(sample["unit"][sample["frame_mask"]]) > 0
    px = to_pixels(sample["x"], sample)
    seen = np.zeros((len(raw), kp.NUM_ROWS), bool)
    seen[:, kp.STREAM_ROWS] = sample["conf"].reshape(-1, kp.NUM_STREAM_POINTS)[:len(raw)]
    assert seen.sum() > 0.5 * len(raw) * len(np.unique(kp.STREAM_ROWS))
    assert np.abs(px[..., :2] - raw[..., :2])[seen].max() < 1e-3


def test_metrics_use_per_frame_units(model_cfg, raw):
    _, cfg = model_cfg
    samples = [{**make_sample(raw, causal_cfg(cfg)), "name": "a"}, {**make_sample(raw[:35], cfg.data), "name": "b"}]
    batch = collate(samples)
    assert batch.unit.shape == batch.frame_mask.shape
    units = chunk_units(batch)                                    # (N, L)
    x = batch.x[batch.chunk_mask]
    err = point_error_px(x + 1.0, x, units)
    np.testing.assert_allclose(err[..., 0].numpy(), np.sqrt(2) * units.numpy(), rtol=1e-6)
    line = timeline_px(torch.ones_like(x), batch.chunk_mask, batch.unit)
    assert torch.equal(line[0, :, 0, 0], batch.unit[0].flatten())


@pytest.mark.parametrize("reference", ["none", "head"])
def test_decoded_pose_and_stitched_display(model_cfg, raw, reference):
    model, cfg = model_cfg
    cfg = with_reference(cfg, reference)
    tok = StreamingTokenizer(model, cfg, decode=True)
    outs = tok.push(raw) + tok.flush()
    assert sum(o.pose.shape[0] for o in outs if o.pose is not None) == len(raw)
    shown = np.concatenate([o.display for o in outs if o.display is not None])
    assert shown.shape == (len(raw), kp.NUM_ROWS, 3)
    # the same as stitching the whole decoded sequence offline
    sample = make_sample(raw, causal_cfg(cfg, reference))
    _, recon = causal_codes(model, sample)
    stitched = stitch_chunks(torch.from_numpy(recon), torch.ones(1, len(recon), dtype=torch.bool)).numpy()
    np.testing.assert_allclose(shown, to_pixels(stitched, sample), atol=1e-3)
    assert not np.allclose(shown, to_pixels(recon, sample), atol=1e-3)   # stitching did change frames


def test_stream_command_prints_chunks_and_latency(tiny_checkpoint, synth_root, tmp_path, capsys):
    from src.commands.infer.stream import main

    src = sorted((synth_root / "frames_512x512").glob("*.npy"))[1]
    out = tmp_path / "tokens.jsonl"
    assert main(["--checkpoint", str(tiny_checkpoint), "--input", str(src), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    chunks = [json.loads(l) for l in lines if l.startswith("{")]
    num = -(-np.load(src).shape[0] // 10)
    assert [c["t"] for c in chunks if "t" in c] == list(range(num))
    assert any("p50" in l and "p95" in l for l in lines)
    record = json.loads(out.read_text())
    assert record["meta"]["causal"] is True and len(record["tokens"]) == num


def test_causal_training_sample_and_fps_check(model_cfg, raw):
    _, cfg = model_cfg
    data = dataclasses.replace(cfg.data, causal=True, max_frames=40)
    sample = make_sample(raw, data, np.random.default_rng(3))
    c, length = sample["frame_mask"].shape
    assert sample["x"].shape[:2] == (c, length) and sample["unit"].shape == (c, length)
    assert np.isfinite(sample["x"]).all() and sample["num_frames"] <= 48   # cropped to 40, warped by <= 1.2x
    with pytest.raises(DataError, match="source_fps"):
        make_sample(raw, dataclasses.replace(data, source_fps=25))


def test_causal_lowpass_in_pieces_and_a_hand_coming_into_view(raw):
    whole, _, _ = causal_clean(raw, 0.3, lowpass_sigma=2.0)
    cleaner, parts, i = CausalCleaner(0.3, 2.0), [], 0
    for n in np.random.default_rng(5).integers(0, 9, size=30):
        parts.append(cleaner.push(raw[i:i + n]))
        i += n
    parts += [cleaner.push(raw[i:]), cleaner.flush()]
    np.testing.assert_array_equal(concat_frames(parts).xy, whole.xy)
    sharp, _, _ = causal_clean(raw, 0.3)
    hand = list(kp.LEFT_HAND)      # first seen at frame 25: its filter memory starts there, not at 0
    # (the angle differs a little: it is measured on the smoothed shoulders)
    np.testing.assert_allclose(whole.xy[25, hand], sharp.xy[25, hand], atol=2.0)


@pytest.fixture(scope="module")
def context_model(synth_root, tmp_path_factory, one_thread):
    """A tiny model with temporal context, trained in the causal mode (2 epochs)."""
    from src.train.loop import train
    from tests.conftest import tiny_config

    cfg = tiny_config(synth_root, tmp_path_factory.mktemp("ctx"), "model.context=previous", "data.causal=true")
    return load_tokenizer(train(cfg) / "ckpt_last.pt")


def test_context_model_streams_as_it_exports(context_model, raw):
    """The codes of a model whose chunks depend on the previous decoded chunk: stream in pieces
    == the causal offline path == the export's closed-loop tokenize of the causal sample."""
    from src.inference import tokenize

    model, cfg = context_model
    assert model.uses_context and cfg.data.causal
    sample = {**make_sample(raw, dataclasses.replace(cfg.data, max_frames=0)), "name": "x"}
    offline, _ = causal_codes(model, sample)
    pieces, _ = stream_codes(StreamingTokenizer(model, cfg), raw, [3, 0, 11, 1, 7, 0, 9])
    np.testing.assert_array_equal(pieces, offline)
    np.testing.assert_array_equal(tokenize(model, [sample])[0].codes, offline)


@pytest.mark.parametrize("setting", ["thresholds", "hand_codes"])
def test_adaptive_depth_streams_as_it_exports(context_model, raw, setting):
    """Adaptive depth is decided while coding: the stream, the causal offline path and the
    export's tokenize drop the same levels, and each chunk's context is the pose decoded from
    the codes kept, so later chunks follow from what was dropped."""
    from src.inference import set_adaptive_depth, tokenize

    model, cfg = context_model
    sample = {**make_sample(raw, dataclasses.replace(cfg.data, max_frames=0)), "name": "x"}
    full = tokenize(model, [sample])[0]
    t = float(np.median(full.residuals[:, 1:4, 0]))   # LH, RH, B after their first level
    export = (dict(adaptive_depth=True, depth_threshold=t) if setting == "thresholds"
              else dict(hand_codes=3))               # 2 levels per hand: (1, 2) or (2, 1)
    adaptive = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, **export))
    try:
        pieces, _ = stream_codes(StreamingTokenizer(model, adaptive), raw, [3, 0, 11, 1, 7, 0, 9])
        offline, _ = causal_codes(model, sample)
        exported = tokenize(model, [sample])[0].codes
    finally:
        set_adaptive_depth(model, cfg)
    np.testing.assert_array_equal(pieces, offline)
    np.testing.assert_array_equal(exported, offline)
    dropped = (full.codes >= 0) & (offline < 0)
    assert dropped.any() and (offline[..., 1:4, 1] >= 0).any()      # some second levels dropped, some kept
    if setting == "hand_codes":
        assert ((offline[:, 1:3] >= 0).sum((1, 2)) == 3).all()
    np.testing.assert_array_equal(tokenize(model, [sample])[0].codes, full.codes)   # reset: every level again
