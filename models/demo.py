"""`make demo`: the real all-MiniLM-L6-v2 and our own English -> French translation model, each
compiled with several schemes, side by side with FP32 and onnxruntime's own quantizers
(size; embedding cosine / BLEU and chrF on held-out pairs; batch-1 latency and tokens/s on one
thread). The exported and trained models are cached; on a fresh machine the MT model is trained
first (about 2 minutes on two cores).

MiniLM is calibrated on 128 sentences of one text source (models.text_sources; default the
Python docstrings) and evaluated on 256 held-out sentences of every source: the in-source figure
beside the mean and the worst over the other sources. ``--calib-sources all`` compiles every
scheme once per source (the full grid of the README's table; about 6x the compiles)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from rich.console import Console

from qcompiler.schemes import builtin_scheme_names

DEMO_SCHEMES = ["int8", "int4", "ternary", "bcq2", "bcq3", "kmeans4", "mixed"]


DEMO_CALIB_SOURCE = "docstrings"
CALIB_SENTENCES = 128


def calibration_samples(source: str, n: int = CALIB_SENTENCES) -> list[dict]:
    from models.minilm import encode
    from models.text_sources import calibration_sentences

    return [encode([s], max_len=128) for s in calibration_sentences(source, n)]


def evaluation_samples(source: str, n: int = 256) -> list[dict]:
    from models.minilm import encode
    from models.text_sources import evaluation_sentences

    return [encode([s], max_len=128) for s in evaluation_sentences(source, n)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="build/demo")
    parser.add_argument("--sentences", type=int, default=256, help="evaluation sentences per text source")
    parser.add_argument("--calib-sources", default=DEMO_CALIB_SOURCE,
                        help="text sources MiniLM is calibrated on, one compile per scheme each (comma-separated, or all)")
    parser.add_argument("--calib-sentences", type=int, default=CALIB_SENTENCES)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--schemes", default=",".join(s for s in DEMO_SCHEMES if s in builtin_scheme_names()))
    parser.add_argument("--parts", default="minilm,mt", help="which demos to run: minilm, mt or both")
    parser.add_argument("--mt-sentences", type=int, default=300, help="held-out pairs the MT bench translates")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console(width=max(120, Console().width))
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"minilm", "mt"}:
        parser.error("--parts takes minilm, mt or minilm,mt")
    if "minilm" in parts:
        run_minilm(args, console)
    if "mt" in parts:
        run_mt(args, console)


def run_mt(args, console) -> None:
    """Train (or reuse) the MT model, then bench encoder + decoder with every scheme."""
    from models.mt.train import build
    from qcompiler import bench_mt

    console.rule("English -> French translation (encoder + decoder-with-past)")
    model_dir = build(log=console.print)
    out = Path(args.out) / "mt"
    result = bench_mt.run_mt_bench(bench_mt.locate(str(model_dir), None), [s for s in args.schemes.split(",") if s],
                                   out_dir=out, sentences=args.mt_sentences, console=Console(stderr=True))
    bench_mt.print_table(result, console)
    console.print(f"report: {result['files']['md']}  plot: {result['files']['png']}")


def run_minilm(args, console) -> None:
    console.rule("all-MiniLM-L6-v2 (sentence embeddings)")
    from models.minilm import minilm_onnx
    from qcompiler.bench import print_table, run_bench

    with console.status("exporting all-MiniLM-L6-v2 to ONNX (cached after the first run) ..."):
        model = minilm_onnx()
    from models.text_sources import SOURCES, fingerprint, evaluation_sentences

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(SOURCES) if args.calib_sources == "all" else [s for s in args.calib_sources.split(",") if s]
    unknown = set(names) - set(SOURCES)
    if unknown:
        raise SystemExit(f"unknown text sources {sorted(unknown)}; known: {', '.join(SOURCES)}")
    with console.status("reading the text sources ..."):
        evals = {s: evaluation_samples(s, args.sentences) for s in SOURCES}
        calibs = {s: calibration_samples(s, args.calib_sentences) for s in names}
    console.print("evaluation sets: " + ", ".join(
        f"{s} ({len(v)}, {fingerprint(evaluation_sentences(s, args.sentences))})" for s, v in evals.items()))
    result = run_bench(model, [s for s in args.schemes.split(",") if s], None, task="embeddings",
                       out_dir=out, repeats=args.repeats, console=Console(stderr=True),
                       latency_sample=evals["templates"][0], calib_sources=calibs, eval_sources=evals)
    print_table(result, console)
    console.print(f"report: {result['files']['md']}  plot: {result['files']['png']}")
    from qcompiler.scheme_table import record_bench

    where = record_bench(result, model_name="all-MiniLM-L6-v2", command="make demo",
                         accuracy=f"mean-pooled cosine vs FP32, calibrated on {', '.join(calibs)} "
                                  f"({args.calib_sentences} sentences), mean over the other sources "
                                  f"({args.sentences} sentences each)")
    console.print(f"measured figures for `qcompile --list-schemes`: {where}")


if __name__ == "__main__":
    main()
