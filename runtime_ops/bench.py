"""Benchmark of the ai.qcompiler kernels against onnxruntime's FP32 MatMul, its int8 (quantize_dynamic)
and MatMulNBits, one single-op model per column, all columns interleaved in one run.

`python -m qcompiler.ops.bench` runs the grid of issue 14 (KxN 768x3072, 3072x768, 2048x2048,
4096x4096, 4096x11008; M 1, 4, 16, 64, 256; 1 and 2 threads); `--quick` a small part of it.
Each cell prints the median CPU time per run of the whole process (all its threads: on a shared
machine CPU time survives preemption by other jobs, wall time does not) and the median wall
time, then every column's speed against onnxruntime int8 (x faster, from CPU time; wall in
brackets). The load average and this process's cpu/wall share are printed with the tables.
`--nbits` measures MatMulNBits' settings (block size, symmetric or with zero points,
accuracy_level) against onnxruntime int8 instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qcompiler.machine import cpu_model

from . import contract as C
from . import register

SHAPES = [(768, 3072), (3072, 768), (2048, 2048), (4096, 4096), (4096, 11008)]
MS = [1, 4, 16, 64, 256]
BLOCK = 32
BCQ_GROUP = 128  # the bcq2 / bcq3 schemes' group_size
# column -> what it is (printed in the legend)
COLUMNS = {
    "fp32": "onnxruntime MatMul, fp32",
    "ort_int8": "onnxruntime quantize_dynamic (per channel, int8 weights): DynamicQuantizeMatMul",
    "nbits4": "MatMulNBits 4-bit, block 32, accuracy_level 4, no zero points",
    "q_int8": "qcompiler int8 (insert_qdq's dynamic form: DynamicQuantizeLinear + MatMulInteger)",
    "q_int4": "qcompiler int4 (quantize_int4's form: MatMulNBits block 32 with zero points, level 4)",
    "ternary": "TernaryMatMul, per output channel (the ternary scheme)",
    "bcq2": "BinaryCodeMatMul 2 planes, group 128 (bcq2 scheme)",
    "bcq3": "BinaryCodeMatMul 3 planes, group 128 (bcq3 scheme)",
    "kmeans4": "CodebookMatMul 4-bit (kmeans4 scheme)",
    "int4": "Int4MatMul, block 32 with zero points (the int4 scheme, --target qcompiler)",
}


def _single_node_model(nodes, inits, K, N, functions=()):
    nodes = nodes if isinstance(nodes, list) else [nodes]
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])], inits)
    opsets = [helper.make_opsetid("", C.STANDARD_OPSET), helper.make_opsetid("com.microsoft", 1),
              helper.make_opsetid(C.DOMAIN, C.OPSET_VERSION)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10, functions=list(functions))


def _weight(K, N, rng):
    return (rng.standard_normal((K, N)) * 0.05).astype(np.float32)


def fp32_model(K, N, rng, W=None):
    W = _weight(K, N, rng) if W is None else W
    node = helper.make_node("MatMul", ["A", "W"], ["Y"])
    return _single_node_model(node, [numpy_helper.from_array(W, "W")], K, N)


def ort_int8_model(K, N, rng, W=None):
    """onnxruntime's own quantize_dynamic of the fp32 MatMul (per channel, int8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        m = fp32_model(K, N, rng, W)
        m.opset_import[0].version = 17  # quantize_dynamic's supported range
        onnx.save(m, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
        return onnx.load(dst)


def q_int8_model(K, N, rng, W=None):
    """The form qcompiler's insert_qdq (activations "dynamic") writes for a linear."""
    W = _weight(K, N, rng) if W is None else W
    scale = (np.abs(W).max(0) / 127.0).astype(np.float32)
    Wq = np.clip(np.rint(W / scale), -127, 127).astype(np.int8)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["A"], ["xq", "xs", "xzp"]),
             helper.make_node("MatMulInteger", ["xq", "Wq", "xzp", "wzp"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "wscale"], ["s"]),
             helper.make_node("Mul", ["accf", "s"], ["Y"])]
    inits = [numpy_helper.from_array(Wq, "Wq"), numpy_helper.from_array(np.zeros(N, np.int8), "wzp"),
             numpy_helper.from_array(scale, "wscale")]
    return _single_node_model(nodes, inits, K, N)


def matmul_nbits_model(K, N, bits, rng, block=BLOCK, zero_points=False, level=4):
    n_blocks = (K + block - 1) // block
    blob = block * bits // 8
    B = rng.integers(0, 256, (N, n_blocks, blob), dtype=np.uint8)
    scales = (rng.random(N * n_blocks) * 0.01).astype(np.float32)
    inits = [numpy_helper.from_array(B, "B"), numpy_helper.from_array(scales, "scales")]
    inputs = ["A", "B", "scales"]
    if zero_points:  # packed 4-bit zero points, one per block, rows padded to whole bytes
        zp = rng.integers(0, 256, (N * ((n_blocks * bits + 7) // 8),), dtype=np.uint8)
        inits.append(numpy_helper.from_array(zp, "zp"))
        inputs.append("zp")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft",
                            K=K, N=N, bits=bits, block_size=block, accuracy_level=level)
    return _single_node_model(node, inits, K, N)


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
    elif op == "Int4MatMul":  # with zero points, as the int4 scheme writes them
        w = {"W_packed": rng.integers(0, 256, shape, dtype=np.uint8),
             "scales": (rng.random((N, G)) * 0.01).astype(np.float16),
             "zero_points": rng.integers(0, 256, (N, (G + 1) // 2), dtype=np.uint8)}
    else:
        w = {"indices": rng.integers(0, 256, shape, dtype=np.uint8),
             "codebook": (rng.standard_normal((N, 1 << bits)) * 0.05).astype(np.float16)}
    return C.make_model(op, {**w, **common}, K=K, N=N, group_size=gs, bits=bits, accuracy_level=level)


def columns(K, N, rng, names):
    W = _weight(K, N, rng)
    build = {
        "fp32": lambda: fp32_model(K, N, rng, W),
        "ort_int8": lambda: ort_int8_model(K, N, rng, W),
        "nbits4": lambda: matmul_nbits_model(K, N, 4, rng),
        "q_int8": lambda: q_int8_model(K, N, rng, W),
        "q_int4": lambda: matmul_nbits_model(K, N, 4, rng, zero_points=True),
        "ternary": lambda: our_model("TernaryMatMul", K, N, rng),
        "bcq2": lambda: our_model("BinaryCodeMatMul", K, N, rng, bits=2, group_size=BCQ_GROUP),
        "bcq3": lambda: our_model("BinaryCodeMatMul", K, N, rng, bits=3, group_size=BCQ_GROUP),
        "kmeans4": lambda: our_model("CodebookMatMul", K, N, rng, bits=4),
        "int4": lambda: our_model("Int4MatMul", K, N, rng, group_size=BLOCK),
    }
    return {n: build[n]() for n in names}


OURS = ("ternary", "bcq2", "bcq3", "kmeans4", "int4")


# --paths: the environment each path of a column runs under (read when onnxruntime creates the
# kernels). int4 has one level-4 path in two forms: the decoded tile and the direct kernel.
PATH_ENV = {"lut": {"QCOMPILER_GEMM_MIN_M": "0"}, "gemm": {"QCOMPILER_GEMM_MIN_M": "1"},
            "tile": {"QCOMPILER_I4_DIRECT_MAX_M": "0"}, "direct": {"QCOMPILER_I4_DIRECT_MAX_M": str(1 << 40)}}


def path_names(name: str) -> tuple[str, ...]:
    """The --paths columns of one column: ours on both paths, the others as they are."""
    if name == "int4":
        return ("int4@tile", "int4@direct")
    return (name + "@lut", name + "@gemm") if name in OURS else (name,)


def session(model: onnx.ModelProto, threads: int, env: dict | None = None) -> ort.InferenceSession:
    """env: variables set while onnxruntime creates this session's kernels (a path's crossover),
    restored afterwards."""
    if env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return session(model, threads)
        finally:
            for k, v in saved.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The columns are interleaved, so every session's pool would otherwise keep its worker
    # spinning after each run: spinning threads of other sessions on two cores made every 2-thread
    # column 2-4x SLOWER than one thread (and would count as CPU time).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def time_interleaved(sessions: dict, feed: dict, budget: float, min_rounds: int = 5, max_rounds: int = 2000,
                     unit: float = 1e6) -> dict:
    """Median (CPU, wall) per run of each session, in seconds x unit (1e6: us); runs alternate between
    sessions. CPU time is the whole process's (every thread of the pool)."""
    for s in sessions.values():  # warm-up: first runs allocate
        s.run(None, feed)
    cpu = {k: [] for k in sessions}
    wall = {k: [] for k in sessions}
    t_end = time.perf_counter() + budget
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < t_end and rounds < max_rounds):
        for k, s in sessions.items():
            c0, t0 = time.process_time(), time.perf_counter()
            s.run(None, feed)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
        rounds += 1
    return {k: (statistics.median(cpu[k]) * unit, statistics.median(wall[k]) * unit) for k in sessions}


def _header(args):
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; onnxruntime {ort.__version__}; "
          f"QCOMPILER_ISA={os.environ.get('QCOMPILER_ISA', '(auto)')}; "
          f"QCOMPILER_GEMM_MIN_M={os.environ.get('QCOMPILER_GEMM_MIN_M', '(default)')}")
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg())


def run_grid(args) -> dict:
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    Ms = [int(m) for m in args.M.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    names = [n for n in args.columns.split(",")]
    for n in names:
        if n not in COLUMNS:
            raise SystemExit(f"unknown column {n!r}: choose from {', '.join(COLUMNS)}")
    rng = np.random.default_rng(0)
    _header(args)
    for n in names:
        print(f"  {n}: {COLUMNS[n]}")
    if args.paths:  # each of our columns twice: lookup-table / codebook path, and the batched int8 path
        names = [v for n in names for v in path_names(n)]
        print("  @lut: QCOMPILER_GEMM_MIN_M=0 (lookup tables / codebook GEMV), @gemm: =1 (batched int8 path); "
              "int4 @tile: QCOMPILER_I4_DIRECT_MAX_M=0 (decoded tile), @direct: every M on the direct kernel")
    print("CPU us per run (process CPU time, median) / x faster than ort_int8 by CPU time [by wall time]")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results = {}
    for K, N in shapes:
        models = columns(K, N, rng, list(dict.fromkeys(n.split("@")[0] for n in names)))
        for t in threads:
            sessions = {n: session(models[n.split("@")[0]], t, PATH_ENV.get(n.partition("@")[2])) for n in names}
            print(f"\n{K}x{N}, {t} thread{'s' if t > 1 else ''}, load {os.getloadavg()[0]:.1f}")
            ratios = [f"{n}/int8" for n in names if n != "ort_int8"] if "ort_int8" in names else []
            print("| M | " + " | ".join(names + ratios) + " |")
            print("|---" * (1 + len(names) + len(ratios)) + "|")
            for M in Ms:
                feed = {"A": rng.standard_normal((M, K)).astype(np.float32)}
                r = time_interleaved(sessions, feed, args.budget)
                results[f"{K}x{N}/M{M}/t{t}"] = r
                line = f"| {M} | " + " | ".join(f"{r[n][0]:.0f}" for n in names)
                if "ort_int8" in names:
                    base = r["ort_int8"]
                    line += " | " + " | ".join(f"{base[0] / r[n][0]:.2f} [{base[1] / r[n][1]:.2f}]"
                                               for n in names if n != "ort_int8")
                print(line + " |", flush=True)
            del sessions
    if len(threads) > 1 and 1 in threads:
        print("\n2 threads vs 1 thread, wall time (x faster):")
        for key, r in results.items():
            shape, m, t = key.split("/")
            if t == "t1":
                continue
            r1 = results[f"{shape}/{m}/t1"]
            print(f"{shape:>10} {m:>5} {t}: " + " ".join(f"{n}={r1[n][1] / r[n][1]:.2f}" for n in names))
    print("\nload average at end: %.2f %.2f %.2f" % os.getloadavg())
    print("cpu time / wall time of this process: %.2f" % ((time.process_time() - cpu0) / (time.perf_counter() - wall0)))
    return results


def run_nbits(args) -> dict:
    """MatMulNBits' settings against onnxruntime int8 (item 2 of issue 14)."""
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    Ms = [int(m) for m in args.M.split(",")]
    rng = np.random.default_rng(1)
    _header(args)
    settings = [(b, zp, lvl) for b in (16, 32, 64, 128) for zp in (False, True) for lvl in (0, 4)]
    results = {}
    for K, N in shapes:
        W = _weight(K, N, rng)
        models = {"ort_int8": ort_int8_model(K, N, rng, W)}
        for b, zp, lvl in settings:
            models[f"b{b}{'zp' if zp else 'sym'}l{lvl}"] = matmul_nbits_model(K, N, 4, rng, block=b, zero_points=zp,
                                                                            level=lvl)
        sessions = {n: session(m, 1) for n, m in models.items()}
        print(f"\n{K}x{N}, 1 thread: x faster than ort_int8 by CPU time (ort_int8 CPU us in the first column)")
        print("| M | ort_int8 us | " + " | ".join(n for n in models if n != "ort_int8") + " |")
        print("|---" * (len(models) + 1) + "|")
        for M in Ms:
            feed = {"A": rng.standard_normal((M, K)).astype(np.float32)}
            r = time_interleaved(sessions, feed, args.budget)
            results[f"{K}x{N}/M{M}"] = r
            base = r["ort_int8"][0]
            print(f"| {M} | {base:.0f} | " + " | ".join(f"{base / r[n][0]:.2f}" for n in models if n != "ort_int8")
                  + " |", flush=True)
        del sessions
    print("\nload average at end: %.2f %.2f %.2f" % os.getloadavg())
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES), help="KxN list, e.g. 768x3072")
    ap.add_argument("--M", default=",".join(map(str, MS)))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--columns", default=",".join(COLUMNS), help="which columns (default: all)")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per (shape, M, threads) cell")
    ap.add_argument("--quick", action="store_true", help="768x3072 and 2048x2048, M=1,16,64, one thread")
    ap.add_argument("--nbits", action="store_true", help="MatMulNBits settings vs onnxruntime int8")
    ap.add_argument("--json", help="also write the medians (CPU us, wall us) to this file")
    ap.add_argument("--paths", action="store_true",
                    help="our columns on both paths (lookup tables / batched int8; int4: decoded tile / direct kernel): "
                         "how the crossovers are chosen")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.M, args.threads, args.budget = "768x3072,2048x2048", "1,16,64", "1", 0.4
    results = run_nbits(args) if args.nbits else run_grid(args)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
