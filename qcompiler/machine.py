"""What CPU this process runs on: its model name, and whether onnxruntime's int8 GEMMs are exact here.

Benchmarks print the model name beside every figure; the int8 scheme picks its weight code width
from `int8_dot_saturates` (onnxruntime's u8s8 kernels on x86 without VNNI sum pairs of uint8 x int8
products in int16 with saturation, so full-range 8-bit weight codes give wrong sums there).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_model", "cpu_flags", "int8_dot_saturates"]

# x86 features with which onnxruntime's MLAS runs u8s8 GEMMs on 32-bit accumulating dot products
# (vpdpbusd, AMX tiles) instead of vpmaddubsw's saturating int16 pair sums.
_EXACT_INT8_X86 = ("avx512_vnni", "avx_vnni", "amx_int8")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor string."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (x86 "flags", ARM "Features"); empty where unknown."""
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def int8_dot_saturates(machine: str | None = None, flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """(saturates, reason): whether onnxruntime's int8 GEMM on this CPU saturates 8-bit weight codes.

    True on x86 without VNNI/AMX (AVX2 or AVX-512 without VNNI); False with them and on ARM
    (sdot/udot or widening multiplies accumulate in 32 bits).
    """
    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    if machine in ("x86_64", "amd64", "i386", "i686"):
        have = [f for f in _EXACT_INT8_X86 if f in flags]
        if have:
            return False, f"x86 with {'/'.join(have)}: 32-bit int8 dot products"
        return True, "x86 without VNNI or AMX: int16 pair sums saturate"
    return False, f"{machine}: 32-bit int8 dot products"
