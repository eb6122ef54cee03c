"""`qcompile bench --task mt`: an encoder + decoder-with-past translation pair, every scheme beside
FP32 and onnxruntime's own quantizers, in one run.

Each variant quantizes BOTH files (the schemes with qcompiler.pipeline.compile_model and the
model's own calibration inputs; the onnxruntime baselines with quantize_dynamic / MatMulNBits).
Accuracy: BLEU and chrF (sacrebleu) of greedy (or beam) translations of the held-out set, and per
qcompiler scheme the relative L2 error of every linear's output vs FP32 on 8 calibration samples
(the pipeline's verification, not counted in the compile time). Speed:
batch 1, one thread; every sentence is translated by every variant in turn (the order rotating per
sentence), so the machine's noise hits all variants alike; tokens/s = generated tokens (EOS
included) / decoding time, latency = mean time per sentence. Size = encoder + decoder on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from pathlib import Path

from qcompiler import model_io
from qcompiler.bench import Variant, ort_matmul_nbits, ort_quantize_dynamic
from qcompiler.errors import UsageError, require_extra

ENCODER, DECODER, TOKENIZER = "encoder.onnx", "decoder.onnx", "tokenizer.model"
CALIB = {"encoder": "calib_encoder.npz", "decoder": "calib_decoder.npz"}


@dataclasses.dataclass
class MTModel:
    """The files of one translation model: a directory with encoder.onnx, decoder.onnx, tokenizer.model."""

    directory: Path
    data: Path

    @property
    def encoder(self) -> str:
        return str(self.directory / ENCODER)

    @property
    def decoder(self) -> str:
        return str(self.directory / DECODER)

    @property
    def tokenizer(self) -> str:
        return str(self.directory / TOKENIZER)

    def calib(self, part: str) -> str | None:
        path = self.directory / CALIB[part]
        return str(path) if path.exists() else None


def locate(model: str, data: str | None) -> MTModel:
    """MODEL is the model directory or its encoder.onnx; the held-out pairs come from --data or test.tsv there."""
    path = Path(model)
    directory = path if path.is_dir() else path.parent
    if not path.exists():
        raise UsageError(f"model not found: {model}")
    missing = [n for n in (ENCODER, DECODER, TOKENIZER) if not (directory / n).is_file()]
    if missing:
        raise UsageError(f"--task mt needs a model directory (or its encoder.onnx) holding {ENCODER}, {DECODER} and "
                         f"{TOKENIZER}; {directory} lacks {', '.join(missing)}")
    held_out = Path(data) if data else directory / "test.tsv"
    if not held_out.is_file():
        raise UsageError(f"no held-out pairs to translate: give --data held-out.tsv (source<TAB>reference per line)")
    return MTModel(directory, held_out)


def _error(exc: Exception) -> str:
    first = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _compile_variants(mt: MTModel, schemes, out_dir: Path, baselines: bool, console) -> list[Variant]:
    from qcompiler.pipeline import compile_model

    variants = [Variant("fp32", mt.encoder, "fp32", decoder_path=mt.decoder)]
    jobs = []
    if baselines:
        jobs += [("ort quantize_dynamic int8", "ort_int8", "onnxruntime", ort_quantize_dynamic),
                 ("ort MatMulNBits 4-bit b32", "ort_nbits4", "onnxruntime", ort_matmul_nbits)]
    jobs += [(f"qcompiler {Path(s).stem}", Path(s).stem, "qcompiler", s) for s in schemes]
    for name, tag, kind, how in jobs:
        paths = {part: str(out_dir / f"{part}.{tag}.onnx") for part in ("encoder", "decoder")}
        v = Variant(name, paths["encoder"], kind, decoder_path=paths["decoder"])
        console.print(f"[bold]compiling[/bold] {name} (encoder + decoder)")
        t, verify_seconds = time.perf_counter(), 0.0
        try:
            for part, src in (("encoder", mt.encoder), ("decoder", mt.decoder)):
                if kind == "onnxruntime":
                    how(src, paths[part])
                else:
                    rep = compile_model(src, scheme=how, output=paths[part], calib=mt.calib(part), verify=True,
                                        progress=True, console=console)
                    verification = rep.get("verification") or {}
                    v.layers[part] = verification.get("per_layer_rel_l2", {})
                    verify_seconds += rep.get("seconds", {}).get("verify", 0.0)
        except Exception as exc:
            v.error = _error(exc)
            if os.environ.get("QCOMPILE_DEBUG"):
                traceback.print_exc()
        v.compile_seconds = time.perf_counter() - t - verify_seconds
        variants.append(v)
    return variants


def run_mt_bench(mt: MTModel, schemes: list[str], out_dir: str | os.PathLike = "bench-out", sentences: int | None = None,
                 beam: int = 1, baselines: bool = True, console=None, max_len: int = 64) -> dict:
    """Compile every scheme for both files, translate the held-out set with every variant, write JSON/MD/PNG."""
    import numpy as np

    sacrebleu = require_extra("sacrebleu", "mt", "bench --task mt")
    from rich.console import Console
    from rich.progress import Progress

    try:
        from models.mt.data import read_tsv
        from models.mt.decode import OnnxTranslator
        from models.mt.tokenizer import Tokenizer
    except ImportError:
        raise UsageError("bench --task mt on this model format needs the source checkout's models/mt "
                         "(run it from the repository root)") from None
    from qcompiler.bench import plot

    console = console or Console(stderr=True)
    try:
        pairs = read_tsv(mt.data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the held-out pairs: {exc}") from None
    pairs = pairs[:sentences] if sentences else pairs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(mt.tokenizer)
    variants = _compile_variants(mt, schemes, out_dir, baselines, console)
    translators = {}
    for v in variants:
        if v.error:
            continue
        try:
            v.size = model_io.file_size(v.path) + model_io.file_size(v.decoder_path)
            translators[v.name] = OnnxTranslator(v.path, v.decoder_path, threads=1, max_len=max_len)
        except Exception as exc:
            v.error = _error(exc)
    names = list(translators)
    hyps = {n: [] for n in names}
    seconds = {n: 0.0 for n in names}
    tokens = {n: 0 for n in names}
    sources = [tok.encode(en) for en, _ in pairs]
    by_name = {v.name: v for v in variants}
    for n in names:  # warm-up
        translators[n].translate(sources[0], beam)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"translating {len(pairs)} sentences x {len(names)} variants (interleaved)", total=len(pairs))
        for i, src in enumerate(sources):
            for n in names[i % len(names):] + names[: i % len(names)]:
                try:
                    t = time.perf_counter()
                    out = translators[n].translate(src, beam)
                    seconds[n] += time.perf_counter() - t
                except Exception as exc:
                    out = []
                    by_name[n].error = by_name[n].error or "decoding failed: " + _error(exc)
                tokens[n] += len(out) + 1
                hyps[n].append(tok.decode(out))
            progress.update(task, completed=i + 1)
    refs = [fr for _, fr in pairs]
    for v in variants:
        if v.error or v.name not in hyps:
            continue
        h = hyps[v.name]
        v.metrics = {"bleu": sacrebleu.corpus_bleu(h, [refs]).score, "chrf": sacrebleu.corpus_chrf(h, [refs]).score,
                     "exact_match": float(np.mean([a == b for a, b in zip(h, refs)])),
                     "tokens_per_s": tokens[v.name] / seconds[v.name], "tokens": tokens[v.name]}
        v.latency_ms = 1e3 * seconds[v.name] / len(pairs)
    fp32 = variants[0]
    ort_int8 = next((v for v in variants if v.name == "ort quantize_dynamic int8" and not v.error), None)
    result = {"model": str(mt.directory), "task": "mt", "data": str(mt.data), "samples": len(pairs), "beam": beam,
              "variants": [dataclasses.asdict(v) for v in variants]}
    for row in result["variants"]:
        tps = row["metrics"].get("tokens_per_s")
        row["size_ratio_vs_fp32"] = row["size"] / fp32.size if row["size"] and fp32.size else None
        row["speedup_vs_fp32"] = (fp32.latency_ms / row["latency_ms"]) if row["latency_ms"] and fp32.latency_ms else None
        row["tokens_per_s_vs_fp32"] = tps / fp32.metrics["tokens_per_s"] if tps and fp32.metrics.get("tokens_per_s") else None
        row["tokens_per_s_vs_ort_int8"] = tps / ort_int8.metrics["tokens_per_s"] if tps and ort_int8 and ort_int8.metrics else None
        if fp32.metrics.get("bleu") is not None and "bleu" in row["metrics"]:
            row["bleu_delta_vs_fp32"] = row["metrics"]["bleu"] - fp32.metrics["bleu"]
    stem = "mt"
    (out_dir / f"{stem}.bench.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{stem}.bench.md").write_text(to_markdown(result))
    (out_dir / f"{stem}.translations.tsv").write_text(
        "".join("\t".join([en, ref, *(hyps[n][i] for n in names)]) + "\n" for i, (en, ref) in enumerate(pairs)))
    plot(result, out_dir / f"{stem}.bench.png")
    result["files"] = {k: str(out_dir / f"{stem}.bench.{k}") for k in ("json", "md", "png")}
    return result


def _row(v: dict) -> list[str]:
    m = v["metrics"]
    ratio = lambda x: f"{x:.2f}x" if x else "-"  # noqa: E731
    return [v["name"], f"{v['size'] / 1e6:.2f} MB", f"{m['bleu']:.2f}", f"{m['chrf']:.2f}", f"{m['exact_match']:.3f}",
            f"{m['tokens_per_s']:.0f}", f"{v['latency_ms']:.2f}", ratio(v["tokens_per_s_vs_fp32"]),
            ratio(v["tokens_per_s_vs_ort_int8"]), f"{v['compile_seconds']:.1f} s"]


COLUMNS = ["variant", "size enc+dec", "BLEU", "chrF", "exact", "tokens/s", "ms/sentence", "tok/s vs FP32",
           "vs ort int8", "compile"]


def to_markdown(result: dict) -> str:
    lines = [f"Model `{result['model']}`, task mt, {result['samples']} held-out sentences, "
             f"{'greedy' if result['beam'] <= 1 else 'beam ' + str(result['beam'])} decoding; batch 1, one thread, "
             "every sentence translated by every variant in turn.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for v in result["variants"]:
        if v["error"] or not v["metrics"]:
            lines.append(f"| {v['name']} | failed: {v['error']} |" + " |" * (len(COLUMNS) - 2))
        else:
            lines.append("| " + " | ".join(_row(v)) + " |")
    return "\n".join(lines) + "\n"


def print_table(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=140)
    table = Table(title=f"{Path(result['model']).name} (mt, {result['samples']} held-out sentences, batch 1, one thread)")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=col == "variant")
    for v in result["variants"]:
        if v["error"] or not v["metrics"]:
            table.add_row(v["name"], "[red]failed[/red]", v["error"][:70], *[""] * (len(COLUMNS) - 3))
        else:
            table.add_row(*_row(v))
    console.print(table)
