"""`qcompile bench`: every scheme beside FP32 and onnxruntime's own quantizers, in one run.

For each variant: size on disk, accuracy for the task (embeddings: mean-pooled cosine
vs FP32; logits: top-1 agreement and cosine), batch-1 latency on one thread (timed
interleaved: round-robin over the variants, median per variant, so the machine's
noise hits all of them alike) and compile time. A scheme that fails to compile is
one row marked failed with its reason; the others still run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from pathlib import Path

import numpy as np

from qcompiler import model_io
from qcompiler.errors import UsageError


@dataclasses.dataclass
class Variant:
    name: str
    path: str | None
    kind: str                 # "fp32" | "onnxruntime" | "qcompiler"
    compile_seconds: float = 0.0
    size: int = 0
    error: str = ""
    metrics: dict = dataclasses.field(default_factory=dict)
    latency_ms: float | None = None
    decoder_path: str | None = None  # task mt: `path` is the encoder
    layers: dict = dataclasses.field(default_factory=dict)  # task mt: {part: {linear output: rel L2 vs FP32}}


def session(path: str, threads: int = 1):
    """An onnxruntime session on one file, batch-1 style (threads intra-op), our op library registered."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        from qcompiler import ops

        ops.register(opts)
    except Exception:
        pass
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_quantize_dynamic(src: str, dst: str) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice is noise here
    quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)


def ort_matmul_nbits(src: str, dst: str, bits: int = 4, block_size: int = 32) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    kwargs = dict(block_size=block_size, is_symmetric=True, accuracy_level=4)
    try:
        q = MatMulNBitsQuantizer(onnx.load(src), bits=bits, **kwargs)
    except TypeError:
        q = MatMulNBitsQuantizer(onnx.load(src), **kwargs)
    q.process()
    q.model.save_model_to_file(dst, use_external_data_format=False)


def _feeds_for(session, sample: dict) -> dict:
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in sample.items() if k in names}


def _evaluate(task: str, sess, samples: list[dict], reference: list[np.ndarray] | None):
    from qcompiler.embedding_eval import mean_pooled

    outs = []
    for s in samples:
        y = sess.run(None, _feeds_for(sess, s))[0]
        if task == "embeddings":
            mask = s.get("attention_mask", np.ones(y.shape[:2], np.int64))
            y = mean_pooled(y, mask)
        outs.append(y)
    if reference is None:
        return outs, {}
    cos, top1 = [], []
    for r, y in zip(reference, outs):
        a = r.reshape(-1, r.shape[-1]).astype(np.float64)
        b = y.reshape(-1, y.shape[-1]).astype(np.float64)
        cos.extend((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30))
        if task == "logits":
            top1.extend((a.argmax(1) == b.argmax(1)).tolist())
    metrics = {"cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos))}
    if task == "logits":
        metrics["top1_agreement"] = float(np.mean(top1))
    return outs, metrics


def _interleaved_latency(sessions: dict, sample: dict, repeats: int) -> dict[str, float]:
    times = {name: [] for name in sessions}
    for name, sess in sessions.items():  # warm-up
        for _ in range(3):
            sess.run(None, _feeds_for(sess, sample))
    for _ in range(repeats):
        for name, sess in sessions.items():
            feeds = _feeds_for(sess, sample)
            t = time.perf_counter()
            sess.run(None, feeds)
            times[name].append(time.perf_counter() - t)
    return {name: 1e3 * float(np.median(v)) for name, v in times.items()}


def run_bench(model: str, schemes: list[str], samples: list[dict], task: str = "embeddings",
              calib: str | None = None, out_dir: str | os.PathLike = "bench-out", repeats: int = 40,
              baselines: bool = True, console=None, latency_sample: dict | None = None) -> dict:
    """Compile every scheme, run all variants on `samples`, write JSON/Markdown/PNG into out_dir."""
    from rich.console import Console

    from qcompiler.pipeline import compile_model

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(model).name.removesuffix(".onnx")
    variants = [Variant("fp32", model, "fp32")]
    if baselines:
        for name, fn in (("ort quantize_dynamic int8", ort_quantize_dynamic), ("ort MatMulNBits 4-bit b32", ort_matmul_nbits)):
            dst = str(out_dir / f"{stem}.{name.split()[1]}.{'int8' if 'int8' in name else 'nbits4'}.onnx")
            v = Variant(name, dst, "onnxruntime")
            with console.status(f"onnxruntime baseline: {name} ..."):
                t = time.perf_counter()
                try:
                    fn(model, dst)
                except Exception as exc:
                    v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                v.compile_seconds = time.perf_counter() - t
            variants.append(v)
    for scheme in schemes:
        dst = str(out_dir / f"{stem}.{Path(scheme).stem}.onnx")
        v = Variant(f"qcompiler {Path(scheme).stem}", dst, "qcompiler")
        console.print(f"[bold]compiling[/bold] {scheme}")
        t = time.perf_counter()
        try:
            compile_model(model, scheme=scheme, output=dst, calib=calib, verify=False, progress=True, console=console)
        except Exception as exc:
            v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            if os.environ.get("QCOMPILE_DEBUG"):
                traceback.print_exc()
        v.compile_seconds = time.perf_counter() - t
        variants.append(v)

    sessions = {}
    reference = None
    for v in variants:
        if v.error:
            continue
        try:
            v.size = model_io.file_size(v.path)
            sess = session(v.path)
            with console.status(f"evaluating {v.name} on {len(samples)} samples ..."):
                outs, v.metrics = _evaluate(task, sess, samples, reference)
            if reference is None:
                reference = outs
                v.metrics = {"cosine_mean": 1.0, "cosine_min": 1.0, **({"top1_agreement": 1.0} if task == "logits" else {})}
            sessions[v.name] = sess
        except Exception as exc:
            v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    with console.status(f"timing batch-1 latency, one thread, {repeats} interleaved rounds ..."):
        lat = _interleaved_latency(sessions, latency_sample or samples[0], repeats)
    for v in variants:
        v.latency_ms = lat.get(v.name)
    result = {
        "model": model, "task": task, "samples": len(samples), "repeats": repeats,
        "variants": [dataclasses.asdict(v) for v in variants],
    }
    fp32 = variants[0]
    for row in result["variants"]:
        row["size_ratio_vs_fp32"] = row["size"] / fp32.size if row["size"] and fp32.size else None
        row["speedup_vs_fp32"] = (fp32.latency_ms / row["latency_ms"]) if row["latency_ms"] and fp32.latency_ms else None
    (out_dir / f"{stem}.bench.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{stem}.bench.md").write_text(to_markdown(result))
    plot(result, out_dir / f"{stem}.bench.png")
    result["files"] = {k: str(out_dir / f"{stem}.bench.{k}") for k in ("json", "md", "png")}
    return result


def to_markdown(result: dict) -> str:
    lines = [f"Model `{Path(result['model']).name}`, task {result['task']}, {result['samples']} samples; "
             f"latency batch 1, one thread, median of {result['repeats']} interleaved runs.", "",
             "| variant | size | cosine mean / min | latency | vs FP32 | compile |", "|---|---|---|---|---|---|"]
    for v in result["variants"]:
        if v["error"]:
            lines.append(f"| {v['name']} | failed: {v['error']} | | | | |")
            continue
        m = v["metrics"]
        cos = f"{m.get('cosine_mean', float('nan')):.4f} / {m.get('cosine_min', float('nan')):.4f}"
        if "top1_agreement" in m:
            cos += f" (top-1 {m['top1_agreement']:.3f})"
        lat = f"{v['latency_ms']:.2f} ms" if v["latency_ms"] else "-"
        sp = f"{v['speedup_vs_fp32']:.2f}x" if v["speedup_vs_fp32"] else "-"
        lines.append(f"| {v['name']} | {v['size'] / 1e6:.1f} MB | {cos} | {lat} | {sp} | {v['compile_seconds']:.1f} s |")
    return "\n".join(lines) + "\n"


def print_table(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=120)
    table = Table(title=f"{Path(result['model']).name} ({result['task']}, {result['samples']} samples)")
    for col in ("variant", "size", "cosine mean", "cosine min", "latency b1", "vs FP32", "compile"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v in result["variants"]:
        if v["error"]:
            table.add_row(v["name"], "[red]failed[/red]", v["error"][:60], "", "", "", "")
            continue
        m = v["metrics"]
        table.add_row(v["name"], f"{v['size'] / 1e6:.1f} MB", f"{m.get('cosine_mean', 0):.4f}", f"{m.get('cosine_min', 0):.4f}",
                      f"{v['latency_ms']:.2f} ms" if v["latency_ms"] else "-",
                      f"{v['speedup_vs_fp32']:.2f}x" if v["speedup_vs_fp32"] else "-", f"{v['compile_seconds']:.1f} s")
    console.print(table)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mt = result["task"] == "mt"
    metric, label = ("bleu", "BLEU on the held-out set") if mt else ("cosine_mean", "cosine vs FP32 (mean)")
    fig, axes = plt.subplots(1, 3 if mt else 1, figsize=(17 if mt else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    colors = {"fp32": "black", "onnxruntime": "#d62728", "qcompiler": "#1f77b4"}
    ok = [v for v in result["variants"] if not v["error"] and v["metrics"]]
    for i, v in enumerate(ok):  # labels staggered: variants of equal accuracy sit on one line
        ax.scatter(v["size"] / 1e6, v["metrics"].get(metric, 0), color=colors[v["kind"]], s=40)
        ax.annotate(v["name"].replace("qcompiler ", ""), (v["size"] / 1e6, v["metrics"].get(metric, 0)),
                    fontsize=8, xytext=(4, 4 - 10 * (i % 3)), textcoords="offset points")
    ax.set_xscale("log")  # the low-bit variants crowd together on a linear axis
    plain = matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}" if f"{x:.0e}"[0] in "25" else ""))
    ax.set_xlabel("size on disk (MB, log scale)" + (", encoder + decoder" if mt else ""))
    ax.set_ylabel(label)
    if mt:  # second panel: decoding speed of every variant
        bx = axes[0][1]
        bx.barh([v["name"].replace("qcompiler ", "") for v in ok], [v["metrics"]["tokens_per_s"] for v in ok],
                color=[colors[v["kind"]] for v in ok])
        bx.invert_yaxis()
        bx.set_xlabel("tokens/s, batch 1, one thread")
        bx.grid(alpha=0.3, axis="x")
        _plot_layer_errors(axes[0][2], ok)
    ax.set_title(f"{Path(result['model']).name}: size vs accuracy\n(black FP32, red onnxruntime, blue qcompiler)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _plot_layer_errors(ax, variants) -> None:
    """Per scheme: mean relative L2 error of the linears' outputs, bars from the best to the worst layer."""
    rows = [(v["name"].replace("qcompiler ", ""), [e for part in v.get("layers", {}).values() for e in part.values()])
            for v in variants]
    rows = [(name, np.asarray(errs)) for name, errs in rows if errs]
    if not rows:
        ax.set_axis_off()
        return
    means = [e.mean() for _, e in rows]
    lo = [m - e.min() for m, (_, e) in zip(means, rows)]
    hi = [e.max() - m for m, (_, e) in zip(means, rows)]
    ax.bar([n for n, _ in rows], means, yerr=[lo, hi], capsize=4, color="#1f77b4")
    ax.set_yscale("log")
    ax.set_ylabel("rel. L2 error per linear vs FP32")
    ax.set_title("per-layer error: mean, bars min..max (encoder + decoder)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8, rotation=30)
    ax.grid(alpha=0.3, axis="y")


def load_samples(data: str | None, model: str, n: int = 64) -> list[dict]:
    """Inputs for the bench: an .npz (one array per input, first axis samples) or synthesized ones."""
    import onnx_ir as ir

    from qcompiler import calibration

    m = model_io.load_model(model)
    if data:
        return calibration.load_calibration(data, m)
    try:
        return calibration.synthesize_inputs(m, samples=n, seed=123)
    except Exception as exc:
        raise UsageError(f"cannot make inputs for this model ({exc}); give --data inputs.npz") from None
