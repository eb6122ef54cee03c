"""Benchmark of the ai.qcompiler kernels against onnxruntime's FP32 MatMul and MatMulNBits.

Single-op models, timed through session.run, all columns interleaved in one run, printing ratios.
`python -m qcompiler.ops.bench --quick` takes well under a minute; no arguments runs the full grid.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from . import contract as C
from . import register

SHAPES = [(768, 3072), (3072, 768), (2048, 2048), (4096, 4096)]
BLOCK = 32


def _single_node_model(node, inits, K, N, functions=()):
    graph = helper.make_graph(
        [node], "bench", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])], inits)
    opsets = [helper.make_opsetid("", C.STANDARD_OPSET), helper.make_opsetid("com.microsoft", 1),
              helper.make_opsetid(C.DOMAIN, C.OPSET_VERSION)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10, functions=list(functions))


def fp32_model(K, N, rng):
    W = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    node = helper.make_node("MatMul", ["A", "W"], ["Y"])
    return _single_node_model(node, [numpy_helper.from_array(W, "W")], K, N)


def matmul_nbits_model(K, N, bits, rng):
    n_blocks = (K + BLOCK - 1) // BLOCK
    blob = BLOCK * bits // 8
    B = rng.integers(0, 256, (N, n_blocks, blob), dtype=np.uint8)
    scales = (rng.random(N * n_blocks) * 0.01).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft",
                            K=K, N=N, bits=bits, block_size=BLOCK, accuracy_level=4)
    return _single_node_model(node, [numpy_helper.from_array(B, "B"), numpy_helper.from_array(scales, "scales")], K, N)


_VALID_TERNARY_BYTES = np.array([a | b << 2 | c << 4 | d << 6 for a in (0, 1, 3) for b in (0, 1, 3)
                                 for c in (0, 1, 3) for d in (0, 1, 3)], np.uint8)


def our_model(op, K, N, rng, bits=None, level=4, group_size=None):
    gs = group_size or K
    G = C.num_groups(K, gs)
    idx = np.sort(rng.choice(K, 2, replace=False)).astype(np.int64)
    common = {"bias": np.zeros(N, np.float32), "outlier_idx": idx,
              "outlier_w": (rng.standard_normal((2, N)) * 0.05).astype(np.float16)}
    shape = C.OPS[op].packed_shape(K, N, bits or 2)
    if op == "TernaryMatMul":
        packed = _VALID_TERNARY_BYTES[rng.integers(0, 81, shape)]
        w = {"W_packed": packed, "scales": (rng.random((N, G)) * 0.05).astype(np.float16)}
    elif op == "BinaryCodeMatMul":
        w = {"W_packed": rng.integers(0, 256, shape, dtype=np.uint8),
             "alphas": (rng.random((bits, N, G)) * 0.05).astype(np.float16)}
    else:
        w = {"indices": rng.integers(0, 256, shape, dtype=np.uint8),
             "codebook": (rng.standard_normal((N, 1 << bits)) * 0.05).astype(np.float16)}
    return C.make_model(op, {**w, **common}, K=K, N=N, group_size=gs, bits=bits, accuracy_level=level)


def columns(K, N, rng, group_size=None, level0=False):
    extra = {}
    if level0:  # the fp32-activation path of the same formats
        extra = {"tern_l0": our_model("TernaryMatMul", K, N, rng, level=0, group_size=group_size),
                 "bcq2_l0": our_model("BinaryCodeMatMul", K, N, rng, bits=2, level=0, group_size=group_size),
                 "cb4_l0": our_model("CodebookMatMul", K, N, rng, bits=4, level=0)}
    return extra | {
        "fp32": fp32_model(K, N, rng),
        "nbits4": matmul_nbits_model(K, N, 4, rng),
        "nbits2": matmul_nbits_model(K, N, 2, rng),
        "ternary": our_model("TernaryMatMul", K, N, rng, group_size=group_size),
        "bcq2": our_model("BinaryCodeMatMul", K, N, rng, bits=2, group_size=group_size),
        "cb4": our_model("CodebookMatMul", K, N, rng, bits=4),
    }


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The columns are interleaved, so every session's pool would otherwise keep its worker
    # spinning after each run: six spinning threads on two cores made every 2-thread column,
    # onnxruntime's own MatMul included, 2-4x SLOWER than one thread.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


_FLUSH = None


def flush_caches():
    """Evict the caches: write then read a buffer larger than the last-level cache."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = np.ones(64 << 20 >> 3, np.float64)
    _FLUSH += 1.0
    return float(_FLUSH[::4096].sum())


def time_interleaved(sessions: dict, feed: dict, cold: bool, budget: float) -> dict:
    """Median time per run (us) of each session; runs alternate between sessions."""
    for s in sessions.values():  # warm-up: first runs allocate
        s.run(None, feed)
        s.run(None, feed)
    times = {k: [] for k in sessions}
    t_end = time.perf_counter() + budget
    rounds = 0
    while rounds < 5 or (time.perf_counter() < t_end and rounds < 2000):
        for k, s in sessions.items():
            if cold:
                flush_caches()
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t0)
        rounds += 1
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES), help="KxN list, e.g. 768x3072")
    ap.add_argument("--M", default="1,8,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--modes", default="warm,cold")
    ap.add_argument("--budget", type=float, default=0.6, help="seconds per (shape, M, threads, mode) cell")
    ap.add_argument("--group-size", type=int, default=None, help="group size of our ops (default: per channel)")
    ap.add_argument("--quick", action="store_true", help="768x3072 and 2048x2048, M=1,32, warm only")
    ap.add_argument("--level0", action="store_true", help="also our ops at accuracy_level 0 (fp32 activations)")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.M, args.modes, args.budget = "768x3072,2048x2048", "1,32", "warm", 0.4
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    Ms = [int(m) for m in args.M.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    modes = args.modes.split(",")
    rng = np.random.default_rng(0)
    names = ["fp32", "nbits4", "nbits2", "ternary", "bcq2", "cb4"] + (
        ["tern_l0", "bcq2_l0", "cb4_l0"] if args.level0 else [])
    print(f"onnxruntime {ort.__version__}; QCOMPILER_ISA={os.environ.get('QCOMPILER_ISA', '(auto)')}; "
          "times in us (median, session.run); ratios: x faster than nbits4 / fp32")
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
    wall0, cpu0 = time.perf_counter(), time.process_time()
    header = f"{'KxN':>10} {'M':>3} {'thr':>3} {'mode':>4} " + " ".join(f"{n:>8}" for n in names)
    header += "  tern/nb4 bcq2/nb4 cb4/nb4 tern/fp32 bcq2/fp32"
    print(header)
    results = {}
    for K, N in shapes:
        models = columns(K, N, rng, args.group_size, args.level0)
        for t in threads:
            sessions = {n: session(models[n], t) for n in names}
            for M in Ms:
                feed = {"A": rng.standard_normal((M, K)).astype(np.float32)}
                for mode in modes:
                    r = time_interleaved(sessions, feed, mode == "cold", args.budget)
                    results[(K, N, M, t, mode)] = r
                    line = f"{K}x{N:<5} {M:>3} {t:>3} {mode:>4} " + " ".join(f"{r[n]:8.1f}" for n in names)
                    line += (f"  {r['nbits4'] / r['ternary']:8.2f} {r['nbits4'] / r['bcq2']:8.2f}"
                             f" {r['nbits4'] / r['cb4']:7.2f} {r['fp32'] / r['ternary']:9.2f}"
                             f" {r['fp32'] / r['bcq2']:9.2f}")
                    print(line, flush=True)
            del sessions
    if len(threads) > 1 and 1 in threads:
        print("\nmore threads vs 1 thread (x faster), same mode:")
        for (K, N, M, t, mode), r in results.items():
            if t == 1:
                continue
            r1 = results[(K, N, M, 1, mode)]
            print(f"{K}x{N:<5} M={M:<3} t={t} {mode:>4} " + " ".join(f"{n}={r1[n] / r[n]:.2f}" for n in names))
    print("load average at end: %.2f %.2f %.2f" % os.getloadavg())
    # one thread alone on a core gives about 1.0; other jobs on the cores lower it
    print("cpu time / wall time of this process: %.2f" % ((time.process_time() - cpu0) / (time.perf_counter() - wall0)))


if __name__ == "__main__":
    main()
