"""Benchmark of `--recover distill` on the real all-MiniLM-L6-v2: compile with distillation on our
own calibration sentences (models/texts.calibration_sentences), then the mean-pooled embedding
cosine vs FP32 on the held-out evaluation sentences, the wall time and the peak memory.

    python -m models.bench_minilm_qat --scheme ternary [--steps N] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np


def evaluate(model_path: str, fp32_path: str, sentences: int = 256) -> tuple[float, float]:
    """(mean, min) cosine of the model's mean-pooled embeddings vs FP32 on evaluation sentences."""
    import onnxruntime as ort

    from qcompiler import ops
    from qcompiler.embedding_eval import cosine_vs_reference, embed_with_session
    from models.minilm import encode
    from models.texts import evaluation_sentences

    batches = [encode([s], max_len=128) for s in evaluation_sentences(sentences)]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    ops.register(opts)
    ref = embed_with_session(ort.InferenceSession(fp32_path, opts, providers=["CPUExecutionProvider"]), batches)
    emb = embed_with_session(ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"]), batches)
    return cosine_vs_reference(ref, emb)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheme", default="ternary")
    parser.add_argument("--steps", type=int, default=None, help="--recover-steps (default: the pipeline's)")
    parser.add_argument("--calib", type=int, default=512, help="calibration sentences (distillation text)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="build/qat-bench")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import qcompiler
    from models.minilm import encode, minilm_onnx
    from models.texts import calibration_sentences

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = minilm_onnx()
    calib = out / f"minilm_calib_{args.calib}.npz"
    np.savez(calib, **encode(calibration_sentences(args.calib), max_len=128))
    target = out / f"minilm.{args.scheme}.distill.onnx"
    t0 = time.perf_counter()
    rep = qcompiler.compile(fp32, scheme=args.scheme, output=str(target), calib=str(calib), recover="distill",
                            recover_steps=args.steps, progress=True)
    seconds = time.perf_counter() - t0
    cos_mean, cos_min = evaluate(str(target), fp32)
    result = {"scheme": args.scheme, "recover": rep.report["passes"].get("recover"), "compile_seconds": round(seconds, 1),
              "cosine_mean": round(cos_mean, 4), "cosine_min": round(cos_min, 4),
              "size_mb": round(rep.size_after / 1e6, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "torch_threads": torch.get_num_threads()}
    (out / f"minilm.{args.scheme}.distill.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
