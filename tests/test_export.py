"""Token export pipeline and the export / viz commands, on the tiny checkpoint.

A hand-made root holds a static sequence (one frame repeated), a 4-frame one, a moving
one and a name without a pose file, so each export property has a sequence that shows it.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from src.commands.infer import export_tokens as export_cmd
from src.commands.viz import recon as recon_cmd
from src.commands.viz import tokens as tokens_cmd
from src.config import ConfigError
from src.data.dataset import PoseDataset
from src.data import keypoints as kp
from src.data.keypoints import SCORED_POINTS, STREAM_NAMES, STREAM_SLICES
from src.inference import load_tokenizer, parse_levels, tokenize
from src.tokens import SEP, count_codes, count_tokens, read_jsonl, rle_decode, template_to_entries, validate_record
from src.pipelines.export import export_config, export_tokens, llm_paths
from src.tokens.select import unchanged_chunks
from src.tokens.sequence import TokenSettings, sequence_record
from src.viz import skeleton, token_report
from src.viz.compare import reconstruct
from src.viz.token_report import record_code_counts

SPEC_KEYS = {"video_name", "fps", "chunk_len", "tokens", "rle", "template", "meta", "text"}
META_KEYS = {"checkpoint", "codebook_size", "num_levels", "id_scheme", "num_chunks", "adaptive_depth",
             "rle_threshold", "precision"}
TEXTS = {"static": "a static signer", "short": "four frames", "moving": "hands move", "ghost": "no pose file"}
MOVING_FRAMES = 24  # 3 chunks, the last one padded


@pytest.fixture(scope="module")
def root(synth_root, tmp_path_factory) -> Path:
    """val = static (60 frames = 6 full chunks), short (4 frames), moving, ghost (no .npy)."""
    src = np.load(next(iter(sorted((synth_root / "frames_512x512").glob("*.npy")))))
    root = tmp_path_factory.mktemp("export_root")
    (root / "frames_512x512").mkdir()
    arrays = {"static": np.repeat(src[20:21], 60, axis=0), "short": src[:4], "moving": src[:MOVING_FRAMES]}
    for name, a in arrays.items():
        np.save(root / "frames_512x512" / f"{name}.npy", a.astype(np.float32))
    notes = {n: {"text": t, "gloss": t.upper(), "num_frames": len(arrays.get(n, [])), "signer": 0}
             for n, t in TEXTS.items()}
    (root / "annotations.json").write_text(json.dumps(notes))
    (root / "split_files.json").write_text(json.dumps(
        {"train": ["moving"], "val": ["static", "short", "moving", "ghost"], "test": []}))
    return root


@pytest.fixture(scope="module")
def model_cfg(tiny_checkpoint, root):
    model, cfg = load_tokenizer(tiny_checkpoint)
    return model, export_config(cfg, root=str(root))


def run_export(model_cfg, *overrides: str) -> tuple[dict[str, dict], object, list]:
    model, cfg = model_cfg
    records, stats, failures = export_tokens(model, export_config(cfg, overrides=overrides), "val",
                                             checkpoint="ck.pt", progress=False)
    return {r["video_name"]: r for r in records}, stats, failures


@pytest.fixture(scope="module")
def plain(model_cfg) -> dict[str, dict]:
    """Records without RLE: every chunk's codes, the reference the others decode to."""
    return run_export(model_cfg, "export.enable_rle=false")[0]


@pytest.fixture(scope="module")
def lossless(model_cfg):
    return run_export(model_cfg)


def explicit(entries: list[dict], stream: str) -> list[bool]:
    """Per chunk: are the stream's codes written out (not NC, not inside a run)?"""
    return [stream in e and isinstance(e[stream][0], int) for e in entries]


def test_export_records_follow_the_spec(lossless, plain, tiny_checkpoint):
    records, stats, failures = lossless
    assert sorted(records) == ["moving", "short", "static"]
    assert failures == [("ghost", "no pose file")]
    assert (stats.attempted, stats.exported) == (4, 3)
    levels, k = plain["moving"]["meta"]["num_levels"], plain["moving"]["meta"]["codebook_size"]
    for name, rec in records.items():
        validate_record(rec, levels, k)
        assert set(rec) == SPEC_KEYS and META_KEYS <= set(rec["meta"])
        assert (rec["fps"], rec["chunk_len"], rec["rle"], rec["text"]) == (30, 10, True, TEXTS[name])
        assert rec["meta"]["num_chunks"] == len(rec["tokens"]) == -(-rec["meta"]["num_frames"] // 10)
        assert template_to_entries(rec["template"], k) == rec["tokens"]
        assert rle_decode(rec["tokens"]) == rle_decode(plain[name]["tokens"])
    assert stats.chunks == sum(len(r["tokens"]) for r in records.values())
    assert stats.tokens == sum(count_tokens(r["tokens"]) for r in records.values())
    per_stream = plain["moving"]["meta"]["codes_per_stream"]
    assert stats.codes == stats.chunks * sum(per_stream.values()) and per_stream["F"] < levels
    for rec in plain.values():  # each stream has its own number of codes per chunk
        assert all(len(c) == per_stream[s] for s, chunks in rle_decode(rec["tokens"]).items() for c in chunks)


def test_static_sequence_compresses_and_decodes_to_model_codes(lossless, plain):
    rec, ref = lossless[0]["static"], plain["static"]
    codes = rle_decode(ref["tokens"])
    assert all(chunk == codes[s][0] for s in STREAM_NAMES for chunk in codes[s])  # same input, same codes
    assert count_tokens(rec["tokens"]) < 0.7 * count_codes(codes)
    assert rle_decode(rec["tokens"]) == codes
    assert all(rec["tokens"][1][s] == ["NC", 5] for s in STREAM_NAMES)


def test_lossless_nc_exactly_where_codes_repeat(lossless, plain):
    for name, rec in lossless[0].items():
        codes = rle_decode(plain[name]["tokens"])
        for s in STREAM_NAMES:
            changed = [True] + [codes[s][t] != codes[s][t - 1] for t in range(1, len(codes[s]))]
            assert explicit(rec["tokens"], s) == changed, (name, s)


def test_all_changing_codes_get_no_nc():
    codes = np.arange(8 * 5 * 2).reshape(8, 5, 2) % 64  # every chunk differs from the previous
    settings = TokenSettings(30, 10, 64, 2, max_run=4, max_chunks=16)
    rec, counts = sequence_record("x", codes, settings, {})
    assert all(explicit(rec["tokens"], s) == [True] * 8 for s in STREAM_NAMES)
    assert counts["tokens"] == counts["codes"] == 8 * 5 * 2
    assert "NC" not in rec["template"]


def test_short_sequence_is_one_chunk(lossless):
    rec = lossless[0]["short"]
    assert rec["meta"]["num_frames"] == 4 and rec["meta"]["num_chunks"] == 1
    assert [set(e) for e in rec["tokens"]] == [{"t", *STREAM_NAMES}]
    assert re.fullmatch(r"<T0>(<[A-Z]+:[a-e]\d+>)+", rec["template"])


def test_too_long_sequences_fail_alone(model_cfg):
    records, stats, failures = run_export(model_cfg, "export.max_chunks=2")
    assert list(records) == ["short"] and stats.exported == 1 and stats.attempted == 4
    reasons = dict(failures)
    assert set(reasons) == {"static", "moving", "ghost"}
    assert "max_chunks=2" in reasons["static"] and "max_chunks=2" in reasons["moving"]


def sample_poses(model_cfg) -> dict[str, dict]:
    _, cfg = model_cfg
    ds = PoseDataset(dataclasses.replace(cfg.data, max_frames=0), "val", names=["static", "short", "moving"])
    return {n: ds[i] for i, n in enumerate(ds.names)}


def pose_distance(sample: dict, stream: str, a: int, b: int) -> float:
    sl, seen = STREAM_SLICES[stream], sample["conf"] & SCORED_POINTS
    both = seen[a, :, sl] & seen[b, :, sl]
    return float(np.linalg.norm(sample["x"][a, :, sl] - sample["x"][b, :, sl], axis=-1)[both].mean())


def test_thresholded_rle_holds_anchor_codes(model_cfg, lossless, plain):
    threshold = 0.4
    records, stats, _ = run_export(model_cfg, f"export.rle_threshold={threshold}")
    samples = sample_poses(model_cfg)
    # the chunks decoded, as export compares them too
    poses_out = {name: {**sample, "x": tokenize(model_cfg[0], [{**sample, "name": name}])[0].recon}
                 for name, sample in samples.items()}
    extra = 0
    for name, rec in records.items():
        validate_record(rec, 2, 64)
        assert rec["meta"]["rle_threshold"] == threshold
        codes, decoded = rle_decode(plain[name]["tokens"]), rle_decode(rec["tokens"])
        for s in STREAM_NAMES:
            shown, before = explicit(rec["tokens"], s), explicit(lossless[0][name]["tokens"], s)
            assert sum(shown) <= sum(before)
            extra += sum(before) - sum(shown)
            anchor = 0
            for t in range(len(shown)):
                if shown[t]:
                    anchor = t
                    assert decoded[s][t] == codes[s][t]
                    continue
                assert decoded[s][t] == codes[s][anchor]  # NC holds the anchor's codes
                assert (codes[s][t] == codes[s][anchor] or pose_distance(samples[name], s, t, anchor) < threshold
                        or pose_distance(poses_out[name], s, t, anchor) < threshold)
    assert extra > 0 and stats.tokens < lossless[1].tokens


def test_unchanged_chunks_compare_to_the_anchor_not_the_previous_chunk():
    x = np.zeros((8, 10, kp.NUM_STREAM_POINTS, 2), np.float32)
    x[..., 0] += 0.4 * np.arange(8)[:, None, None]          # drift of 0.4 per chunk, along x
    conf = np.ones((8, 10, kp.NUM_STREAM_POINTS), bool)
    flags = unchanged_chunks(x, conf, threshold=1.0)
    assert all(f == [False, True, True, False, True, True, False, True] for f in flags.values())
    # Codes equal to the anchor's keep chunk 3 NC in rle_encode, so the anchor stays at 0.
    codes = {s: [[1], [2], [3], [1], [5], [6], [7], [8]] for s in STREAM_NAMES}
    assert unchanged_chunks(x, conf, 1.0, codes)["LH"] == [False, True, True, False, False, True, True, False]
    conf[2] = False                                        # nothing seen: never "unchanged"
    assert unchanged_chunks(x, conf, 1.0)["F"][:3] == [False, True, False]


def test_a_chunk_whose_decoded_pose_holds_is_unchanged_despite_input_noise():
    """Input jitter far over the threshold, decoded poses the same: unchanged by the decoded
    test alone; either test holding suffices; neither holding leaves every chunk explicit."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2.0, (4, 10, kp.NUM_STREAM_POINTS, 2)).astype(np.float32)
    conf = np.ones((4, 10, kp.NUM_STREAM_POINTS), bool)
    still = np.zeros_like(x)
    assert unchanged_chunks(x, conf, 0.5)["LH"] == [False] * 4
    assert unchanged_chunks(x, conf, 0.5, decoded=still)["LH"] == [False, True, True, True]
    moving = still + np.arange(4, dtype=np.float32)[:, None, None, None]
    assert unchanged_chunks(still, conf, 0.5, decoded=moving)["LH"] == [False, True, True, True]
    assert unchanged_chunks(x, conf, 0.5, decoded=moving)["LH"] == [False] * 4


def test_adaptive_depth(model_cfg, lossless):
    full = lossless[0]
    same, stats0, _ = run_export(model_cfg, "export.adaptive_depth=true", "export.depth_threshold=0")
    assert [r["tokens"] for r in same.values()] == [r["tokens"] for r in full.values()]
    assert stats0.codes == lossless[1].codes
    coarse, stats, _ = run_export(model_cfg, "export.adaptive_depth=true", "export.depth_threshold=1e9")
    assert stats.per_chunk(stats.codes) == len(STREAM_NAMES) < lossless[1].per_chunk(lossless[1].codes)
    for rec in coarse.values():
        assert rec["meta"]["adaptive_depth"] is True
        assert all(len(c) == 1 for chunks in rle_decode(rec["tokens"]).values() for c in chunks)


def test_bf16_export_is_recorded_and_mostly_agrees_with_fp32(model_cfg, plain, bf16_on):
    """bf16 forced on (emulated on CPUs without bf16 hardware): recorded in the meta, and the
    codes mostly those of fp32 (the quantiser stays fp32; only the encoder runs in bf16)."""
    bf16, stats, _ = run_export(model_cfg, "export.precision=bf16", "export.enable_rle=false")
    assert stats.exported == 3
    agree = total = 0
    for name, rec in bf16.items():
        assert rec["meta"]["precision"] == "bf16" and plain[name]["meta"]["precision"] == "fp32"
        assert "precision_requested" not in rec["meta"]
        for a, b in zip(rle_decode(rec["tokens"]).values(), rle_decode(plain[name]["tokens"]).values()):
            same = np.array(a) == np.array(b)
            agree, total = agree + int(same.sum()), total + same.size
    assert agree / total >= 0.95, agree / total


def test_bf16_export_without_hardware_runs_fp32_and_says_so(model_cfg, plain, monkeypatch):
    """bf16 forced off (as on an AVX2-only CPU): one warning, fp32's codes, and the meta records
    what ran and what was asked."""
    from src.hardware import FORCE_ENV

    monkeypatch.setenv(FORCE_ENV, "0")
    with pytest.warns(UserWarning, match="export.precision=bf16: this CPU has no bf16 matmul"):
        got, _, _ = run_export(model_cfg, "export.precision=bf16", "export.enable_rle=false")
    for name, rec in got.items():
        assert (rec["meta"]["precision"], rec["meta"]["precision_requested"]) == ("fp32", "bf16")
        assert rec["tokens"] == plain[name]["tokens"]


def test_export_config_allows_only_export_and_data_location(model_cfg):
    _, cfg = model_cfg
    with pytest.raises(ConfigError, match="model.width"):
        export_config(cfg, overrides=["model.width=8"])
    changed = export_config(cfg, overrides=["export.max_run=4", "data.pose_dir=x"], root="elsewhere")
    assert (changed.export.max_run, changed.data.pose_dir, changed.data.root) == (4, "x", "elsewhere")
    assert cfg.export.max_run == 32 and cfg.data.pose_dir == "frames_512x512"  # input untouched


def test_export_command_to_llm(tiny_checkpoint, root, tmp_path, capsys):
    out = tmp_path / "exp" / "tokens.jsonl"
    rc = export_cmd.main(["--checkpoint", str(tiny_checkpoint), "--root", str(root), "--num-samples", "0",
                          "--out", str(out), "--to-llm", "export.rle_threshold=0.2"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "exported 3/4 sequences" in printed and "(75.0%)" in printed and "ghost: no pose file" in printed
    assert re.search(r"before RLE, [\d.]+ after \(compression -?[\d.]+%, [\d.]+x", printed)
    records = read_jsonl(out)
    assert [r["video_name"] for r in records] == ["static", "short", "moving"]
    assert all(r["meta"]["checkpoint"] == str(tiny_checkpoint) for r in records)
    vocab_path, llm_path = llm_paths(out)
    vocab = set(json.loads(vocab_path.read_text()))
    assert SEP in vocab
    assert not any(re.fullmatch(r"<T\d+>", t) for t in vocab)  # fixed size: no chunk indices
    lines = read_jsonl(llm_path)
    assert [line["video_name"] for line in lines] == [r["video_name"] for r in records]
    for line, rec in zip(lines, records):
        prefix, text = line["input"].split(SEP)
        assert set(re.findall(r"<[^>]+>", prefix)) <= vocab
        assert (prefix, text) == (re.sub(r"<T\d+>", "<T>", rec["template"]), rec["text"]) == (line["prefix"], line["text"])
        assert template_to_entries(prefix, rec["meta"]["codebook_size"]) == rec["tokens"]
        start, end = line["loss_mask"]["text_span"]
        assert line["input"][start:end] == rec["text"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["tokens.jsonl", "tokens.llm.jsonl", "tokens.vocab.json"]


def test_corrupt_checkpoint_exits_2(tmp_path, root, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    assert export_cmd.main(["--checkpoint", str(bad), "--root", str(root), "--out", str(tmp_path / "t.jsonl")]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "t.jsonl").exists()
    assert recon_cmd.main(["--checkpoint", str(tmp_path / "missing.pt"), "--root", str(root)]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_viz_recon_unknown_name_exits_2(tiny_checkpoint, root, tmp_path, capsys):
    rc = recon_cmd.main(["--checkpoint", str(tiny_checkpoint), "--root", str(root), "--name", "nobody",
                         "--out", str(tmp_path / "r.gif")])
    err = capsys.readouterr().err
    assert rc == 2 and "nobody" in err and "split_files.json" in err
    assert not list(tmp_path.iterdir())


def test_reconstruct_maps_the_original_back_to_the_file(model_cfg, root):
    model, cfg = model_cfg
    rec = reconstruct(model, cfg, "moving", "val")
    raw = np.load(root / "frames_512x512" / "moving.npy")
    rows = np.r_[1:12, 24:134]                              # hips, legs and feet are not in any stream
    seen = raw[:, rows, 2] >= cfg.data.conf_thresh
    assert rec.original.shape == rec.recon.shape == raw.shape
    np.testing.assert_allclose(rec.original[:, rows, :2][seen], raw[:, rows, :2][seen], atol=1e-3)
    assert ((rec.original[:, rows, 2] > 0) == seen).all()
    assert (rec.original[:, 0, :2] == raw[0, 0, :2]).all()
    assert set(rec.mpjpe_px) == set(STREAM_NAMES) and all(v > 0 for v in rec.mpjpe_px.values())


def test_viz_recon_gif_and_png(tiny_checkpoint, root, tmp_path, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--root", str(root), "--name", "moving"]
    assert recon_cmd.main([*args, "--out", str(tmp_path / "r.gif")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"MPJPE px per stream: F [\d.]+, LH [\d.]+, RH [\d.]+, B [\d.]+, FB [\d.]+", printed)
    frames = iio.imread(tmp_path / "r.gif", index=None)
    assert frames.shape[0] == MOVING_FRAMES
    assert recon_cmd.main([*args, "--out", str(tmp_path / "r.gif"), "--frame", "3", "--stream", "FB"]) == 0
    assert str(tmp_path / "r.png") in capsys.readouterr().out
    hw = tuple(round(v * skeleton._PNG_DPI) for v in skeleton._FIGSIZE[::-1])
    assert iio.imread(tmp_path / "r.png").shape[:2] == hw


def test_record_code_counts_decode_nc(lossless):
    records = list(lossless[0].values())
    counts = record_code_counts(records)
    chunks = sum(len(r["tokens"]) for r in records)
    assert set(counts) == set(STREAM_NAMES)
    per_stream = records[0]["meta"]["codes_per_stream"]
    assert all(c.shape == (2, 64) and (c.sum(1) == chunks * (np.arange(2) < per_stream[s])).all()
               for s, c in counts.items())
    static = rle_decode(lossless[0]["static"]["tokens"])["LH"][0]
    assert counts["LH"][0, static[0]] >= 6                 # the static run counts 6 times


def test_viz_tokens_from_file_and_checkpoint(tiny_checkpoint, root, lossless, tmp_path, capsys, monkeypatch):
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text("".join(json.dumps(r) + "\n" for r in lossless[0].values()))
    assert tokens_cmd.main(["--tokens", str(tokens), "--out", str(tmp_path / "a"), "--max-records", "2"]) == 0
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert written == ["codebook_usage.png", "timeline_short.png", "timeline_static.png"]
    assert all(iio.imread(tmp_path / "a" / n).ndim == 3 for n in written)
    assert "codebook_usage.png" in capsys.readouterr().out
    # --checkpoint tokenizes first; the usage figure (seconds to draw) is checked above, so
    # here only the counts it would be drawn from.
    seen = {}
    monkeypatch.setattr(token_report, "plot_codebook_usage",
                        lambda counts, out, title, coded: seen.update(counts=counts, coded=coded) or Path(out))
    assert tokens_cmd.main(["--checkpoint", str(tiny_checkpoint), "--root", str(root), "--num-samples", "1",
                            "--out", str(tmp_path / "b")]) == 0
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["timeline_static.png"]
    assert all((c.sum(1)[:1] == 6).all() and c.sum() in (6, 12) for c in seen["counts"].values())
    assert seen["coded"] == {"F": 1, "LH": 2, "RH": 2, "B": 2, "FB": 1}   # the records' codes per stream
    assert "exported 1/1 sequences" in capsys.readouterr().out
    assert tokens_cmd.main(["--tokens", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "c")]) == 2


def test_load_tokenizer_codes_fewer_levels_on_request(tiny_checkpoint):
    """A lower rate from the same weights (the rate-distortion report's points): streams
    asked for one level emit one code; more levels than trained is a one-line error."""
    model, cfg = load_tokenizer(tiny_checkpoint, stream_levels=parse_levels("LH=1,B=1"))
    assert cfg.model.rvq.stream_codes("LH") == 1 and cfg.model.rvq.stream_codes("RH") == 2
    x = torch.zeros(3, 10, kp.NUM_STREAM_POINTS, 2)
    codes = model.encode(x, torch.ones(x.shape[:3], dtype=torch.bool))
    assert (codes[:, STREAM_NAMES.index("LH"), 1] == -1).all() and (codes[:, STREAM_NAMES.index("RH")] >= 0).all()
    with pytest.raises(ConfigError, match="stream LH can code 1..2 levels, not 3"):
        load_tokenizer(tiny_checkpoint, stream_levels={"LH": 3})
    with pytest.raises(ConfigError, match="--levels"):
        parse_levels("XX=1")


def test_eval_and_export_agree_on_token_rates_and_codebook_use(model_cfg):
    """One definition per figure: eval-rvq's lossless and thresholded token rates are what the
    export writes with that RLE, and its codebook use is the export's raw code counts."""
    from src.metrics.codebook_health import usage_stats
    from src.metrics.report import evaluation_report, token_rates

    model, cfg = model_cfg
    cfg = export_config(cfg, overrides=["export.rle_threshold=0.2"])
    report = evaluation_report(model, cfg, "val", torch.device("cpu"), batch_size=2, progress=False)
    tokens = report["result"]["tokens"]
    _, lossless, _ = run_export(model_cfg)
    _, thresholded, _ = run_export(model_cfg, "export.rle_threshold=0.2")
    assert tokens["tokens_per_chunk_rle"] == pytest.approx(lossless.per_chunk(lossless.tokens))
    assert tokens["tokens_per_chunk_rle_thresholded"] == pytest.approx(thresholded.per_chunk(thresholded.tokens))
    assert tokens["tokens_per_chunk_rle_thresholded"] < tokens["tokens_per_chunk_rle"]  # the static hold
    assert "lossless RLE" in token_rates(tokens) and "threshold 0.2" in token_rates(tokens)
    for stream, counts in thresholded.raw_code_counts.items():
        for level, row in enumerate(counts):
            assert usage_stats(row)["used"] == report["codebook"][stream][f"l{level}"]["used"], (stream, level)


def test_usage_picture_says_which_codes_it_counts(lossless):
    records = list(lossless[0].values())
    assert token_report.usage_source(records).startswith("raw codes")
    held = [dict(r, meta={**r["meta"], "rle_threshold": 0.2}) for r in records]
    assert "RLE threshold 0.2" in token_report.usage_source(held)


def test_eval_strict_exit_status_follows_the_checks(tiny_checkpoint, synth_root, tmp_path, capsys):
    from src.commands.eval.rvq import main as eval_main

    args = ["--checkpoint", str(tiny_checkpoint), "--root", str(synth_root), "--threads", "1"]
    assert eval_main([*args, "--out", str(tmp_path / "a.json")]) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    failed = [name for name, c in report["checks"].items() if not c["pass"]]
    out = capsys.readouterr().out
    assert f"checks: {len(report['checks']) - len(failed)} of {len(report['checks'])} pass" in out
    assert failed, "a 2-epoch tiny model is expected to miss some checks"
    assert eval_main([*args, "--strict", "--out", str(tmp_path / "b.json")]) == 1
    assert (tmp_path / "b.json").is_file() and failed[0] in capsys.readouterr().err
