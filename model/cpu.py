"""What this machine's CPU offers, read from Linux's ``/proc/cpuinfo`` without TensorFlow.

Whether bfloat16 arithmetic is native (:func:`cpu_has_bf16`: bf16 training and inference
are faster than float32 only then) and a one-line description for benchmark output
(:func:`describe_cpu`), and which vector kernels numpy runs its transcendental functions
with here (:func:`numpy_kernels`: their last bits differ between kernels, and so does a
synthetic world generated from a seed). Importing this module loads neither TensorFlow nor
Keras, so a launcher or a benchmark's parent process can ask without paying for them.
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


#: numpy functions whose float64 results differ in their last bits between the CPU targets
#: numpy dispatches them to (AVX512 ``X86_V4``, AVX2 ``X86_V3``, the ``baseline``): the
#: synthetic world's terrain (through SciPy's Gaussian kernels) and landslides use them.
NUMPY_TRANSCENDENTALS = ("exp", "log", "sin", "cos", "tanh", "power", "arctan", "arctan2")


def numpy_kernels() -> dict[str, str]:
    """The CPU target numpy runs each float64 function of :data:`NUMPY_TRANSCENDENTALS` with.

    numpy picks, when it is imported, the widest kernel the CPU supports (and
    ``NPY_DISABLE_CPU_FEATURES`` allows); the kernels agree only to the last bit, so the
    same seed generates the same synthetic world only where these targets are the same.

    Returns:
        E.g. ``{"exp": "X86_V4", ...}``, from :func:`numpy.lib.introspect.opt_func_info`;
        ``"unknown"`` for a function numpy does not report.
    """
    from numpy.lib.introspect import opt_func_info

    info = opt_func_info(func_name="^(" + "|".join(NUMPY_TRANSCENDENTALS) + ")$")
    out = {}
    for name in NUMPY_TRANSCENDENTALS:
        loops = info.get(name, {})
        out[name] = next((str(v["current"]) for sig, v in loops.items()
                          if sig in ("dd", "ddd")), "unknown")
    return out


def describe_numpy_kernels(kernels: dict[str, str] | None = None) -> str:
    """:func:`numpy_kernels` in a few words: ``"X86_V4"``, or each target with its functions.

    Args:
        kernels: What :func:`numpy_kernels` returns (default: this machine's).
    """
    kernels = numpy_kernels() if kernels is None else kernels
    targets = sorted(set(kernels.values()))
    if len(targets) == 1:
        return targets[0]
    return "; ".join(f"{t} ({' '.join(f for f, k in kernels.items() if k == t)})"
                     for t in targets)


def describe_cpu(cpuinfo: str | None = None) -> str:
    """One line naming this machine's CPU, for benchmark output.

    Timings, and the last bits of floating-point results (the kernels numpy and
    TensorFlow pick depend on the CPU's vector extensions), differ between CPUs, so a
    figure is only comparable to one measured on the same kind of CPU.

    Args:
        cpuinfo: Text in the form of Linux's ``/proc/cpuinfo`` (default: read it).

    Returns:
        E.g. ``"AMD EPYC, 2 CPUs, avx2 fma, native bfloat16: no, numpy kernels: X86_V3"``
        (:func:`describe_numpy_kernels`).
    """
    text = _cpuinfo(cpuinfo)
    name = _cpu_field(text, "model name") or "unknown CPU"
    flags = (_cpu_field(text, "flags") or "").split()
    simd = " ".join(f for f in SIMD_FLAGS if f in flags) or "none of " + "/".join(SIMD_FLAGS)
    return (f"{name}, {os.cpu_count()} CPUs, {simd}, native bfloat16: "
            f"{'yes' if cpu_has_bf16(text) else 'no'}, numpy kernels: "
            f"{describe_numpy_kernels()}")


__all__ = ["BF16_CPU_FLAGS", "NUMPY_TRANSCENDENTALS", "SIMD_FLAGS", "cpu_has_bf16",
           "describe_cpu", "describe_numpy_kernels", "numpy_kernels"]
