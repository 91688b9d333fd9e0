"""What this machine's CPU offers, read from Linux's ``/proc/cpuinfo`` without TensorFlow.

Whether bfloat16 arithmetic is native (:func:`cpu_has_bf16`: bf16 training and inference
are faster than float32 only then) and a one-line description for benchmark output
(:func:`describe_cpu`). Importing this module loads neither TensorFlow nor Keras, so a
launcher or a benchmark's parent process can ask without paying for them.
"""

from __future__ import annotations

import os
from pathlib import Path

#: CPU flags (as Linux lists them) of native bfloat16 arithmetic: AVX512 bf16 dot products,
#: AMX bf16 tiles. Without them bfloat16 is emulated and slower than float32.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo(cpuinfo: str | None) -> str:
    if cpuinfo is not None:
        return cpuinfo
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpu_field(cpuinfo: str, name: str) -> str | None:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (one of :data:`BF16_CPU_FLAGS`).

    Args:
        cpuinfo: Text in the form of Linux's ``/proc/cpuinfo`` (default: read it; False
            where there is none, e.g. macOS).
    """
    flags = (_cpu_field(_cpuinfo(cpuinfo), "flags") or "").split()
    return any(flag in flags for flag in BF16_CPU_FLAGS)


#: The CPU flags that decide how fast (and, in their last bits, how) numerical kernels run.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", *BF16_CPU_FLAGS)


def describe_cpu(cpuinfo: str | None = None) -> str:
    """One line naming this machine's CPU, for benchmark output.

    Timings, and the last bits of floating-point results (the kernels numpy and
    TensorFlow pick depend on the CPU's vector extensions), differ between CPUs, so a
    figure is only comparable to one measured on the same kind of CPU.

    Args:
        cpuinfo: Text in the form of Linux's ``/proc/cpuinfo`` (default: read it).

    Returns:
        E.g. ``"AMD EPYC, 2 CPUs, avx2 fma, native bfloat16: no"``.
    """
    text = _cpuinfo(cpuinfo)
    name = _cpu_field(text, "model name") or "unknown CPU"
    flags = (_cpu_field(text, "flags") or "").split()
    simd = " ".join(f for f in SIMD_FLAGS if f in flags) or "none of " + "/".join(SIMD_FLAGS)
    return (f"{name}, {os.cpu_count()} CPUs, {simd}, native bfloat16: "
            f"{'yes' if cpu_has_bf16(text) else 'no'}")


__all__ = ["BF16_CPU_FLAGS", "SIMD_FLAGS", "cpu_has_bf16", "describe_cpu"]
