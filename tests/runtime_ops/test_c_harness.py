"""The C kernel harness (every ISA variant against scalar and the contract), natively and for NEON
cross-compiled with Debian's aarch64 gcc under qemu-user (installed by the script when missing)."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _closing(out: str) -> str:
    return [line for line in out.splitlines() if line.endswith("failed")][-1]


def test_native_harness(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    k = os.path.join(ROOT, "runtime_ops", "csrc", "kernels")
    objs = []
    x86 = os.uname().machine == "x86_64"
    isa_flags = {"matmul_avx2.c": ["-mavx2", "-mfma"], "gemm_int8_avx2.c": ["-mavx2", "-mfma"],
                 "matmul_avx512.c": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]}
    isa_flags["gemm_int8_avx512.c"] = isa_flags["int4_direct_avx512.c"] = isa_flags["matmul_avx512.c"]
    isa_flags["decode_binary_avx512.c"] = isa_flags["matmul_avx512.c"]
    isa_flags["int4_direct_avx2.c"] = isa_flags["matmul_avx2.c"]
    for src in ("qc_core.c", "dispatch.c", "matmul_scalar.c", "matmul_avx2.c", "matmul_avx512.c", "matmul_neon.c",
                "gemm_int8.c", "gemm_int8_avx2.c", "gemm_int8_avx512.c", "gemm_int8_amx.c", "gemm_int8_neon.c",
                "int4_direct_avx2.c", "int4_direct_avx512.c", "decode_binary_avx512.c"):
        flags = isa_flags.get(src, []) if x86 else []
        obj = str(tmp_path / (src + ".o"))
        subprocess.run([cc, "-std=c11", "-O2", "-ffp-contract=off", *flags, "-c", os.path.join(k, src), "-o", obj],
                       check=True)
        objs.append(obj)
    exe = str(tmp_path / "qc_kernel_test")
    subprocess.run([cc, "-std=c11", "-O2", "-ffp-contract=off", "-o", exe,
                    os.path.join(ROOT, "runtime_ops", "csrc", "tests", "kernel_test.c"), *objs, "-lm"], check=True)
    r = subprocess.run([exe], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    assert _closing(r.stdout).endswith(" 0 failed")
    # int4 on the decoded-tile path too (the ISAs with a direct int4 kernel take it by default)
    tile = subprocess.run([exe], capture_output=True, text=True, env={**os.environ, "QCOMPILER_I4_DIRECT_MAX_M": "0"})
    assert tile.returncode == 0, tile.stdout
    assert _closing(tile.stdout).endswith(" 0 failed")
    if x86 and "avx2" in open("/proc/cpuinfo").read():  # the batched int8 path was compared, not skipped
        assert "gemm_i8 ISA comparisons: 0" not in r.stdout


def test_neon_under_qemu(tmp_path):
    r = subprocess.run(["bash", os.path.join(ROOT, "runtime_ops", "neon_test.sh"), str(tmp_path)],
                       capture_output=True, text=True)
    if r.returncode == 77:
        pytest.skip("aarch64 cross toolchain / qemu-user could not be installed: " + r.stderr.strip()[-300:])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "isa chosen: neon" in r.stdout
    assert _closing(r.stdout).endswith(" 0 failed")
    # qemu's default CPU has the dot-product extension: the sdot kernel was compared with scalar
    assert "gemm_i8 ISA comparisons: 0" not in r.stdout
