"""What this CPU or GPU can do for a variant's number format, and the one-line verdict when the hardware explains
a cell's speed ("int8 on AVX2 without VNNI: expect at most 1.3x over fp32")."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

# The CPU flags (Linux /proc/cpuinfo names) that decide how int8, fp16 and bf16 math runs, weakest first.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's flags from /proc/cpuinfo; None where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def cpu_capabilities(flags: frozenset[str] | set[str] | None = None) -> dict[str, Any]:
    """The vector and low-precision instructions present (of CPU_FLAGS), and the int8 path they give, e.g.
    {"flags": [...], "int8": "AVX-512 VNNI", "fp16": "converted only (F16C)", "bf16": "emulated"}."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    if flags is None:
        return {"flags": None, "int8": "unknown", "fp16": "unknown", "bf16": "unknown"}
    return {"flags": [f for f in CPU_FLAGS if f in flags], "int8": _int8_path(flags), "fp16": _fp16_path(flags),
            "bf16": _bf16_path(flags)}


def _int8_path(flags: frozenset[str]) -> str:
    # strongest first: AMX tiles (amx_int8 needs amx_tile), AVX-512 VNNI, AVX-VNNI (256-bit), plain AVX2 (u8s8
    # products go through 16-bit intermediates that can saturate)
    if {"amx_int8", "amx_tile"} <= flags:
        return "AMX"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX-VNNI"
    return "AVX2 only" if "avx2" in flags else "no AVX2"


def _fp16_path(flags: frozenset[str]) -> str:
    if "avx512_fp16" in flags or {"amx_fp16", "amx_tile"} <= flags:
        return "native"
    return "converted only (F16C)" if "f16c" in flags else "emulated"


def _bf16_path(flags: frozenset[str]) -> str:
    return "native" if "avx512_bf16" in flags or {"amx_bf16", "amx_tile"} <= flags else "emulated"


def gpu_precisions(compute_capability: str) -> list[str]:
    """The precisions an NVIDIA GPU of this compute capability runs on tensor cores (or DP4A for int8)."""
    try:
        major, minor = (int(part) for part in compute_capability.split(".")[:2])
    except ValueError:
        return []
    cc = (major, minor)
    found = []
    if cc >= (7, 0):
        found.append("fp16")
    if cc >= (7, 5):
        found.append("int8")
    elif cc >= (6, 1):
        found.append("int8 (DP4A, no tensor cores)")
    if cc >= (8, 0):
        found += ["bf16", "tf32"]
    if cc >= (8, 9):
        found.append("fp8")
    return found


def _precision_of(steps: list[str]) -> str | None:
    """The number format a chain of optimization ids computes in: int8, fp16, bf16, or None (fp32)."""
    for step in steps:
        for precision in ("int8", "fp16", "bf16"):
            if step.startswith(precision):
                return precision
    return None


def verdict(steps: list[str], device: str, cpu: dict[str, Any] | None = None,
            compute_capability: str | None = None) -> str | None:
    """One line on what this hardware lets the chain's number format do, or None when the format is fp32 or the
    hardware is unknown. `steps` are the chain's optimization ids; `device` is the runtime's ("cpu" or "cuda")."""
    precision = _precision_of(steps)
    if precision is None:
        return None
    if device == "cuda":
        return _gpu_verdict(precision, compute_capability)
    cpu = cpu if cpu is not None else cpu_capabilities()
    path = cpu.get(precision)
    if precision == "int8":
        return {
            "AMX": "int8 on AMX: int8 matmuls run on tile units; expect the largest int8 gains on matmul-heavy models",
            "AVX-512 VNNI": "int8 on AVX-512 VNNI: an int8 dot product is one instruction; expect 2-4x over fp32 on "
                            "matmul-bound models",
            "AVX-VNNI": "int8 on AVX-VNNI (256-bit): expect up to about 2x over fp32 on matmul-bound models",
            "AVX2 only": "int8 on AVX2 without VNNI: expect at most 1.3x over fp32 (u8 x s8 products go through "
                         "16-bit steps)",
            "no AVX2": "int8 on a CPU without AVX2: expect int8 no faster than fp32",
        }.get(str(path))
    if path == "native":
        return f"{precision} on a CPU with native {precision} math: expect gains where memory traffic dominates"
    if path in ("converted only (F16C)", "emulated"):
        return (f"{precision} on a CPU without native {precision} math ({path}): expect it no faster than fp32, "
                "often slower; its use here is a smaller model")
    return None


def _gpu_verdict(precision: str, compute_capability: str | None) -> str | None:
    if not compute_capability:
        return None
    precisions = gpu_precisions(compute_capability)
    if precision in precisions:
        return f"{precision} on tensor cores (compute capability {compute_capability})"
    if precision == "int8" and "int8 (DP4A, no tensor cores)" in precisions:
        return (f"int8 on compute capability {compute_capability}: DP4A only, no int8 tensor cores; expect modest "
                "gains over fp16")
    return (f"{precision} without tensor-core support on compute capability {compute_capability}: expect little "
            "or no gain over fp32")
