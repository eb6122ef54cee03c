"""qcompiler.machine: which CPUs saturate onnxruntime's int8 dot products, and the int8 code width it picks."""

import pytest

from qcompiler.machine import cpu_model, int8_dot_saturates


@pytest.mark.parametrize("machine, flags, saturates", [
    ("x86_64", {"avx2", "fma"}, True),                          # AVX2 maddubs: int16 pair sums
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, True),          # AVX-512 without VNNI: still maddubs
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False),
    ("x86_64", {"avx2", "avx_vnni"}, False),
    ("x86_64", {"avx2", "amx_int8"}, False),
    ("aarch64", {"asimd"}, False),
    ("aarch64", {"asimd", "asimddp"}, False),
])
def test_int8_dot_saturates(machine, flags, saturates):
    got, reason = int8_dot_saturates(machine, frozenset(flags))
    assert got is saturates and reason


def test_cpu_model_is_named():
    assert cpu_model().strip()

