"""Scale benchmark: wall time and peak RSS of every scheme and of onnxruntime's quantizers, side by side.

For each size it writes a chain of N MatMuls dim x dim with external data
(models.large_synthetic), then runs each tool in its own subprocess, one at a time, and takes
the child's wall time and peak RSS (the child's VmHWM, which it prints as it exits: ru_maxrss would
also count the parent's pages the child holds between fork and exec). qcompiler runs
streaming (memory_budget 0) at every size, so the sizes are comparable; onnxruntime's
quantize_dynamic (int8 per channel) and MatMulNBits quantizer (4-bit, block 32, symmetric)
are the baselines for the same formats. Outputs are deleted after each run.

    python -m qcompiler.bench_scale                      # 12, 24, 36 x 4096^2 (0.8, 1.6, 2.4 GB)
    python -m qcompiler.bench_scale --layers 2,4 --dim 1024 --tools int8,ort-int8

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
BASELINES = {"ort-int8": "int8", "ort-int4": "int4"}     # baseline -> the scheme of the same format
TOOLS = SCHEMES + tuple(VARIANTS) + tuple(BASELINES)


def _child(tool: str, src: str, dst: str) -> None:
    """Run one tool in this (child) process."""
    if tool in SCHEMES or tool in VARIANTS:
        from qcompiler.pipeline import compile_model
        from qcompiler.schemes import load_scheme

        scheme = tool
        if tool in VARIANTS:
            base, overrides = VARIANTS[tool]
            scheme = load_scheme(base)
            for pass_name, values in overrides.items():
                scheme.options.setdefault(pass_name, {}).update(values)
            scheme.name = tool
        compile_model(src, scheme=scheme, output=dst, verify=False, memory_budget=0)
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
    cmd = [sys.executable, "-m", "qcompiler.bench_scale", "--child", tool, str(src), str(dst)]
    start = time.perf_counter()
    out_log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=out_log, stderr=subprocess.PIPE)
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
    err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
    proc.stderr.close()
    out_bytes = 0
    for p in dst.parent.glob(dst.name + "*"):
        out_bytes += p.stat().st_size
    rc = None if status is None else os.waitstatus_to_exitcode(status)
    out_log.seek(0)
    hwm = [line.split()[1] for line in out_log.read().decode(errors="replace").splitlines() if line.startswith("VmHWM ")]
    out_log.close()
    peak = int(hwm[-1]) if hwm else rusage.ru_maxrss * 1024
    return {"tool": tool, "wall_s": round(wall, 2), "peak_rss": peak, "out_bytes": out_bytes,
            "rc": rc, "error": (err[-1][:200] if err and rc != 0 else "") if rc is not None else f"timeout {timeout}s"}


def _remove_outputs(dst: Path) -> None:
    for p in dst.parent.glob(dst.name + "*"):
        p.unlink()


def bench(layers: list[int], dim: int, tools: list[str], workdir: Path, timeout: float, log=print) -> list[dict]:
    from models.large_synthetic import chain_bytes, write_chain

    rows = []
    for n in layers:
        src = workdir / f"chain{n}x{dim}.onnx"
        write_chain(src, layers=n, dim=dim)
        size = chain_bytes(n, dim)
        log(f"# chain of {n} MatMuls {dim}x{dim}: {size / 1e9:.2f} GB")
        try:
            for tool in tools:
                dst = workdir / f"out-{tool}.onnx"
                r = run_tool(tool, src, dst, timeout)
                _remove_outputs(dst)
                r.update(layers=n, dim=dim, model_bytes=size)
                rows.append(r)
                log(_row_text(r))
        finally:
            src.unlink()
            Path(str(src) + ".data").unlink()
    return rows


def _row_text(r: dict) -> str:
    status = "ok" if r["rc"] == 0 else f"FAILED ({r['error']})"
    return (f"{r['tool']:<9} {r['model_bytes'] / 1e9:6.2f} GB  wall {r['wall_s']:8.1f} s  "
            f"peak RSS {r['peak_rss'] / 1e9:6.2f} GB ({r['peak_rss'] / r['model_bytes']:.2f}x)  "
            f"output {r['out_bytes'] / 1e9:6.3f} GB  {status}")


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
            cells.append(f"{r['wall_s']:.1f} s / {r['peak_rss'] / 1e9:.2f} GB ({r['peak_rss'] / s:.2f}x)")
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
    parser = argparse.ArgumentParser(prog="python -m qcompiler.bench_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="12,24,36", help="model sizes as MatMul counts, comma separated")
    parser.add_argument("--dim", type=int, default=4096)
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
    if unknown or not layers or min(layers) < 1 or args.dim < 1:
        print(f"error: unknown tools {unknown} (known: {', '.join(TOOLS)})" if unknown
              else "error: --layers and --dim must be positive", file=sys.stderr)
        return 2
    need = 3 * max(layers) * args.dim * args.dim * 4
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
        rows = bench(layers, args.dim, tools, workdir, args.timeout, log=lambda s: print(s, flush=True))
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
