"""The bench command in --fast mode: every figure present, finite, positive and with its unit
in its key; the pack/per-file comparison ran on a synthetic root; FLOP counts cross-checked."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import pytest
import torch

from src.pipelines import bench
from src.commands.eval.bench import main as bench_main
from src.config import ModelConfig, RVQConfig
from src.hardware import FORCE_ENV, detected

SECTIONS = ("machine", "model", "flops", "streaming", "export", "data", "train", "targets")
# A number's key names its unit (or says it is a count of something).
UNITS = ("_ms", "_seconds", "_per_s", "_gflop", "_mflop", "_frac", "_mib", "_x", "_procs", "threads", "_cores",
         "chunks", "sequences", "frames", "steps", "repeats", "size", "width", "layers", "heads",
         "ratio", "dim", "levels", "params_m", "vectors")
# Figures that may legitimately be 0 (a fully dropped cache) or are not timings.
MAY_BE_ZERO = ("resident_frac",)


@pytest.fixture(scope="module", params=["0", "1"], ids=["bf16-off", "bf16-on"])
def report(request, tmp_path_factory) -> tuple[dict, dict, str]:
    """One --fast run with the CPU's bf16 answer forced off, and one forced on (on a CPU without
    bf16 hardware it then runs emulated): (the --json file, the JSON printed on stdout, stderr)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        mp.setenv(FORCE_ENV, request.param)
        assert bench_main(["--fast", "--json", str(out)]) == 0
    return json.loads(out.read_text()), json.loads(stdout.getvalue()), stderr.getvalue()


def bf16_on(report) -> bool:
    return report[0]["machine"]["cpu_bf16"]


def numbers(report: dict):
    for section, values in report.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    yield section, key, value


def test_stdout_is_the_json_file(report):
    written, printed, err = report
    assert written == printed
    assert "latency_ms_p50" in err  # the readable table goes to stderr


def test_every_section_and_figure(report):
    r = report[0]
    assert set(SECTIONS) <= set(r)
    assert r["fast"] is True
    assert {"latency_ms_p50", "latency_ms_p95", "latency_ms_p50_bf16"} <= set(r["streaming"])
    assert {"encoder_chunks_per_s_1thread", "encode_chunks_per_s_1thread", "encode_chunks_per_s_all_threads",
            "matmul_peak_gflop_per_s_1thread", "encoder_gflop_per_s_1thread", "encode_gflop_per_s_1thread",
            "encoder_peak_frac", "encode_peak_frac", "encode_chunks_per_s_1thread_bf16",
            "bf16_codes_equal_to_fp32_frac"} <= set(r["export"])
    assert {"step_ms_p50", "chunks_per_s", "peak_memory_mib", "step_ms_p50_1thread", "chunks_per_s_1thread"} <= set(r["train"])
    assert {"cpu_model", "cpu_flags", "cpu_bf16", "cpu_bf16_prepack", "cpu_cores_os", "cpu_cores_affinity",
            "torch_version", "default_threads"} <= set(r["machine"])
    assert r["machine"]["cpu_model"] == detected().name and r["machine"]["cpu_flags"] == " ".join(detected().flags)
    assert f"cpu: {detected().name} ({detected().isa};" in report[2]   # printed before the figures
    bf16 = [r["streaming"]["latency_ms_p50_bf16"], r["export"]["encode_chunks_per_s_1thread_bf16"],
            r["export"]["bf16_codes_equal_to_fp32_frac"], r["stream"]["stream_chunk_ms_p50_bf16"]]
    bf16_targets = [v for k, v in r["targets"].items() if "bf16" in k]
    other_targets = [v for k, v in r["targets"].items() if "bf16" not in k]
    assert all(isinstance(v, bool) for v in other_targets)
    if bf16_on(report):
        assert all(isinstance(v, float) and v > 0 for v in bf16)
        assert 0.0 <= r["export"]["bf16_codes_equal_to_fp32_frac"] <= 1.0
        assert all(isinstance(v, bool) for v in bf16_targets)
    else:   # every other figure still measured
        assert bf16 == [bench.UNSUPPORTED] * 4 and bf16_targets == [bench.UNSUPPORTED] * len(bf16_targets)
        assert r["stream"]["stream_chunk_ms_p50_bf16_compiled"] == bench.UNSUPPORTED


def test_stream_and_quantizer_figures(report):
    st, q = report[0]["stream"], report[0]["quantizer"]
    assert st["stream_chunk_ms_p50"] <= st["stream_chunk_ms_p95"]
    if bf16_on(report):
        assert st["stream_chunk_ms_p50_bf16"] <= st["stream_chunk_ms_p95_bf16"]
    assert 0 < st["preprocess_chunk_ms_p50"] < st["stream_chunk_ms_p95"]
    for tag in ("_compiled", "_bf16_compiled")[:1 + bf16_on(report)]:   # where torch.compile works (a C++ compiler)
        assert st[f"compile_seconds{tag}"] > 0
        if st[f"compiled{tag}"]:
            assert st[f"stream_chunk_ms_p50{tag}"] <= st[f"stream_chunk_ms_p95{tag}"]
        else:
            assert f"stream_chunk_ms_p50{tag}" not in st
    if "skipped" in q:
        assert "pip install vector-quantize-pytorch" in q["skipped"]
    else:
        assert q["speed_ratio_x"] == pytest.approx(q["vqpytorch_step_ms_p50"] / q["ours_step_ms_p50"])


def test_numbers_are_finite_positive_and_have_units(report):
    found = list(numbers(report[0]))
    assert len(found) > 30
    for section, key, value in found:
        assert math.isfinite(value), (section, key, value)
        assert value >= 0 if any(k in key for k in MAY_BE_ZERO) else value > 0, (section, key, value)
        assert any(u in key for u in UNITS), f"{section}.{key} does not name its unit"


def test_figures_are_consistent(report):
    r = report[0]
    s, e, f, t = r["streaming"], r["export"], r["flops"], r["train"]
    assert s["latency_ms_min"] <= s["latency_ms_p50"] <= s["latency_ms_p95"]
    assert s["threads"] == 1
    gflops = (f["encoder_mflop_per_chunk"] + f["quantizer_mflop_per_chunk"]) * e["encode_chunks_per_s_1thread"] / 1e3
    assert e["encode_gflop_per_s_1thread"] == pytest.approx(gflops)
    assert e["encode_peak_frac"] == pytest.approx(gflops / e["matmul_peak_gflop_per_s_1thread"])
    assert e["encode_chunks_per_s_1thread_at_peak"] == pytest.approx(
        e["encode_chunks_per_s_1thread"] / e["encode_peak_frac"])
    assert t["batch_chunks"] >= t["batch_sequences"]
    assert t["peak_memory_mib"] >= t["process_peak_rss_before_mib"]


def test_pack_and_per_file_ran_on_the_synthetic_root(report):
    d = report[0]["data"]
    assert d["sequences"] == bench.FAST.data_sequences
    for kind in ("per_file", "packed"):
        assert d[f"{kind}_load_cold_seq_per_s"] > 0 and d[f"{kind}_getitem_cold_seq_per_s"] > 0
        assert 0 <= d[f"{kind}_cold_resident_frac"] <= 1
    assert d["pack_speedup_load_cold_x"] == pytest.approx(
        d["packed_load_cold_seq_per_s"] / d["per_file_load_cold_seq_per_s"])


def test_flop_count_matches_torch_counter(report):
    f = report[0]["flops"]
    assert f["encoder_mflop_per_chunk_counted"] == pytest.approx(f["encoder_mflop_per_chunk"], rel=0.1)
    assert f["quantizer_mflop_per_chunk_counted"] == pytest.approx(f["quantizer_mflop_per_chunk"], rel=0.1)


@pytest.mark.parametrize("type_embedding, pool, linear_path", [
    ("add", "attention", False), ("concat", "attention", False),
    ("add", {"F": "attention", "LH": "flatten", "RH": "flatten", "B": "mean", "FB": "flatten"}, True)])
def test_flop_formula_on_the_default_model(type_embedding, pool, linear_path):
    """The default width-128 model (not trained: FLOPs do not depend on the weights)."""
    from src.models.tokenizer import SignTokenizer

    cfg = ModelConfig(type_embedding=type_embedding, pool=pool, linear_path=linear_path, rvq=RVQConfig())
    model = SignTokenizer(cfg, 10).eval()
    analytic, counted = bench.analytic_flops(cfg, 10), bench.counted_flops(model, torch.device("cpu"))
    assert counted["encoder"] == pytest.approx(analytic["encoder"], rel=0.1)
    assert counted["quantizer"] == pytest.approx(analytic["quantizer"], rel=0.01)
    if cfg == ModelConfig():  # 1.86M input projections (242 points) + 2 x 5 x 3.98M layers + 0.19M output
        assert analytic["encoder"] == pytest.approx(41.88e6, rel=1e-3)


def test_num_threads_restores():
    before = torch.get_num_threads()
    with bench.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def filesystem_type(path: Path) -> str:
    """The type of the file system holding ``path`` (the longest mount point above it in /proc/mounts)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            mount, fstype = line.split()[1:3]
            if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def test_cache_drop_evicts_a_file(tmp_path: Path):
    """The drop empties the page cache of a file, except on file systems that are the page cache."""
    if filesystem_type(tmp_path) in ("tmpfs", "ramfs") or not hasattr(os, "posix_fadvise"):
        pytest.skip(f"{tmp_path} is on {filesystem_type(tmp_path)}, whose pages cannot be dropped")
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(1 << 20))
    path.read_bytes()
    assert bench.resident_frac([path]) > 0
    assert bench.drop_page_cache([path])
    assert bench.resident_frac([path]) == 0


def test_thread_advice_only_when_one_thread_wins():
    busy = {"train": {"threads": 2, "chunks_per_s": 20.0, "chunks_per_s_1thread": 120.0},
            "export": {"encode_chunks_per_s_1thread": 300.0, "encode_chunks_per_s_all_threads": 500.0}}
    advice = bench.thread_advice(busy)
    assert "--threads 1" in advice and "training 6.0x" in advice and "export" not in advice
    idle = {"train": {"threads": 2, "chunks_per_s": 100.0, "chunks_per_s_1thread": 60.0}, "export": {}}
    assert bench.thread_advice(idle) is None
    assert bench.thread_advice({"train": {"threads": 1, "chunks_per_s": 1.0, "chunks_per_s_1thread": 9.0}}) is None
