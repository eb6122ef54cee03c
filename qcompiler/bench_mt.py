"""`qcompile bench --task mt`: a translation model's encoder + decoder files, every scheme beside
FP32 and onnxruntime's own quantizers (and any anchors the caller adds, e.g. CTranslate2), in one run.

Two folder layouts: the standard one (Optimum's encoder_model.onnx + decoder_model.onnx +
decoder_with_past_model.onnx or decoder_model_merged.onnx, config.json, and tokenizer.json or a
tokenizer transformers loads; decoded by qcompiler.seq2seq; schemes compiled with `qcompile DIR`'s
compile_folder, calibrated from calib_sources.txt or --calib-text source sentences), and the demo's
own encoder.onnx + decoder.onnx + tokenizer.model (decoded by the source checkout's models/mt).

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
import shutil
import time
import traceback
from pathlib import Path

from qcompiler import model_io
from qcompiler.bench import Variant, native_library, ort_matmul_nbits, ort_quantize_dynamic, scheme_and_target
from qcompiler.errors import UsageError, require_extra
from qcompiler.machine import cpu_model

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


def locate(model: str, data: str | None, calib_text: str | None = None) -> "MTModel | Seq2SeqModel":
    """MODEL is the model directory or one of its ONNX files; the held-out pairs come from --data or
    test.tsv there. A folder with encoder_model.onnx is the standard (Optimum) layout."""
    path = Path(model)
    directory = path if path.is_dir() else path.parent
    if not path.exists():
        raise UsageError(f"model not found: {model}")
    if (directory / "encoder_model.onnx").is_file():
        return locate_seq2seq(directory, data, calib_text)
    missing = [n for n in (ENCODER, DECODER, TOKENIZER) if not (directory / n).is_file()]
    if missing:
        raise UsageError(f"--task mt needs a model folder: Optimum's encoder_model.onnx + decoder files + config.json, "
                         f"or {ENCODER} + {DECODER} + {TOKENIZER}; {directory} has neither")
    held_out = Path(data) if data else directory / "test.tsv"
    if not held_out.is_file():
        raise UsageError(f"no held-out pairs to translate: give --data held-out.tsv (source<TAB>reference per line)")
    return MTModel(directory, held_out)


def _error(exc: Exception) -> str:
    first = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _variant_jobs(schemes, baselines: bool) -> list[tuple]:
    """(display name, file tag, kind, how) of every variant to build: onnxruntime's two quantizers
    (how = the function) when baselines, then each scheme (how = its name or file)."""
    jobs = []
    if baselines:
        jobs += [("ort quantize_dynamic int8", "ort_int8", "onnxruntime", ort_quantize_dynamic),
                 ("ort MatMulNBits 4-bit b32", "ort_nbits4", "onnxruntime", ort_matmul_nbits)]
    return jobs + [(f"qcompiler {label}", label, "qcompiler", (scheme, target))
                   for scheme, target, label in map(scheme_and_target, schemes)]


def _compile_variants(mt: MTModel, schemes, out_dir: Path, baselines: bool, console) -> list[Variant]:
    from qcompiler.pipeline import compile_model

    variants = [Variant("fp32", mt.encoder, "fp32", decoder_path=mt.decoder)]
    for name, tag, kind, how in _variant_jobs(schemes, baselines):
        paths = {part: str(out_dir / f"{part}.{tag}.onnx") for part in ("encoder", "decoder")}
        v = Variant(name, paths["encoder"], kind, decoder_path=paths["decoder"])
        console.print(f"[bold]compiling[/bold] {name} (encoder + decoder)")
        t, verify_seconds = time.perf_counter(), 0.0
        try:
            for part, src in (("encoder", mt.encoder), ("decoder", mt.decoder)):
                if kind == "onnxruntime":
                    how(src, paths[part])
                else:
                    rep = compile_model(src, scheme=how[0], target=how[1], output=paths[part], calib=mt.calib(part),
                                        verify=True, progress=True, console=console)
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
                 beam: int = 1, baselines: bool = True, console=None, max_len: int = 64, beams=None, anchors=()) -> dict:
    """Compile every scheme for both files, translate the held-out set with every variant, write JSON/MD/PNG."""
    import numpy as np

    if beams and len(beams) > 1 and not isinstance(mt, Seq2SeqModel):
        raise UsageError("several beam widths in one run need an Optimum-layout folder; run the demo's model once per width")
    beam = beams[0] if beams else beam
    if isinstance(mt, Seq2SeqModel):
        return run_seq2seq_bench(mt, schemes, out_dir, sentences, tuple(beams or (beam,)), baselines, list(anchors),
                                 console, max_len=max(max_len, 96))

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
    if result.get("layout") == "optimum":
        head = (f"Model `{result['model']}`, task mt, {result['samples']} held-out sentences; batch 1, "
                f"{result['threads']} thread(s), every sentence translated by every variant in turn; calibration: "
                f"{result.get('calibration') or 'synthesized'}. CPU: {result.get('cpu', '?')}, load average "
                f"{' '.join(map(str, result.get('load_average', [])))} at the end; CPU tok/s counts the process's CPU "
                "time (what preemption by other jobs does not inflate).")
        if not result.get("native_library", "loaded").startswith("loaded"):
            head += (f" **The qcompiler op library was {result['native_library']}: qcompiler variants ran their"
                     " standard-op fallback, so their speed is not the native kernels'.**")
        return "\n".join([head, ""] + [ln for b in result["beams"] for ln in _beam_markdown(result, b)])
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


# --- the standard (Optimum) layout ------------------------------------------------------------

from qcompiler import seq2seq as _s2s  # noqa: E402

CALIB_TEXT = "calib_sources.txt"
S2S_ENCODER = _s2s.ENCODER
_SPLIT_FILES = (_s2s.ENCODER, _s2s.DECODER, _s2s.DECODER_WITH_PAST)


@dataclasses.dataclass
class Seq2SeqModel:
    """An exported encoder-decoder folder (Optimum layout) and its held-out pairs."""

    directory: Path
    data: Path
    calib_text: str | None = None


@dataclasses.dataclass
class Anchor:
    """A translator the caller adds beside the variants (e.g. CTranslate2): translate(text, beam) ->
    (hypothesis, generated tokens incl. EOS); size = bytes on disk."""

    name: str
    kind: str
    size: int
    translate: object


class TextTokenizer:
    """encode(text) -> ids with the model's EOS, decode(ids) -> text: tokenizer.json through the
    `tokenizers` library, else the folder's tokenizer through transformers (both in the mt extra)."""

    def __init__(self, folder: Path):
        if (folder / "tokenizer.json").is_file():
            tokenizers = require_extra("tokenizers", "mt", "bench --task mt")
            self._fast = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
            self.encode = lambda text: self._fast.encode(text).ids
            # sentencepiece (and so MarianTokenizer) strips the text's ends; the Metaspace decoder may not
            self.decode = lambda ids: self._fast.decode(list(ids), skip_special_tokens=True).strip()
        else:
            transformers = require_extra("transformers", "mt", "bench --task mt")
            try:
                self._slow = transformers.AutoTokenizer.from_pretrained(str(folder))
            except Exception as exc:
                raise UsageError(f"{folder}: no tokenizer.json and transformers cannot load its tokenizer ({_error(exc)})") from None
            self.encode = lambda text: self._slow(text)["input_ids"]
            self.decode = lambda ids: self._slow.decode(list(ids), skip_special_tokens=True)


def locate_seq2seq(directory: Path, data: str | None, calib_text: str | None) -> Seq2SeqModel:
    from qcompiler.seq2seq import Seq2SeqFiles

    try:
        Seq2SeqFiles.in_folder(directory)
    except FileNotFoundError as exc:
        raise UsageError(f"--task mt: {exc}") from None
    if not (directory / "config.json").is_file():
        raise UsageError(f"--task mt: {directory} has no config.json (decoder start / EOS / pad ids)")
    held_out = Path(data) if data else directory / "test.tsv"
    if not held_out.is_file():
        raise UsageError("no held-out pairs to translate: give --data held-out.tsv (source<TAB>reference per line)")
    if calib_text is None and (directory / CALIB_TEXT).is_file():
        calib_text = str(directory / CALIB_TEXT)
    return Seq2SeqModel(directory, held_out, calib_text)


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    try:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            parts = line.split("\t")
            if len(parts) != 2:
                raise UsageError(f"cannot read the held-out pairs: {path}:{i + 1}: expected source<TAB>reference")
            pairs.append((parts[0], parts[1]))
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read the held-out pairs: {exc}") from None
    if not pairs:
        raise UsageError(f"no held-out pairs in {path}")
    return pairs


def _split_view(model: Seq2SeqModel, out_dir: Path) -> Path:
    """A folder of links to the encoder, the split decoders and the non-ONNX files (the merged
    decoder left out: the bench decodes with the split pair, compiling the merged copy too would
    double the work); the merged file alone when the folder has no split pair."""
    view = out_dir / "fp32"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    split = all((model.directory / f).is_file() for f in _SPLIT_FILES)
    for item in sorted(model.directory.iterdir()):
        if item.is_dir() or item.name.startswith("."):
            continue
        if item.suffix == ".onnx" and (item.name not in (_SPLIT_FILES if split else (S2S_ENCODER, _s2s.DECODER_MERGED))):
            continue
        os.symlink(item.resolve(), view / item.name)
    return view


def _seq2seq_variants(model: Seq2SeqModel, schemes, out_dir: Path, baselines: bool, console) -> list[tuple[Variant, Path]]:
    """(variant, its folder) for FP32, onnxruntime's quantizers (file by file) and every scheme (compile_folder)."""
    try:
        from qcompiler.folder import compile_folder
    except ImportError:  # a checkout without `qcompile DIR`: file by file, synthesized calibration
        compile_folder = _compile_files

    view = _split_view(model, out_dir)
    onnx_files = sorted(p.name for p in view.iterdir() if p.suffix == ".onnx")
    out = [(Variant("fp32", str(view / S2S_ENCODER), "fp32"), view)]
    for name, tag, kind, how in _variant_jobs(schemes, baselines):
        folder = out_dir / tag
        v = Variant(name, str(folder / S2S_ENCODER), kind)
        console.print(f"[bold]compiling[/bold] {name} ({', '.join(onnx_files)})")
        t, verify_seconds = time.perf_counter(), 0.0
        try:
            if kind == "onnxruntime":
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                for item in view.iterdir():
                    if item.suffix == ".onnx":
                        how(str(item), str(folder / item.name))
                    else:
                        os.symlink(item.resolve(), folder / item.name)
            else:
                record = compile_folder(view, scheme=how[0], target=how[1], output=folder, calib_text=model.calib_text,
                                        verify=True, progress=True, console=console)
                for fname, rec in record["files"].items():
                    ver = rec.get("verification") or {}
                    v.layers[fname] = ver.get("per_layer_rel_l2", {}) if isinstance(ver, dict) else {}
        except Exception as exc:
            v.error = _error(exc)
            if os.environ.get("QCOMPILE_DEBUG"):
                traceback.print_exc()
        v.compile_seconds = time.perf_counter() - t - verify_seconds
        out.append((v, folder))
    return out


def _compile_files(view: Path, scheme, output: Path, calib_text=None, verify=True, progress=True, console=None,
                   target: str = "ort") -> dict:
    from qcompiler.pipeline import compile_model

    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    record = {"files": {}}
    for item in sorted(view.iterdir()):
        if item.suffix == ".onnx":
            rep = compile_model(str(item), scheme=scheme, output=str(output / item.name), verify=verify, progress=progress,
                                console=console, target=target)
            record["files"][item.name] = {"verification": rep.get("verification")}
        else:
            os.symlink(item.resolve(), output / item.name)
    return record


def _metrics(sacrebleu, hyps, refs, tokens, seconds, n, cpu_seconds=None) -> dict:
    import numpy as np

    out = {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
           "exact_match": float(np.mean([a == b for a, b in zip(hyps, refs)])), "tokens_per_s": tokens / seconds,
           "tokens": tokens, "latency_ms": 1e3 * seconds / n}
    if cpu_seconds:   # process CPU time: survives preemption on a shared machine (one thread decodes at a time)
        out["cpu_tokens_per_s"] = tokens / cpu_seconds
    return out


def run_seq2seq_bench(model: Seq2SeqModel, schemes: list[str], out_dir="bench-out", sentences: int | None = None,
                      beams: tuple[int, ...] = (1,), baselines: bool = True, anchors: list[Anchor] = (), console=None,
                      max_len: int = 96, threads: int = 1) -> dict:
    """Compile every scheme (all files of the folder), translate the held-out set with every variant and
    anchor for each beam width (sentence by sentence, the order rotating), write JSON/MD/PNG/TSV."""
    sacrebleu = require_extra("sacrebleu", "mt", "bench --task mt")
    from rich.console import Console
    from rich.progress import Progress

    from qcompiler.bench import plot
    from qcompiler.seq2seq import Seq2SeqFiles, Seq2SeqTranslator, special_ids

    console = console or Console(stderr=True)
    pairs = _read_pairs(model.data)
    pairs = pairs[:sentences] if sentences else pairs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = TextTokenizer(model.directory)
    ids = special_ids(model.directory)
    built = _seq2seq_variants(model, schemes, out_dir, baselines, console)
    variants = [v for v, _ in built]
    runners = {}
    for v, folder in built:
        if v.error:
            continue
        try:
            files = Seq2SeqFiles.in_folder(folder)
            v.size = sum(model_io.file_size(p) for p in files.paths())
            v.decoder_path = files.decoder_with_past or files.decoder_merged
            tr = Seq2SeqTranslator(files, **ids, threads=threads, max_len=max_len)

            def run(text, beam, tr=tr):
                out = tr.translate(tok.encode(text), beam)
                return tok.decode(out), len(out) + 1
            runners[v.name] = run
        except Exception as exc:
            v.error = _error(exc)
    for a in anchors:
        variants.append(Variant(a.name, None, a.kind, size=a.size))
        runners[a.name] = a.translate
    names = list(runners)
    by_name = {v.name: v for v in variants}
    refs = [fr for _, fr in pairs]
    hyps_by_beam = {}
    for beam in beams:
        hyps = {n: [] for n in names}
        seconds = {n: 0.0 for n in names}
        cpu = {n: 0.0 for n in names}
        tokens = {n: 0 for n in names}
        for n in names:  # warm-up
            runners[n](pairs[0][0], beam)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"beam {beam}: {len(pairs)} sentences x {len(names)} variants (interleaved)", total=len(pairs))
            for i, (src, _) in enumerate(pairs):
                for n in names[i % len(names):] + names[: i % len(names)]:
                    try:
                        t, c = time.perf_counter(), time.process_time()
                        text, k = runners[n](src, beam)
                        seconds[n] += time.perf_counter() - t
                        cpu[n] += time.process_time() - c
                    except Exception as exc:
                        text, k = "", 1
                        by_name[n].error = by_name[n].error or "decoding failed: " + _error(exc)
                    tokens[n] += k
                    hyps[n].append(text)
                progress.update(task, completed=i + 1)
        for n in names:
            v = by_name[n]
            if not v.error:
                v.metrics.setdefault("by_beam", {})[str(beam)] = _metrics(sacrebleu, hyps[n], refs, tokens[n], seconds[n], len(pairs),
                                                                          cpu[n])
        hyps_by_beam[beam] = hyps
    for v in variants:
        first = v.metrics.get("by_beam", {}).get(str(beams[0]))
        if first:
            v.metrics.update({k: first[k] for k in ("bleu", "chrf", "exact_match", "tokens_per_s", "tokens")})
            v.latency_ms = first["latency_ms"]
    result = {"model": str(model.directory), "task": "mt", "layout": "optimum", "data": str(model.data),
              "samples": len(pairs), "beam": beams[0], "beams": list(beams), "threads": threads,
              "calibration": model.calib_text, "variants": [dataclasses.asdict(v) for v in variants],
              "cpu": cpu_model(), "load_average": [round(x, 2) for x in os.getloadavg()],
              "native_library": native_library()}
    _ratios(result, beams)
    stem = "mt"
    (out_dir / f"{stem}.bench.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{stem}.bench.md").write_text(to_markdown(result))
    for beam, hyps in hyps_by_beam.items():
        (out_dir / f"{stem}.translations.beam{beam}.tsv").write_text(
            "".join("\t".join([en, ref, *(hyps[n][i] for n in names)]) + "\n" for i, (en, ref) in enumerate(pairs)))
    plot(result, out_dir / f"{stem}.bench.png")
    result["files"] = {k: str(out_dir / f"{stem}.bench.{k}") for k in ("json", "md", "png")}
    return result


def _ratios(result: dict, beams) -> None:
    rows = result["variants"]
    fp32 = next(r for r in rows if r["kind"] == "fp32")
    ort = next((r for r in rows if r["name"] == "ort quantize_dynamic int8" and not r["error"]), None)
    for r in rows:
        for b in beams:
            m = r["metrics"].get("by_beam", {}).get(str(b))
            f = fp32["metrics"].get("by_beam", {}).get(str(b))
            o = ort["metrics"].get("by_beam", {}).get(str(b)) if ort else None
            if m and f:
                m["bleu_delta_vs_fp32"] = m["bleu"] - f["bleu"]
                m["tokens_per_s_vs_fp32"] = m["tokens_per_s"] / f["tokens_per_s"]
            if m and o:
                m["tokens_per_s_vs_ort_int8"] = m["tokens_per_s"] / o["tokens_per_s"]
                if m.get("cpu_tokens_per_s") and o.get("cpu_tokens_per_s"):
                    m["cpu_tokens_per_s_vs_ort_int8"] = m["cpu_tokens_per_s"] / o["cpu_tokens_per_s"]
        first = r["metrics"].get("by_beam", {}).get(str(beams[0]), {})
        r["size_ratio_vs_fp32"] = r["size"] / fp32["size"] if r["size"] and fp32["size"] else None
        r["tokens_per_s_vs_fp32"] = first.get("tokens_per_s_vs_fp32")
        r["tokens_per_s_vs_ort_int8"] = first.get("tokens_per_s_vs_ort_int8")
        r["speedup_vs_fp32"] = first.get("tokens_per_s_vs_fp32")
        if "bleu_delta_vs_fp32" in first:
            r["bleu_delta_vs_fp32"] = first["bleu_delta_vs_fp32"]


BEAM_COLUMNS = ["variant", "size on disk", "BLEU", "chrF", "BLEU vs FP32", "tokens/s", "tok/s vs FP32", "vs ort int8",
                "CPU tok/s", "CPU vs ort int8"]


def _beam_markdown(result: dict, beam: int) -> list[str]:
    ratio = lambda x: f"{x:.2f}x" if x else "-"  # noqa: E731
    lines = [f"{'Greedy' if beam <= 1 else f'Beam {beam}'}:", "", "| " + " | ".join(BEAM_COLUMNS) + " |",
             "|" + "---|" * len(BEAM_COLUMNS)]
    for v in result["variants"]:
        m = v["metrics"].get("by_beam", {}).get(str(beam))
        if v["error"] or not m:
            lines.append(f"| {v['name']} | failed: {v['error']} |" + " |" * (len(BEAM_COLUMNS) - 2))
            continue
        lines.append("| " + " | ".join([v["name"], f"{v['size'] / 1e6:.2f} MB", f"{m['bleu']:.2f}", f"{m['chrf']:.2f}",
                                        f"{m.get('bleu_delta_vs_fp32', 0):+.2f}", f"{m['tokens_per_s']:.0f}",
                                        ratio(m.get("tokens_per_s_vs_fp32")), ratio(m.get("tokens_per_s_vs_ort_int8")),
                                        f"{m['cpu_tokens_per_s']:.0f}" if m.get("cpu_tokens_per_s") else "-",
                                        ratio(m.get("cpu_tokens_per_s_vs_ort_int8"))]) + " |")
    return lines + [""]
