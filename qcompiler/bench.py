"""`qcompile bench`: every scheme beside FP32 and onnxruntime's own quantizers, in one run.

For each variant: size on disk, accuracy for the task (embeddings: mean-pooled cosine
vs FP32; logits: top-1 agreement and cosine), batch-1 latency on one thread (timed
interleaved: round-robin over the variants, median per variant, so the machine's
noise hits all of them alike) and compile time. A scheme that fails to compile is
one row marked failed with its reason; the others still run.

Cross-source accuracy (the way models are deployed: calibrated on one kind of text, run on
others): with calibration sources (`--calib-source NAME=FILE`, each compiled separately) and
evaluation sources (`--eval-source NAME=FILE`), every variant is evaluated on every evaluation
source; a row reports the in-source figure (the evaluation source of the calibration source's
name, when given), the mean over the other sources and the worst of them. Files are .npz model
inputs or text, one sentence a line (tokenized with `--tokenizer`, a tokenizer.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from qcompiler import model_io
from qcompiler.errors import UsageError, require_extra


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
    calib_source: str | None = None  # the calibration source this variant was compiled on
    by_source: dict = dataclasses.field(default_factory=dict)  # {evaluation source: metrics}
    layers: dict = dataclasses.field(default_factory=dict)  # task mt: {part: {linear output: rel L2 vs FP32}}


_LIBRARY: dict[str, str] = {}


def native_library() -> str:
    """"loaded: PATH" or "not loaded: why" for the ai.qcompiler op library, found once per process.
    The first miss is printed to stderr: without the library the qcompiler variants run their
    standard-op function fallback, so their speed is not the native kernels' (their accuracy is)."""
    if not _LIBRARY:
        import onnxruntime as ort

        try:
            from qcompiler import ops

            _LIBRARY["status"] = "loaded: " + ops.register(ort.SessionOptions())
        except Exception as exc:   # missing, too old an onnxruntime, a broken build: all the same to a bench
            _LIBRARY["status"] = f"not loaded: {type(exc).__name__}: {exc}"
            print(f"warning: the qcompiler op library is {_LIBRARY['status']}; qcompiler variants run their "
                  "standard-op fallback, so their speed figures are not the native kernels'", file=sys.stderr)
    return _LIBRARY["status"]


def session(path: str, threads: int = 1):
    """An onnxruntime session on one file, batch-1 style (threads intra-op), our op library registered
    when it loads (native_library says whether it did)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if native_library().startswith("loaded"):
        from qcompiler import ops

        ops.register(opts)
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


def run_bench(model: str, schemes: list[str], samples: list[dict] | None, task: str = "embeddings",
              calib: str | None = None, out_dir: str | os.PathLike = "bench-out", repeats: int = 40,
              baselines: bool = True, console=None, latency_sample: dict | None = None,
              calib_sources: dict[str, list[dict]] | None = None,
              eval_sources: dict[str, list[dict]] | None = None,
              recover: str = "calibrated", recover_steps: int | None = None) -> dict:
    """Compile every scheme, run all variants on the evaluation data, write JSON/Markdown/PNG into out_dir.

    `samples` is one evaluation set (or None with `eval_sources`, {name: samples}); `calib` one
    calibration .npz, or `calib_sources` {name: samples}: every scheme is then compiled once per
    calibration source and each variant's metrics say how it does in-source and cross-source.
    `recover` / `recover_steps`: as qcompile's --recover / --recover-steps, for every scheme.
    """
    from rich.console import Console

    from qcompiler.pipeline import compile_model

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(model).name.removesuffix(".onnx")
    if eval_sources is None:
        if not samples:
            raise UsageError("bench: no evaluation samples")
        eval_sources = {"data": samples}
    calib_paths: dict[str | None, str | None] = {None: calib}
    if calib_sources:
        calib_paths = {name: str(write_samples_npz(out_dir / f"{stem}.calib-{name}.npz", feeds))
                       for name, feeds in calib_sources.items()}
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
    specs = [scheme_and_target(s) for s in schemes]
    for source, calib_path in calib_paths.items():
        for scheme, target, label in specs:
            distill = recover != "calibrated"
            tag = label + (".distill" if distill else "") + (
                f".calib-{source}" if source is not None and len(calib_paths) > 1 else "")
            dst = str(out_dir / f"{stem}.{tag}.onnx")
            v = Variant(f"qcompiler {label}" + (" distill" if distill else ""), dst, "qcompiler",
                        calib_source=source)
            console.print(f"[bold]compiling[/bold] {scheme}" + (f" (calibration: {source})" if source else ""))
            t = time.perf_counter()
            try:
                compile_model(model, scheme=scheme, output=dst, calib=calib_path, verify=False, progress=True,
                              console=console, recover=recover, recover_steps=recover_steps, target=target)
            except Exception as exc:
                v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                if os.environ.get("QCOMPILE_DEBUG"):
                    traceback.print_exc()
            v.compile_seconds = time.perf_counter() - t
            variants.append(v)

    first_calib = next(iter(calib_paths))
    timed = {}
    references: dict[str, list] = {}
    for v in variants:
        if v.error:
            continue
        try:
            v.size = model_io.file_size(v.path)
            sess = session(v.path)
            for src, src_samples in eval_sources.items():
                with console.status(f"evaluating {v.name} on {len(src_samples)} samples of {src} ..."):
                    outs, m = _evaluate(task, sess, src_samples, references.get(src))
                if src not in references:
                    references[src] = outs
                    m = {"cosine_mean": 1.0, "cosine_min": 1.0, **({"top1_agreement": 1.0} if task == "logits" else {})}
                v.by_source[src] = m
            v.metrics = summarize_sources(v.by_source, v.calib_source)
            if v.kind != "qcompiler" or v.calib_source == first_calib:
                timed[v.name] = sess     # latency does not depend on the calibration data
        except Exception as exc:
            v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    first_eval = next(iter(eval_sources.values()))
    with console.status(f"timing batch-1 latency, one thread, {repeats} interleaved rounds ..."):
        lat = _interleaved_latency(timed, latency_sample or first_eval[0], repeats)
    for v in variants:
        if v.kind != "qcompiler" or v.calib_source == first_calib:
            v.latency_ms = lat.get(v.name)
        elif not v.error:   # the same scheme compiled on other calibration data: the same kernels
            same = next((u for u in variants if u.name == v.name and u.calib_source == first_calib), None)
            v.latency_ms = same.latency_ms if same else None
    result = {
        "model": model, "task": task, "samples": sum(len(x) for x in eval_sources.values()), "repeats": repeats,
        "eval_sources": {k: len(x) for k, x in eval_sources.items()},
        "calib_sources": [k for k in calib_paths if k is not None],
        "variants": [dataclasses.asdict(v) for v in variants], "native_library": native_library(),
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


def summarize_sources(by_source: dict[str, dict], calib_source: str | None) -> dict:
    """One variant's headline metrics from its per-source ones.

    cosine_mean / cosine_min: over the sources other than the calibration source (all of them for
    an uncalibrated variant, or when only that source was evaluated): the mean of the sources'
    means and the lowest single cosine; worst_source / cosine_worst_source: the source of the lowest
    mean; in_source_mean: the calibration source's own evaluation set, when it was evaluated.
    """
    others = {k: m for k, m in by_source.items() if k != calib_source} or dict(by_source)
    if not others:
        return {}
    worst = min(others, key=lambda k: others[k]["cosine_mean"])
    out = {"cosine_mean": float(np.mean([m["cosine_mean"] for m in others.values()])),
           "cosine_min": float(min(m["cosine_min"] for m in others.values())),
           "worst_source": worst, "cosine_worst_source": others[worst]["cosine_mean"],
           "cross_sources": sorted(others)}
    if "top1_agreement" in next(iter(others.values())):
        out["top1_agreement"] = float(np.mean([m["top1_agreement"] for m in others.values()]))
    if calib_source is not None and calib_source in by_source and len(by_source) > 1:
        out["in_source_mean"] = by_source[calib_source]["cosine_mean"]
    return out


def write_samples_npz(path: Path, feeds: list[dict]) -> Path:
    """Batch-1 samples of varying length as one calibration .npz: padded to the longest with
    id 0 and attention mask 0 (calibration leaves masked positions out of its statistics)."""
    if not feeds:
        raise UsageError("a calibration source has no samples")
    longest = max(next(iter(f.values())).shape[-1] for f in feeds)
    arrays = {}
    for name in feeds[0]:
        rows = []
        for f in feeds:
            a = f[name]
            pad = [(0, 0)] * (a.ndim - 1) + [(0, longest - a.shape[-1])]
            rows.append(np.pad(a, pad) if a.ndim >= 2 else a)
        arrays[name] = np.concatenate(rows)
    tmp = path.with_name("." + path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _cross(result: dict) -> bool:
    return len(result.get("eval_sources", {})) > 1


def _row_cells(v: dict, cross: bool) -> list[str]:
    m = v["metrics"]
    if not cross:
        cos = f"{m.get('cosine_mean', float('nan')):.4f} / {m.get('cosine_min', float('nan')):.4f}"
        if "top1_agreement" in m:
            cos += f" (top-1 {m['top1_agreement']:.3f})"
        return [cos]
    ins = f"{m['in_source_mean']:.4f}" if "in_source_mean" in m else "-"
    return [ins, f"{m.get('cosine_mean', float('nan')):.4f}",
            f"{m.get('cosine_worst_source', float('nan')):.4f} ({m.get('worst_source', '?')})"]


def to_markdown(result: dict) -> str:
    cross = _cross(result)
    sources = ", ".join(f"{k} ({n})" for k, n in result.get("eval_sources", {}).items())
    head = (f"Model `{Path(result['model']).name}`, task {result['task']}, {result['samples']} samples"
            + (f" from {sources}" if cross else "") + "; "
            f"latency batch 1, one thread, median of {result['repeats']} interleaved runs.")
    if not result.get("native_library", "loaded").startswith("loaded"):
        head += (f" **The qcompiler op library was {result['native_library']}: qcompiler variants ran their"
                 " standard-op fallback, so their latency is not the native kernels'.**")
    if cross:
        head += (" Cross-source: the mean over the evaluation sources other than the calibration source"
                 " (all of them for uncalibrated variants), and the worst of them.")
        cols = "| variant | calibrated on | size | in-source | cross-source mean | worst source | latency | vs FP32 | compile |"
    else:
        cols = "| variant | size | cosine mean / min | latency | vs FP32 | compile |"
    lines = [head, "", cols, "|" + "---|" * (cols.count("|") - 1)]
    for v in result["variants"]:
        calib = [v.get("calib_source") or "-"] if cross else []
        if v["error"]:
            lines.append("| " + " | ".join([v["name"], *calib, f"failed: {v['error']}"]) + " |" + " |" * (cols.count("|") - 3 - len(calib)))
            continue
        lat = f"{v['latency_ms']:.2f} ms" if v["latency_ms"] else "-"
        sp = f"{v['speedup_vs_fp32']:.2f}x" if v["speedup_vs_fp32"] else "-"
        lines.append("| " + " | ".join([v["name"], *calib, f"{v['size'] / 1e6:.1f} MB", *_row_cells(v, cross), lat, sp,
                                       f"{v['compile_seconds']:.1f} s"]) + " |")
    if cross:
        lines += ["", "Per evaluation source (cosine mean):", ""]
        names = list(result["eval_sources"])
        lines += ["| variant | calibrated on | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
        for v in result["variants"]:
            if not v["error"]:
                lines.append(f"| {v['name']} | {v.get('calib_source') or '-'} | "
                             + " | ".join(f"{v['by_source'][n]['cosine_mean']:.4f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def print_table(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=120)
    cross = _cross(result)
    title = f"{Path(result['model']).name} ({result['task']}, {result['samples']} samples"
    title += f" from {len(result['eval_sources'])} sources)" if cross else ")"
    table = Table(title=title)
    cols = (("variant", "calibrated on", "size", "in-source", "cross mean", "worst source", "latency b1", "vs FP32", "compile")
            if cross else ("variant", "size", "cosine mean", "cosine min", "latency b1", "vs FP32", "compile"))
    for col in cols:
        table.add_column(col, justify="left" if col in ("variant", "calibrated on") else "right")
    for v in result["variants"]:
        calib = [v.get("calib_source") or "-"] if cross else []
        if v["error"]:
            table.add_row(v["name"], *calib, "[red]failed[/red]", v["error"][:60], *[""] * (len(cols) - 3 - len(calib)))
            continue
        m = v["metrics"]
        acc = _row_cells(v, True) if cross else [f"{m.get('cosine_mean', 0):.4f}", f"{m.get('cosine_min', 0):.4f}"]
        table.add_row(v["name"], *calib, f"{v['size'] / 1e6:.1f} MB", *acc,
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
        ax.scatter(v["size"] / 1e6, v["metrics"].get(metric, 0), color=colors.get(v["kind"], "#2ca02c"), s=40)
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
                color=[colors.get(v["kind"], "#2ca02c") for v in ok])
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


def scheme_and_target(spec: str) -> tuple[str, str, str]:
    """A bench scheme spec, NAME or NAME@TARGET (e.g. int4@qcompiler: the int4 scheme compiled with
    --target qcompiler), as (scheme, target, label); the label names the variant and its files."""
    from qcompiler.context import TARGETS

    scheme, _, target = spec.rpartition("@") if "@" in spec else (spec, "", "ort")
    if target not in TARGETS or not scheme:
        raise UsageError(f"scheme '{spec}': the target after @ is one of {', '.join(TARGETS)}")
    return scheme, target, Path(scheme).stem + ("" if target == "ort" else f"@{target}")


def parse_source_specs(specs, option: str) -> dict[str, str]:
    """["name=path", "path", ...] -> {name: path} (a bare path is named after its file)."""
    out: dict[str, str] = {}
    for spec in specs or ():
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name.split(".")[0], spec
        if not name or not path:
            raise UsageError(f"{option} takes NAME=FILE or FILE, got {spec!r}")
        if name in out:
            raise UsageError(f"{option}: source {name!r} given twice")
        if not Path(path).is_file():
            raise UsageError(f"{option}: {path} is not a file")
        out[name] = path
    return out


def load_source(path: str, model: str, tokenizer: str | None = None, limit: int | None = None,
                max_len: int = 128) -> list[dict]:
    """Batch-1 samples of one source file: .npz model inputs, or text (one sentence a line, blank
    lines skipped), tokenized by `tokenizer` (a tokenizer.json, or a directory holding one)."""
    if path.endswith(".npz"):
        samples = load_samples(path, model)
    else:
        if tokenizer is None:
            raise UsageError(f"{path}: a text source needs --tokenizer (the model's tokenizer.json)")
        try:
            lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read text source {path}: {exc}") from None
        samples = tokenize(model, [ln for ln in lines if ln], tokenizer, max_len)
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise UsageError(f"source {path} has no samples")
    return samples


def tokenize(model: str, sentences: list[str], tokenizer: str, max_len: int = 128) -> list[dict]:
    """Each sentence as batch-1 int64 inputs named after the model's inputs (ids, mask of ones,
    token types of zeros), with the tokenizer's special tokens, truncated to max_len."""
    tokenizers = require_extra("tokenizers", "text", "a text source (--calib-source / --eval-source with text)")
    from qcompiler import calibration

    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:
        raise UsageError(f"--tokenizer: cannot load {path} ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None
    tok.no_padding()
    tok.enable_truncation(max_len)
    specs = calibration.model_input_specs(model_io.load_model(model))
    out = []
    for enc in tok.encode_batch(sentences):
        ids = np.asarray(enc.ids, np.int64)[None]
        feed = {}
        for name, _, _ in specs:
            low = name.lower()
            if "mask" in low:
                feed[name] = np.ones_like(ids)
            elif "type" in low or "segment" in low:
                feed[name] = np.zeros_like(ids)
            elif "position" in low:
                feed[name] = np.arange(ids.shape[1], dtype=np.int64)[None]
            else:
                feed[name] = ids
        out.append(feed)
    return out


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
