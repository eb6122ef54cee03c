"""Quantization-aware training of the Marian checkpoint (`make mt-model`) for one scheme, cached.

    python -m models.mt.qat_marian --scheme ternary [--steps 600]   # prints the trained checkpoint

The "from torch" path of training-aware recovery for a transformers MarianMTModel:
1. Every encoder and decoder layer linear (q/k/v/out projections of self and cross attention,
   fc1, fc2) becomes a QuantLinear in the scheme's format for its role (qcompiler.qat.convert);
   the shared embedding table and the tied output layer stay FP32 and frozen, so the compiler
   quantizes them from the scheme as it does for any checkpoint (Marian is post-LN: no norm
   feeds a linear directly, so nothing has to be folded first).
2. Teacher-forced training on the checkpoint's own training split: label-smoothed cross-entropy
   on the references plus KL to the FP32 teacher's next-token distribution (qcompiler.qat.trainer).
3. The effective weights (what the compiled ops multiply by) are written back as plain nn.Linear
   into a transformers checkpoint beside the FP32 one, with its tokenizer, splits and calibration
   sentences, so the same Optimum export and `qcompile DIR --scheme S` pack them without loss.
Cached by (checkpoint, scheme file contents, steps, seed); built in a temporary folder and renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

__all__ = ["role_of", "qat_dir", "main"]

_ROLES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "out_proj": "attn_out",
          "fc1": "ffn_up", "fc2": "ffn_down"}
_COPIED = ("train.tsv", "test.tsv", "calib_sources.txt")


def role_of(name: str, module) -> str | None:
    """The compiler's role of a Marian layer linear (qcompiler.analyze names); None (left FP32) for
    everything outside the encoder and decoder layers, i.e. the tied output layer."""
    if not (name.startswith("model.encoder.layers.") or name.startswith("model.decoder.layers.")):
        return None
    return _ROLES.get(name.rsplit(".", 1)[-1], "linear")


def _key(checkpoint: Path, scheme: str, steps: int, seed: int, kd_weight: float, lr: float) -> str:
    from qcompiler.schemes import load_scheme

    text = repr(load_scheme(scheme)).encode()   # the scheme's settings, built-in or a file
    meta = (checkpoint / "meta.json").read_bytes() if (checkpoint / "meta.json").is_file() else b""
    blob = json.dumps([str(checkpoint.resolve()), steps, seed, kd_weight, lr]).encode() + text + meta
    return hashlib.sha1(blob).hexdigest()[:10]


def _train(checkpoint: Path, scheme: str, steps: int, threads: int, seed: int, kd_weight: float, lr: float,
           batch_tokens: int, log):
    """(exported student MarianMTModel, tokenizer, {module: format}, training history)."""
    import torch
    from transformers import MarianMTModel

    from models.mt.gettext_corpus import read_tsv
    from models.mt.marian_tokenizer import load_tokenizer
    from models.mt.train_marian import _ids, batches, tensors
    from qcompiler.qat.convert import export_modules, quantize_modules
    from qcompiler.qat.trainer import QATConfig, kd_loss, train_qat

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    tok = load_tokenizer(checkpoint)
    teacher = MarianMTModel.from_pretrained(checkpoint).eval()
    student = MarianMTModel.from_pretrained(checkpoint)
    student.model.shared.weight.requires_grad_(False)   # the tied table: FP32 and frozen (the compiler's job)
    swapped = quantize_modules(student, scheme, role_of, embeddings=False)
    if not swapped:
        raise SystemExit(f"scheme {scheme!r} gives no Marian layer linear a format QAT can train")
    ids = _ids(checkpoint, read_tsv(checkpoint / "train.tsv"), student.config.max_length or 96)
    pad, start = tok.pad_token_id, student.config.decoder_start_token_id
    rng = random.Random(seed)

    def endless():
        while True:
            for rows in batches(ids, batch_tokens, rng):
                yield tensors(ids, rows, pad, start)

    def loss_fn(batch):
        input_ids, mask, dec, labels = batch
        with torch.no_grad():
            t_logits = teacher(input_ids=input_ids, attention_mask=mask, decoder_input_ids=dec).logits
        logits = student(input_ids=input_ids, attention_mask=mask, decoder_input_ids=dec).logits
        return kd_loss(logits, t_logits, labels, -100, kd_weight=kd_weight, label_smoothing=0.1)

    cfg = QATConfig(steps=steps, lr=lr, fp_lr=lr / 3, scale_lr=lr / 10)
    history = train_qat(student, endless(), loss_fn, cfg, label=f"QAT {Path(scheme).stem}")
    log(f"QAT {Path(scheme).stem}: {len(swapped)} linears, {history['steps']} steps in {history['seconds']:.0f} s "
        f"(loss {history['loss_first']} -> {history['loss_last']})")
    exported = export_modules(student)
    exported.model.shared.weight.requires_grad_(True)
    return exported, tok, swapped, history


def qat_dir(checkpoint: str | Path, scheme: str, steps: int = 600, threads: int = 2, seed: int = 0,
            kd_weight: float = 0.5, lr: float = 5e-4, batch_tokens: int = 2500, log=None) -> Path:
    """The QAT-trained checkpoint for `scheme` beside `checkpoint` (trained the first time)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    checkpoint = Path(checkpoint)
    out = checkpoint.with_name(f"{checkpoint.name}.qat-{Path(scheme).stem}-{steps}-"
                               f"{_key(checkpoint, scheme, steps, seed, kd_weight, lr)}")
    if (out / "qat.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    model, tok, swapped, history = _train(checkpoint, scheme, steps, threads, seed, kd_weight, lr, batch_tokens, log)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for name in _COPIED:
        if (checkpoint / name).is_file():
            shutil.copy(checkpoint / name, tmp / name)
    record = {"scheme": scheme, "from": str(checkpoint), "steps": steps, "seed": seed, "kd_weight": kd_weight,
              "lr": lr, "threads": threads, "modules": swapped, "training": history,
              "seconds": round(time.perf_counter() - t0, 1)}
    (tmp / "qat.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a Marian checkpoint folder (default: `make mt-model`'s)")
    ap.add_argument("--scheme", default="ternary")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--export", action="store_true", help="also export it with Optimum and print that folder")
    args = ap.parse_args(argv)
    from models.mt.train_marian import build

    checkpoint = Path(args.checkpoint) if args.checkpoint else build()
    out = qat_dir(checkpoint, args.scheme, args.steps, args.threads)
    if args.export:
        from models.mt.bench_marian import export_dir

        out = export_dir(out)
    print(out)


if __name__ == "__main__":
    main()
