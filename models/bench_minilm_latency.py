"""End-to-end latency of all-MiniLM-L6-v2 compiled with each scheme, against onnxruntime's int8.

    python -m models.bench_minilm_latency [--schemes ternary,bcq2,...] [--threads 1,2] [--out DIR]
                                          [--file NAME=compiled.onnx ...]

Shapes (batch x tokens): 1x8, 1x32, 1x128, 8x32. Variants: FP32, onnxruntime quantize_dynamic
(per channel, int8 weights: the int8 baseline), and qcompiler's schemes compiled here with
calibration on the demo's calibration sentences (cached in --out; --recompile rebuilds).
Sessions of all variants alternate run by run (spinning off, so idle pools do not eat the other
sessions' CPU); each cell prints the median CPU time per run of the whole process (every thread:
on a shared machine CPU time survives preemption, wall time does not), the median wall time,
and each variant's speed against onnxruntime int8 by CPU time [wall in brackets].
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

SHAPES = [(1, 8), (1, 32), (1, 128), (8, 32)]
SCHEMES = ["int8", "int4", "ternary", "bcq2", "bcq3", "kmeans4", "mixed"]


def build_variants(out: Path, schemes: list[str], calib_sentences: int, recompile: bool, log=print) -> dict:
    """name -> ONNX path: fp32, ort_int8 and each scheme (compiled once, then reused)."""
    from models.demo import DEMO_CALIB_SOURCE, calibration_samples
    from models.minilm import minilm_onnx
    from qcompiler.bench import ort_quantize_dynamic, write_samples_npz
    from qcompiler.pipeline import compile_model

    out.mkdir(parents=True, exist_ok=True)
    fp32 = minilm_onnx()
    paths = {"fp32": fp32, "ort_int8": str(out / "minilm.ort_int8.onnx")}
    if recompile or not Path(paths["ort_int8"]).exists():
        ort_quantize_dynamic(fp32, paths["ort_int8"])
    calib = out / f"minilm_calibration_{calib_sentences}.npz"
    if not calib.exists():  # the demo's calibration text source
        write_samples_npz(calib, calibration_samples(DEMO_CALIB_SOURCE, calib_sentences))
    for scheme in schemes:
        dst = out / f"minilm.{scheme}.onnx"
        if recompile or not dst.exists():
            t = time.perf_counter()
            compile_model(fp32, scheme=scheme, output=str(dst), calib=str(calib), verify=False, progress=False)
            log(f"compiled {scheme} in {time.perf_counter() - t:.0f} s")
        paths[scheme] = str(dst)
    return paths


def session(path: str, threads: int):
    import onnxruntime as ort

    from qcompiler import ops

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ops.register(so)
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feeds(batch: int, tokens: int, seed: int = 0) -> dict:
    """[CLS] ids... [SEP] of exactly `tokens` tokens per row, no padding (latency only)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, (batch, tokens), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones((batch, tokens), np.int64)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--shapes", default=",".join(f"{b}x{t}" for b, t in SHAPES), help="batch x tokens list")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per (shape, threads) cell")
    ap.add_argument("--calib", type=int, default=128, help="calibration sentences for the compiles")
    ap.add_argument("--out", default="build/minilm_latency")
    ap.add_argument("--recompile", action="store_true")
    ap.add_argument("--file", action="append", default=[], metavar="NAME=PATH",
                    help="another compiled MiniLM to time beside the others (e.g. a scheme variant)")
    ap.add_argument("--json", help="also write the medians (CPU ms, wall ms) here")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from qcompiler.machine import cpu_model
    from qcompiler.ops.bench import time_interleaved

    schemes = [s for s in args.schemes.split(",") if s]
    paths = build_variants(Path(args.out), schemes, args.calib, args.recompile)
    for item in args.file:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--file wants NAME=PATH of an existing file, got {item!r}")
        paths[name] = path
    names = list(paths)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; onnxruntime {ort.__version__}; "
          f"QCOMPILER_GEMM_MIN_M={os.environ.get('QCOMPILER_GEMM_MIN_M', '(default)')}")
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
    print("CPU ms per run (process CPU time, median) / x faster than ort_int8 by CPU time [by wall time]")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results = {}
    for t in [int(x) for x in args.threads.split(",")]:
        sessions = {n: session(p, t) for n, p in paths.items()}
        print(f"\n{t} thread{'s' if t > 1 else ''}, load {os.getloadavg()[0]:.1f}")
        print("| batch x tokens | " + " | ".join(names) + " | "
              + " | ".join(f"{n}/int8" for n in names if n != "ort_int8") + " |")
        print("|---" * (2 * len(names)) + "|")
        for b, tok in shapes:
            r = time_interleaved(sessions, feeds(b, tok), args.budget, max_rounds=500, unit=1e3)   # ms
            results[f"{b}x{tok}/t{t}"] = r
            base = r["ort_int8"]
            print(f"| {b}x{tok} | " + " | ".join(f"{r[n][0]:.2f}" for n in names) + " | "
                  + " | ".join(f"{base[0] / r[n][0]:.2f} [{base[1] / r[n][1]:.2f}]" for n in names if n != "ort_int8")
                  + " |", flush=True)
        del sessions
    print("\nload average at end: %.2f %.2f %.2f" % os.getloadavg())
    print("cpu time / wall time of this process: %.2f" % ((time.process_time() - cpu0) / (time.perf_counter() - wall0)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
