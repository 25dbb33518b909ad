"""The CPU capability check: what it detects agrees with torch and oneDNN, and both answers can be
forced on any machine, so an AVX-512 CI also proves the AVX2 path."""
from __future__ import annotations

import pytest
import torch

from src import hardware
from src.hardware import FORCE_ENV, bf16_supported, cpu_caps, detected, resolve_precision


def test_detection_agrees_with_torch_and_onednn():
    caps = detected()
    assert caps.isa == torch.backends.cpu.get_cpu_capability()
    assert ("avx2" in caps.flags) == torch.cpu._is_avx2_supported()
    assert not torch.cpu._is_avx512_bf16_supported() or "avx512_bf16" in caps.flags
    assert not caps.bf16 or caps.prepack   # bf16 is only chosen where oneDNN's bf16 path runs
    weight = torch.ones(8, 8, dtype=torch.bfloat16)
    if caps.prepack:
        torch.ops.mkldnn._reorder_linear_weight(weight, 2)
    elif torch.backends.mkldnn.is_available():
        with pytest.raises(RuntimeError, match="bf16 path needs"):
            torch.ops.mkldnn._reorder_linear_weight(weight, 2)


def test_bf16_flags_decide_the_answer(monkeypatch):
    """bf16 is chosen only with a bf16 flag (AMX, AVX512-BF16, AVX-NE-CONVERT) and a running oneDNN path."""
    monkeypatch.delenv(FORCE_ENV, raising=False)
    cases = [({"avx2", "fma"}, True, False), ({"avx2", "avx512f", "avx512bw"}, True, False),
             ({"avx2", "avx512f", "avx512_bf16"}, True, True), ({"amx_tile", "amx_bf16"}, True, True),
             ({"avx2", "avx_ne_convert"}, True, True), ({"avx2", "avx512_bf16"}, False, False)]
    for flags, prepack, want in cases:
        detected.cache_clear()
        monkeypatch.setattr(hardware, "_cpuinfo", lambda flags=flags: ("Test CPU", set(flags)))
        monkeypatch.setattr(hardware, "_torch_flags", lambda: set())
        monkeypatch.setattr(hardware, "_prepack_runs", lambda prepack=prepack: prepack)
        caps = cpu_caps()
        assert caps.bf16 == want, flags
        assert set(caps.flags) == flags & set(hardware._FLAGS)
        assert caps.describe().startswith(f"Test CPU ({caps.isa}; ") and caps.describe().endswith(
            f"bf16 {'yes' if want else 'no'})")
    detected.cache_clear()


@pytest.mark.parametrize("forced", ["0", "1"])
def test_forced_answer(monkeypatch, forced):
    monkeypatch.setenv(FORCE_ENV, forced)
    caps = cpu_caps()
    assert caps.bf16 == (forced == "1") and bf16_supported("cpu") == (forced == "1")
    assert caps.prepack == (forced == "1" and detected().prepack)   # forced on: prepacked only where it runs
    assert (caps.name, caps.flags) == (detected().name, detected().flags)


def test_resolve_precision_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "0")
    with pytest.warns(UserWarning, match=r"^export: this CPU has no bf16 matmul in hardware \(.*\); running in fp32"):
        assert resolve_precision("bf16", "cpu", "export") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setenv(FORCE_ENV, "1")
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be fp32 or bf16, got 'fp16'"):
        resolve_precision("fp16")


def test_a_bad_forced_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "yes")
    with pytest.raises(ValueError, match=f"{FORCE_ENV} must be 0 or 1, got 'yes'"):
        cpu_caps()


def test_cli_prints_a_fallback_as_one_line(monkeypatch, capsys):
    """Under a command a warning is one ``warning:`` line, without Python's source line."""
    import warnings

    from src.cli import run

    monkeypatch.setenv(FORCE_ENV, "0")
    before = warnings.showwarning
    try:
        assert run(lambda: resolve_precision("bf16", "cpu", "stream in bf16") and 0) == 0
    finally:
        warnings.showwarning = before
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: stream in bf16: this CPU has no bf16"), err
