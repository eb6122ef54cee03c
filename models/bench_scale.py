"""Scale benchmark: wall time and peak RSS of every scheme and of onnxruntime's quantizers, side by side.

For each size it writes a chain of N MatMuls dim x dim (or, with --kind transformer, N pre-LN
transformer layers of width dim) with external data (models.large_synthetic), then runs each tool
in its own subprocess, one at a time, and takes the child's wall time and peak RSS (the child's
VmHWM, which it prints as it exits: ru_maxrss would also count the parent's pages the child holds
between fork and exec). qcompiler runs streaming (memory_budget 0) at every size, so the sizes are
comparable; onnxruntime's quantize_dynamic (int8 per channel) and MatMulNBits quantizer (4-bit,
block 32, symmetric) are the baselines for the same formats. `int8-calib` / `int4-calib` compile
with 64 calibration samples and a memory budget of half the model (streaming calibration in
pieces; the calibration stage's own time and peak are printed too), `ort-session[-noprepack]` runs the FP32 model in one onnxruntime
session on 16 of those samples (what calibrating in one piece would hold). The summary gives
seconds per GB at each size. Outputs are deleted after each run.

    python -m models.bench_scale                      # 12, 24, 36 x 4096^2 (0.8, 1.6, 2.4 GB)
    python -m models.bench_scale --layers 2,4 --dim 1024 --tools int8,ort-int8
    python -m models.bench_scale --kind transformer --layers 12 --tools int4,ort-int4,int8-calib

Needs about 3x the largest model in free disk (model, output, temporaries) in --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEMES = ("int8", "int4", "ternary", "bcq2", "kmeans4")
# int4 with plain round-to-nearest min/max blocks (no clipping search, no refits): the work
# onnxruntime's MatMulNBits quantizer does, to separate the quantizer's cost from the pipeline's.
VARIANTS = {"int4-rtn": ("int4", {"quantize_int4": {"grid": 1, "zoom": 0, "refine": 0}})}
# Schemes compiled with --calib data (CALIB_SAMPLES samples written beside the model): streaming
# calibration in pieces; int4 then runs GPTQ on every linear (about 30 s per 4096 x 4096 here).
CALIBRATED = {"int8-calib": "int8", "int4-calib": "int4"}
CALIB_SAMPLES = 64
BASELINES = {"ort-int8": "int8", "ort-int4": "int4"}     # baseline -> the scheme of the same format
# onnxruntime running the FP32 model in one session on the calibration batch: what calibrating
# without pieces would hold (with and without its prepacked copies of the MatMul weights).
REFERENCES = ("ort-session", "ort-session-noprepack")
TOOLS = SCHEMES + tuple(VARIANTS) + tuple(CALIBRATED) + tuple(BASELINES) + REFERENCES


def calib_path(src: str | Path) -> Path:
    return Path(str(src) + ".calib.npz")


def _child(tool: str, src: str, dst: str) -> None:
    """Run one tool in this (child) process."""
    if tool in SCHEMES or tool in VARIANTS or tool in CALIBRATED:
        from qcompiler import calibration
        from qcompiler.pipeline import compile_model
        from qcompiler.schemes import load_scheme

        scheme, calib = tool, None
        if tool in VARIANTS:
            base, overrides = VARIANTS[tool]
            scheme = load_scheme(base)
            for pass_name, values in overrides.items():
                scheme.options.setdefault(pass_name, {}).update(values)
            scheme.name = tool
        if tool in CALIBRATED:
            scheme, calib = CALIBRATED[tool], calib_path(src)
            collect = calibration.collect_stats_in_pieces

            def measured(*args, **kwargs):   # the peak of the calibration stage alone
                t = time.perf_counter()
                out = collect(*args, **kwargs)
                print(f"calibration {time.perf_counter() - t:.1f} s, peak RSS {peak_rss_of_this_process()}, "
                      f"{out[1]['pieces']} pieces", flush=True)
                return out

            calibration.collect_stats_in_pieces = measured
        # Calibrated runs get a memory budget of half the model (streaming, pieces of a sixteenth of it);
        # the others stream with budget 0 (every weight spilled at once) at every size.
        from qcompiler import model_io

        budget = model_io.file_size(src) // 2 if calib is not None else 0
        compile_model(src, scheme=scheme, output=dst, verify=False, memory_budget=budget, calib=calib)
    elif tool in REFERENCES:
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if tool == "ort-session-noprepack":
            opts.add_session_config_entry("session.disable_prepacking", "1")
        session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        data = np.load(calib_path(src))
        session.run(None, {k: data[k][:16] for k in data.files})
    elif tool == "ort-int8":
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        logging.getLogger().setLevel(logging.ERROR)
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=True)
    elif tool == "ort-int4":
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        q = MatMulNBitsQuantizer(onnx.load(src), block_size=32, is_symmetric=True, accuracy_level=4, bits=4)
        q.process()
        q.model.save_model_to_file(dst, use_external_data_format=True)
    else:
        raise SystemExit(f"unknown tool {tool}")
    print(f"VmHWM {peak_rss_of_this_process()}")


def peak_rss_of_this_process() -> int:
    """Peak resident bytes of this process image (VmHWM; reset by exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_tool(tool: str, src: Path, dst: Path, timeout: float) -> dict:
    """One tool in a subprocess: wall seconds, peak RSS bytes, output bytes, return code."""
    cmd = [sys.executable, "-m", "models.bench_scale", "--child", tool, str(src), str(dst)]
    start = time.perf_counter()
    out_log = tempfile.TemporaryFile()
    # A file, not a pipe: onnxruntime's quantizers log a line per node, and a full pipe nobody reads
    # until the child exits blocks the child for good (a 2.5 GB transformer stalled for 13 minutes).
    err_log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=out_log, stderr=err_log, cwd=Path(__file__).resolve().parents[1])
    deadline = start + timeout
    status = rusage = None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.send_signal(signal.SIGKILL)
            pid, status, rusage = os.wait4(proc.pid, 0)
            status = None
            break
        time.sleep(0.05)
    wall = time.perf_counter() - start
    proc.returncode = 0  # reaped by wait4; stop Popen from waiting again
    err_log.seek(0)
    err = err_log.read().decode(errors="replace").strip().splitlines()
    err_log.close()
    out_bytes = 0
    for p in dst.parent.glob(dst.name + "*"):
        out_bytes += p.stat().st_size
    rc = None if status is None else os.waitstatus_to_exitcode(status)
    out_log.seek(0)
    lines = out_log.read().decode(errors="replace").splitlines()
    out_log.close()
    hwm = [line.split()[1] for line in lines if line.startswith("VmHWM ")]
    peak = int(hwm[-1]) if hwm else rusage.ru_maxrss * 1024
    row = {"tool": tool, "wall_s": round(wall, 2), "peak_rss": peak, "out_bytes": out_bytes,
           "rc": rc, "error": (err[-1][:200] if err and rc != 0 else "") if rc is not None else f"timeout {timeout}s"}
    calib = [line.split() for line in lines if line.startswith("calibration ")]
    if calib:   # "calibration 12.3 s, peak RSS 123, 36 pieces"
        row.update(calib_s=float(calib[-1][1]), calib_peak_rss=int(calib[-1][5].rstrip(",")), calib_pieces=int(calib[-1][6]))
    return row


def _remove_outputs(dst: Path) -> None:
    for p in dst.parent.glob(dst.name + "*"):
        p.unlink()


def bench(layers: list[int], dim: int, tools: list[str], workdir: Path, timeout: float, log=print,
          kind: str = "chain") -> list[dict]:
    import numpy as np

    from models.large_synthetic import chain_bytes, transformer_bytes, write_chain, write_transformer

    rows = []
    rng = np.random.default_rng(0)
    for n in layers:
        src = workdir / f"{kind}{n}x{dim}.onnx"
        if kind == "chain":
            write_chain(src, layers=n, dim=dim)
            size = chain_bytes(n, dim)
            np.savez(calib_path(src), h0=rng.standard_normal((CALIB_SAMPLES, dim)).astype(np.float32))
            log(f"# chain of {n} MatMuls {dim}x{dim}: {size / 1e9:.2f} GB")
        else:
            write_transformer(src, layers=n, dim=dim)
            size = transformer_bytes(n, dim)
            np.savez(calib_path(src), input_ids=rng.integers(0, 8192, (CALIB_SAMPLES, 128)).astype(np.int64))
            log(f"# pre-LN transformer, {n} layers of width {dim}: {size / 1e9:.2f} GB")
        try:
            for tool in tools:
                dst = workdir / f"out-{tool}.onnx"
                r = run_tool(tool, src, dst, timeout)
                _remove_outputs(dst)
                r.update(layers=n, dim=dim, model_bytes=size, kind=kind)
                rows.append(r)
                log(_row_text(r))
        finally:
            for p in (src, Path(str(src) + ".data"), calib_path(src)):
                p.unlink(missing_ok=True)
    return rows


def _row_text(r: dict) -> str:
    status = "ok" if r["rc"] == 0 else f"FAILED ({r['error']})"
    calib = ""
    if "calib_s" in r:
        calib = (f"  (calibration {r['calib_s']:.1f} s in {r['calib_pieces']} pieces, peak RSS by its end "
                 f"{r['calib_peak_rss'] / 1e9:.2f} GB)")
    return (f"{r['tool']:<12} {r['model_bytes'] / 1e9:6.2f} GB  wall {r['wall_s']:8.1f} s  "
            f"peak RSS {r['peak_rss'] / 1e9:6.2f} GB ({r['peak_rss'] / r['model_bytes']:.2f}x)  "
            f"output {r['out_bytes'] / 1e9:6.3f} GB  {status}{calib}")


def summary(rows: list[dict]) -> str:
    """The side-by-side table, the comparisons with onnxruntime and seconds per GB per size."""
    sizes = sorted({r["model_bytes"] for r in rows})
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    by = {(r["tool"], r["model_bytes"]): r for r in rows}
    lines = ["| tool | " + " | ".join(f"{s / 1e9:.2f} GB: wall / peak RSS (x model)" for s in sizes) + " | s per GB |",
             "|---|" + "---|" * (len(sizes) + 1)]
    for t in tools:
        cells, per_gb = [], []
        for s in sizes:
            r = by.get((t, s))
            if r is None or r["rc"] != 0:
                cells.append("failed" if r else "-")
                continue
            cells.append(f"{r['wall_s']:.1f} s / {r['peak_rss'] / 1e9:.2f} GB ({r['peak_rss'] / s:.2f}x)"
                         + (f", calibration {r['calib_s']:.0f} s / {r['calib_peak_rss'] / 1e9:.2f} GB" if "calib_s" in r else ""))
            per_gb.append(f"{r['wall_s'] / (s / 1e9):.1f}")
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {' / '.join(per_gb)} |")
    for base, scheme in BASELINES.items():
        for ours in [scheme] + [v for v, (b, _) in VARIANTS.items() if b == scheme]:
            for s in sizes:
                a, b = by.get((ours, s)), by.get((base, s))
                if a and b and a["rc"] == 0 and b["rc"] == 0:
                    lines.append(f"- {s / 1e9:.2f} GB: qcompiler {ours} takes {a['wall_s'] / b['wall_s']:.2f}x the wall "
                                 f"time and {a['peak_rss'] / b['peak_rss']:.2f}x the peak RSS of {base}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        if len(argv) != 4:
            print("usage: --child TOOL SRC DST", file=sys.stderr)
            return 2
        _child(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m models.bench_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="12,24,36", help="model sizes as MatMul counts, comma separated")
    parser.add_argument("--dim", type=int, default=None, help="default: 4096 (chain), 2048 (transformer)")
    parser.add_argument("--kind", choices=("chain", "transformer"), default="chain",
                        help="chain of dim x dim MatMuls, or pre-LN transformer layers of width dim (12 dim^2 weights each)")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma separated, of {', '.join(TOOLS)}")
    parser.add_argument("--workdir", default=None, help="where models are generated (default: a new temporary directory)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is killed")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    try:
        layers = [int(x) for x in args.layers.split(",") if x.strip()]
    except ValueError:
        print(f"error: --layers must be integers, got {args.layers!r}", file=sys.stderr)
        return 2
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    dim = args.dim if args.dim is not None else (4096 if args.kind == "chain" else 2048)
    if unknown or not layers or min(layers) < 1 or dim < 1:
        print(f"error: unknown tools {unknown} (known: {', '.join(TOOLS)})" if unknown
              else "error: --layers and --dim must be positive", file=sys.stderr)
        return 2
    need = 3 * max(layers) * dim * dim * 4 * (1 if args.kind == "chain" else 12)
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="qcompile-scale-")) if own else Path(args.workdir)
    if not workdir.is_dir():
        print(f"error: --workdir is not a directory: {workdir}", file=sys.stderr)
        return 2
    if shutil.disk_usage(workdir).free < need:
        print(f"error: {workdir} has {shutil.disk_usage(workdir).free / 1e9:.1f} GB free, needs {need / 1e9:.1f} GB",
              file=sys.stderr)
        return 2
    try:
        rows = bench(layers, dim, tools, workdir, args.timeout, log=lambda s: print(s, flush=True), kind=args.kind)
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(summary(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
