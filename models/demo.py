"""`make demo`: the real all-MiniLM-L6-v2 and our own English -> French translation model, each
compiled with several schemes, side by side with FP32 and onnxruntime's own quantizers
(size; embedding cosine on our own held-out sentences / BLEU and chrF on held-out pairs;
batch-1 latency and tokens/s on one thread). The exported and trained models are cached;
on a fresh machine the MT model is trained first (about 5 minutes, one thread)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from qcompiler.schemes import builtin_scheme_names

DEMO_SCHEMES = ["int8", "int4", "ternary", "bcq2", "bcq3", "kmeans4", "mixed"]


def calibration_npz(path: Path, n: int = 256) -> Path:
    from models.minilm import encode
    from models.texts import calibration_sentences

    feeds = encode(calibration_sentences(n), max_len=128)
    np.savez(path, **feeds)
    return path


def evaluation_samples(n: int = 256) -> list[dict]:
    from models.minilm import encode
    from models.texts import evaluation_sentences

    return [encode([s], max_len=128) for s in evaluation_sentences(n)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="build/demo")
    parser.add_argument("--sentences", type=int, default=256)
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calib = calibration_npz(out / "minilm_calibration.npz")
    samples = evaluation_samples(args.sentences)
    result = run_bench(model, [s for s in args.schemes.split(",") if s], samples, task="embeddings",
                       calib=str(calib), out_dir=out, repeats=args.repeats, console=Console(stderr=True),
                       latency_sample=samples[0])
    print_table(result, console)
    console.print(f"report: {result['files']['md']}  plot: {result['files']['png']}")


if __name__ == "__main__":
    main()
