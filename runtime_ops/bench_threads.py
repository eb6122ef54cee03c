"""Thread scaling of the ai.qcompiler ops: 1 vs 2 intra-op threads, one session at a time.

`python -m qcompiler.ops.bench_threads [--shape 2048x2048] [--M 1,32] [--blocks 4]`

qcompiler.ops.bench interleaves many sessions, which is right for ratios between kernels but not
for threads: a deployed model has one session whose pool spins between runs. Here each block
builds one session (1 or 2 threads, spinning on, as deployed), warms it, times it, and drops it;
blocks of 1 and 2 threads alternate, so the machine's noise hits both alike. Prints the median
time of each and the speed-up per block.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort

from qcompiler.ops import register
from qcompiler.ops.bench import our_model

OPS = {"ternary": ("TernaryMatMul", None), "bcq2": ("BinaryCodeMatMul", 2), "cb4": ("CodebookMatMul", 4)}


def _session(model, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _block(model, threads: int, x: np.ndarray, runs: int) -> float:
    s = _session(model, threads)
    feed = {s.get_inputs()[0].name: x}
    for _ in range(max(5, runs // 8)):
        s.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="2048x2048", help="KxN")
    ap.add_argument("--M", default="1,32", help="rows of A, comma separated")
    ap.add_argument("--blocks", type=int, default=4, help="alternating blocks per thread count")
    args = ap.parse_args(argv)
    k, n = (int(v) for v in args.shape.lower().split("x"))
    rng = np.random.default_rng(0)
    models = {name: our_model(op, k, n, rng, bits=bits) for name, (op, bits) in OPS.items()}
    print(f"{k}x{n}, onnxruntime {ort.__version__}; median us per run; speed-up = 1-thread time / 2-thread time")
    print("load average at start: %.2f %.2f %.2f (2 threads need both cores free)" % os.getloadavg())
    for m in (int(v) for v in args.M.split(",")):
        x = rng.standard_normal((m, k)).astype(np.float32)
        runs = max(20, int(150 / max(1, m // 4)))
        for name, model in models.items():
            t1, t2 = [], []
            for _ in range(args.blocks):
                t1.append(_block(model, 1, x, runs))
                t2.append(_block(model, 2, x, runs))
            ratios = [a / b for a, b in zip(t1, t2)]
            print(f"M={m:<3} {name:8} 1 thread {np.median(t1) * 1e6:8.1f}  2 threads {np.median(t2) * 1e6:8.1f}  "
                  f"speed-up {np.median(ratios):.2f} (blocks {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
    print("load average at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
