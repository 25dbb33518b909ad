"""What this machine's CPU can do, asked once: the one answer every bf16 path follows.

bf16 is used on a CPU only where it multiplies bf16 matrices in hardware (AMX, AVX512-BF16 or
AVX-NE-CONVERT). Elsewhere torch emulates bf16 several times slower than fp32, and oneDNN's
prepacked bf16 linear refuses to run at all (AVX2-only CPUs), so a bf16 request falls back to
fp32 with one warning. ``SIGNSTREAM_CPU_BF16=0`` (or ``1``) forces the answer: the tests run
both on any machine; forced on where the hardware lacks it, bf16 runs emulated and unpacked.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

FORCE_ENV = "SIGNSTREAM_CPU_BF16"

# /proc/cpuinfo flags that decide a fast path here, in the order they are printed
_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
          "avx_ne_convert", "amx_tile", "amx_bf16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx_ne_convert")   # AMX tiles come with bf16


@dataclass(frozen=True)
class CpuCaps:
    """The CPU's name, torch's kernel level, the flags that matter here, and the two answers."""

    name: str
    isa: str                   # torch's CPU kernel level: "AVX2", "AVX512", ...
    flags: tuple[str, ...]     # those of ``_FLAGS`` this CPU has
    bf16: bool                 # bf16 matmuls in hardware: bf16 is used where asked
    prepack: bool              # oneDNN's prepacked bf16 linear runs on this CPU

    def describe(self) -> str:
        """One line for logs and the bench: name, kernel level, flags, the bf16 answer."""
        flags = " ".join(self.flags) or "none of " + " ".join(_FLAGS)
        return f"{self.name} ({self.isa}; {flags}; bf16 {'yes' if self.bf16 else 'no'})"


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and flags from /proc/cpuinfo (Linux); elsewhere the platform's name."""
    name, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    return name, flags


def _torch_flags() -> set[str]:
    """The same flags from torch's own probes (where /proc/cpuinfo is missing or incomplete)."""
    probes = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
              "avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    return {flag for flag, name in probes.items() if getattr(torch.cpu, name, lambda: False)()}


def _prepack_runs() -> bool:
    """Whether oneDNN's prepacked bf16 linear runs here: tried on a tiny layer (it raises on
    CPUs without AVX512-BW/VL/DQ or AVX-NE-CONVERT)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        weight = torch.ones(8, 8, dtype=torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 2)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8, dtype=torch.bfloat16), packed, None, "none", [], "")
        return bool(torch.all(out == 8))
    except RuntimeError:
        return False


@functools.cache
def detected() -> CpuCaps:
    """This CPU as detected (cached: the probes run once per process)."""
    name, flags = _cpuinfo()
    flags |= _torch_flags()
    prepack = _prepack_runs()
    bf16 = prepack and any(f in flags for f in _BF16_FLAGS)
    return CpuCaps(name, torch.backends.cpu.get_cpu_capability(), tuple(f for f in _FLAGS if f in flags),
                   bf16, prepack)


def cpu_caps() -> CpuCaps:
    """This CPU, with ``SIGNSTREAM_CPU_BF16`` (``0``/``1``) forcing the bf16 answer."""
    caps, forced = detected(), os.environ.get(FORCE_ENV, "").strip()
    if forced not in ("", "0", "1"):
        raise ValueError(f"{FORCE_ENV} must be 0 or 1, got {forced!r}")
    if forced:
        caps = CpuCaps(caps.name, caps.isa, caps.flags, forced == "1", caps.prepack and forced == "1")
    return caps


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 is worth computing in on ``device`` (CUDA: the GPU supports it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_caps().bf16


def resolve_precision(precision: str, device: str | torch.device = "cpu", what: str = "bf16") -> str:
    """``precision`` if ``device`` can run it well, else ``fp32`` with one warning naming ``what``."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    if precision == "bf16" and not bf16_supported(device):
        warnings.warn(f"{what}: this CPU has no bf16 matmul in hardware ({cpu_caps().describe()}); "
                      "running in fp32 instead", stacklevel=2)
        return "fp32"
    return precision
