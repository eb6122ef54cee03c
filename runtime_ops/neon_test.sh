#!/usr/bin/env bash
# Cross-compile the kernels for aarch64 (NEON) with Debian's gcc and run the C harness under
# qemu-user: every NEON result is compared with the scalar reference and the contract.
# Installs gcc-aarch64-linux-gnu and qemu-user with apt-get when missing. Exit 77: cannot install.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/build/neon}"
CC=aarch64-linux-gnu-gcc
QEMU=qemu-aarch64
if ! command -v "$CC" >/dev/null || ! command -v "$QEMU" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; } >&2 \
            || { echo "neon_test: could not install the aarch64 cross toolchain / qemu-user" >&2; exit 77; }
    else
        echo "neon_test: $CC or $QEMU missing and apt-get is not usable (not root)" >&2
        exit 77
    fi
fi
mkdir -p "$OUT"
K="$ROOT/runtime_ops/csrc/kernels"
"$CC" -std=c11 -O2 -ffp-contract=off -static -Wall -o "$OUT/qc_kernel_test" \
    "$ROOT/runtime_ops/csrc/tests/kernel_test.c" "$K/qc_core.c" "$K/dispatch.c" "$K/matmul_scalar.c" \
    "$K/matmul_avx2.c" "$K/matmul_avx512.c" "$K/matmul_neon.c" "$K/gemm_int8.c" "$K/gemm_int8_avx2.c" \
    "$K/gemm_int8_avx512.c" "$K/gemm_int8_amx.c" "$K/gemm_int8_neon.c" "$K/int4_direct_avx2.c" \
    "$K/int4_direct_avx512.c" "$K/decode_binary_avx512.c" -lm
QCOMPILER_ISA=neon "$QEMU" "$OUT/qc_kernel_test"
