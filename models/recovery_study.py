"""Which calibrated-recovery settings hold across text sources: MiniLM compiled per setting, scored
on sentences no figure of the README uses.

Calibration: the first 128 calibration sentences of one source (models.text_sources). Scoring:
the next `--tune` calibration sentences of every OTHER source (disjoint from every evaluation
set, so choosing a setting here does not tune on the figures reported elsewhere), mean-pooled
cosine vs FP32, mean over sources and the worst one. One line of JSON per (setting, scheme) is
appended to `--log`.

    python -m models.recovery_study --calib docstrings --schemes int4,ternary \
        --setting base --setting shrink1:replace_matmul.shrink_per_channel=1,quantize_int4.shrink_per_channel=1

A setting is NAME:pass.option=value,...; `weights.key=value` changes the scheme's [weights] table
(e.g. weights.n_outliers=4); `compile.key=value` is a compile_model keyword (compile.calib_augment=2,
compile.recovery_holdout=0); `study.sequential=true` compiles twice, the second time calibrating on the
first compile's outputs (every linear's input as the already-quantized layers before it make it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _parse_setting(text: str) -> tuple[str, dict, dict, dict]:
    name, _, body = text.partition(":")
    options: dict[str, dict] = {}
    weights: dict = {}
    kwargs: dict = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        parsed = json.loads(value) if value not in ("true", "false") else value == "true"
        if section == "weights":
            weights[field] = parsed
        elif section in ("compile", "study"):
            kwargs[field if section == "compile" else f"study_{field}"] = parsed
        else:
            options.setdefault(section, {})[field] = parsed
    return name, options, weights, kwargs


def _scheme_file(scheme: str, weights: dict, tmp: Path) -> str:
    """The built-in scheme, or a copy of it with some [weights] keys replaced."""
    from qcompiler.schemes import BUILTIN_DIR

    if not weights:
        return scheme
    text = (resources.files("qcompiler") / BUILTIN_DIR / f"{scheme}.toml").read_text()
    lines, section = [], ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.split("#")[0].strip()
        elif section == "[weights]" and line.split("=")[0].strip() in weights:
            continue
        lines.append(line)
        if section == "[weights]" and line.startswith("[weights]"):
            lines += [f"{k} = {json.dumps(v)}" for k, v in weights.items()]
    path = tmp / f"{scheme}.{abs(hash(json.dumps(weights, sort_keys=True)))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _with_options(options: dict):
    """Scheme.pass_options, patched to add `options` ({pass: {field: value}})."""
    from qcompiler import schemes

    original = schemes.Scheme.pass_options

    def patched(self, pass_name):
        return {**original(self, pass_name), **options.get(pass_name, {})}

    schemes.Scheme.pass_options = patched
    return lambda: setattr(schemes.Scheme, "pass_options", original)


def _sequential(model: str, scheme: str, dst: str, calib_npz: str, kwargs: dict) -> dict:
    """Compile again with every calibration statistic taken from the compiled model `dst` (the same
    tap names: the quantized ops read the canonical model's linear inputs)."""
    import onnx_ir as ir

    from qcompiler import calibration
    from qcompiler.pipeline import compile_model

    first = dst + ".first.onnx"
    os.replace(dst, first)
    quantized = ir.load(first)
    original, plain_session = calibration.collect_stats, calibration.session_with_taps

    def on_quantized(_model, feeds, taps, **kw):
        return original(quantized, feeds, taps, **kw)

    def with_ops(model_, taps, providers=("CPUExecutionProvider",), session_options=None):
        import onnxruntime as ort

        from qcompiler import ops

        opts = session_options or ort.SessionOptions()
        ops.register(opts)
        return plain_session(model_, taps, providers, opts)

    calibration.collect_stats, calibration.session_with_taps = on_quantized, with_ops
    try:
        return compile_model(model, scheme=scheme, output=dst, calib=calib_npz, verify=False, progress=False, **kwargs)
    finally:
        calibration.collect_stats, calibration.session_with_taps = original, plain_session
        os.unlink(first)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", default="docstrings")
    ap.add_argument("--calib-sentences", type=int, default=128)
    ap.add_argument("--tune", type=int, default=128, help="scoring sentences per other source")
    ap.add_argument("--schemes", default="int4,kmeans4,bcq3,bcq2,ternary")
    ap.add_argument("--setting", action="append", default=[])
    ap.add_argument("--log", default="build/recovery_study.jsonl")
    args = ap.parse_args(argv)

    from models.minilm import encode, minilm_onnx
    from models.text_sources import SOURCES, calibration_sentences
    from qcompiler.bench import session, write_samples_npz
    from qcompiler.embedding_eval import mean_pooled
    from qcompiler.pipeline import compile_model

    model = minilm_onnx()
    out = Path(tempfile.mkdtemp(prefix="recovery-study-"))
    calib = [encode([s]) for s in calibration_sentences(args.calib, args.calib_sentences)]
    calib_npz = str(write_samples_npz(out / "calib.npz", calib))
    n = args.calib_sentences + args.tune
    scoring = {s: [encode([x]) for x in calibration_sentences(s, n)[args.calib_sentences:]]
               for s in SOURCES if s != args.calib}

    def embed(path):
        sess = session(path)
        return {s: np.concatenate([mean_pooled(sess.run(None, f)[0], f["attention_mask"]) for f in feeds])
                for s, feeds in scoring.items()}

    reference = embed(model)
    settings = [_parse_setting(t) for t in (args.setting or ["base:"])]
    for name, options, weights, kwargs in settings:
        restore = _with_options(options)
        try:
            for scheme in filter(None, args.schemes.split(",")):
                t = time.perf_counter()
                dst = str(out / f"{name}.{scheme}.onnx")
                kw = {k: v for k, v in kwargs.items() if not k.startswith("study_")}
                sch = _scheme_file(scheme, weights, out)
                rep = compile_model(model, scheme=sch, output=dst, calib=calib_npz, verify=False, progress=False, **kw)
                if kwargs.get("study_sequential"):
                    rep = _sequential(model, sch, dst, calib_npz, kw)
                seconds = time.perf_counter() - t
                emb = embed(dst)
                per = {}
                for s in scoring:
                    a, b = reference[s].astype(np.float64), emb[s].astype(np.float64)
                    per[s] = float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
                linears = next((d["linears"] for d in rep["passes"].values() if isinstance(d, dict) and "linears" in d), [])
                fit = [e["output_rel_error"] for e in linears if "output_rel_error" in e]
                row = {"setting": name, "scheme": scheme, "calib": args.calib, "mean": float(np.mean(list(per.values()))),
                       "worst": min(per.values()), "worst_source": min(per, key=per.get), "per_source": per,
                       "fit_output_rel_error": float(np.mean(fit)) if fit else None, "compile_s": round(seconds, 1),
                       "held_out": rep.get("recovery_held_out"), "options": options, "weights": weights,
                       "compile": kwargs}
                print(f"{name:<24} {scheme:<8} mean {row['mean']:.4f} worst {row['worst']:.4f} ({row['worst_source']}) "
                      f"fit err {row['fit_output_rel_error'] or 0:.4f}  {seconds:.0f} s"
                      + (f"  held-out {row['held_out']['held_output_rel_error']:.4f} vs plain "
                         f"{row['held_out']['plain_held_output_rel_error']:.4f}, {row['held_out']['fell_back_to_plain']} "
                         f"fell back" if row["held_out"] else ""), flush=True)
                with open(args.log, "a") as f:
                    f.write(json.dumps(row) + "\n")
                os.unlink(dst)
        finally:
            restore()


if __name__ == "__main__":
    main()
