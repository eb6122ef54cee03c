"""Quantization-aware training of the MT model from its torch source (the "from torch" path of
training-aware recovery), then compile + BLEU beside FP32 and calibrated recovery.

    python -m models.mt.qat --scheme ternary [--steps 600] [--sentences 300]

1. The FP32 model's pre-LN gammas/betas are folded into the linears that read them (what the
   compiler's fold_layernorm does), so the trained weights are the ones the compiled ops hold and
   the pass has nothing left to move off the grid. The final norm feeds the tied output layer and
   stays.
2. Every encoder/decoder linear becomes a QuantLinear in the scheme's format (per role: a scheme's
   [roles.*] rules apply), the shared embedding table a QuantEmbedding in the scheme's
   [embeddings] format (the tied head reads the same fake-quantized table).
3. Training on the training pairs, teacher forced: cross-entropy on the references plus KL to the
   FP32 teacher's next-token distribution (qcompiler.qat.trainer).
4. The trained weights are exported (encoder + decoder-with-past, as models.mt.export) into a model
   directory of their own beside the FP32 one; `qcompile --scheme S` packs them losslessly.
5. Both the FP32 export and the trained export are compiled with the scheme (the model's own
   calibration inputs) and every variant translates the same held-out pairs (greedy, batch 1).
   QAT keeps training on the task data, so `--control` also trains the FP32 model for the same
   steps with the same loss: the fair reference for what quantization costs.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sys
import time
from pathlib import Path

__all__ = ["fold_norms", "role_of", "train_qat_model", "build_qat_dir", "main"]


def fold_norms(model) -> None:
    """In place: LN(x) @ W^T + c == n(x) @ (W * g)^T + (c + W @ b) with n the normalisation alone;
    every pre-LN norm that feeds linears only gets gamma 1, beta 0 after."""
    import torch

    def fold(norm, linears):
        with torch.no_grad():
            for lin in linears:
                lin.bias.add_(lin.weight @ norm.bias)
                lin.weight.mul_(norm.weight[None, :])
            norm.weight.fill_(1.0)
            norm.bias.zero_()

    for layer in model.encoder:
        fold(layer.ln1, [layer.attn.q, layer.attn.k, layer.attn.v])
        fold(layer.ln2, [layer.ffn.up])
    for layer in model.decoder:
        fold(layer.ln1, [layer.self_attn.q, layer.self_attn.k, layer.self_attn.v])
        fold(layer.ln2, [layer.cross.q])
        fold(layer.ln3, [layer.ffn.up])
    fold(model.encoder_ln, [m for layer in model.decoder for m in (layer.cross.k, layer.cross.v)])


def role_of(name: str, module) -> str:
    """The compiler's role names (qcompiler.analyze) for the MT model's linears, from module names."""
    leaf = name.rsplit(".", 1)[-1]
    if ".attn." in name or ".self_attn." in name or ".cross." in name:
        return {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_out"}[leaf]
    return {"up": "ffn_up", "down": "ffn_down"}.get(leaf, "linear")


def _batches(ids, batch_tokens: int, seed: int):
    """Endless length-bucketed batches (models.mt.train's bucketing), as (src, mask, tgt_in, tgt_out)."""
    from models.mt.train import _batches as bucketed, batch_tensors

    rng = random.Random(seed)
    while True:
        for batch in bucketed(ids, batch_tokens, rng):
            yield batch_tensors(ids, batch)


def train_qat_model(directory: Path, scheme: str, steps: int, threads: int = 1, seed: int = 0,
                    batch_tokens: int = 3000, kd_weight: float = 0.5, lr: float = 1e-3, show: bool = True):
    """(trained fake-quant student, swapped modules, training history) from the FP32 model in `directory`."""
    import torch

    from models.mt.data import read_tsv
    from models.mt.tokenizer import PAD, Tokenizer
    from models.mt.train import load_torch_model
    from qcompiler.errors import UsageError
    from qcompiler.qat.convert import quantize_modules
    from qcompiler.qat.modules import FORMATS
    from qcompiler.qat.trainer import QATConfig, kd_loss, train_qat

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    teacher = load_torch_model(directory).eval()
    student = load_torch_model(directory)
    fold_norms(student)
    swapped = quantize_modules(student, scheme, role_of) if scheme else {}   # None: the FP32 control
    if scheme and not any(fmt in FORMATS for fmt in swapped.values()):
        raise UsageError(f"scheme {scheme!r} has no linear format QAT can train (one of {', '.join(FORMATS)})")
    tok = Tokenizer(directory / "tokenizer.model")
    ids = [(tok.encode(en), tok.encode(fr)) for en, fr in read_tsv(directory / "train.tsv")]

    def loss_fn(batch):
        src, mask, tgt_in, tgt_out = batch
        with torch.no_grad():
            t_logits = teacher(src, mask, tgt_in)
        return kd_loss(student(src, mask, tgt_in), t_logits, tgt_out, PAD, kd_weight=kd_weight, label_smoothing=0.1)

    cfg = QATConfig(steps=steps, lr=lr, fp_lr=lr / 3, scale_lr=lr / 10)
    history = train_qat(student, _batches(ids, batch_tokens, seed), loss_fn, cfg, show=show,
                        label=f"QAT {Path(scheme).stem}" if scheme else "FP32 control")
    return student, swapped, history


def build_qat_dir(directory: Path, scheme: str | None, steps: int, threads: int = 1, out: Path | None = None,
                  log=print, **train_kwargs) -> Path:
    """Train and export into `out` (default: beside the FP32 directory); cached by its meta.json.
    scheme None trains the FP32 model the same way (the control: what the extra training alone gives)."""
    from models.mt.data import read_tsv
    from models.mt.export import export_onnx
    from models.mt.tokenizer import Tokenizer
    from models.mt.train import staged_directory, write_calibration
    from qcompiler.qat.convert import export_modules

    directory = Path(directory)
    tag = f"qat-{Path(scheme).stem}" if scheme else "fp32-control"
    target = Path(out) if out else directory.parent / f"{directory.name}-{tag}-{steps}"
    if (target / "meta.json").exists():
        return target
    with staged_directory(target) as work:
        t0 = time.perf_counter()
        student, swapped, history = train_qat_model(directory, scheme, steps, threads, **train_kwargs)
        log(f"trained {len(swapped)} modules for {history['steps']} steps in {history['seconds']:.0f} s "
            f"(loss {history['loss_first']} -> {history['loss_last']})")
        export_onnx(export_modules(student), work)
        for name in ("tokenizer.model", "train.tsv", "test.tsv"):
            shutil.copy(directory / name, work / name)
        write_calibration(work, Tokenizer(work / "tokenizer.model"), read_tsv(work / "train.tsv"), 128)
        meta = json.loads((directory / "meta.json").read_text())
        meta["qat"] = {"scheme": scheme, "from": str(directory), "modules": swapped, "training": history,
                       "threads": threads, "seconds": round(time.perf_counter() - t0, 1),
                       "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **train_kwargs}
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
    return target


def compare(fp32_dir: Path, qat_dir: Path, scheme: str, sentences: int, out_dir: Path, console=None,
            control_dir: Path | None = None) -> list[dict]:
    """Compile FP32 and QAT exports with `scheme`; BLEU of FP32, calibrated and QAT on the same pairs
    (and of the FP32 control trained as long as the QAT model, uncompiled, when given)."""
    import sacrebleu

    from models.mt.data import read_tsv
    from models.mt.decode import OnnxTranslator
    from models.mt.tokenizer import Tokenizer
    from qcompiler import model_io
    from qcompiler.pipeline import compile_model

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(scheme).stem
    variants = [("FP32", fp32_dir / "encoder.onnx", fp32_dir / "decoder.onnx", None)]
    if control_dir is not None:
        variants.append(("FP32 + the same training", control_dir / "encoder.onnx", control_dir / "decoder.onnx", None))
    for tag, src in ((f"{stem}, calibrated recovery", fp32_dir), (f"{stem}, QAT from torch", qat_dir)):
        paths = []
        t = time.perf_counter()
        for part in ("encoder", "decoder"):
            dest = out_dir / f"{part}.{stem}.{'qat' if src == qat_dir else 'calibrated'}.onnx"
            calib = src / f"calib_{part}.npz"
            compile_model(str(src / f"{part}.onnx"), scheme=scheme, output=str(dest),
                          calib=str(calib) if calib.exists() else None, verify=False, progress=False, console=console)
            paths.append(dest)
        variants.append((tag, paths[0], paths[1], time.perf_counter() - t))
    tok = Tokenizer(fp32_dir / "tokenizer.model")
    pairs = read_tsv(fp32_dir / "test.tsv")[:sentences]
    refs = [fr for _, fr in pairs]
    rows = []
    for name, enc, dec, seconds in variants:
        tr = OnnxTranslator(enc, dec, threads=1)
        hyps = [tok.decode(tr.translate(tok.encode(en), 1)) for en, _ in pairs]
        rows.append({"variant": name, "size_mb": (model_io.file_size(str(enc)) + model_io.file_size(str(dec))) / 1e6,
                     "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
                     "compile_s": seconds})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m models.mt.qat", description=__doc__.splitlines()[0])
    ap.add_argument("--scheme", default="ternary", help="built-in scheme name or TOML path (ternary, bcq2, int4, ...)")
    ap.add_argument("--steps", type=int, default=600, help="training steps (batches of ~3000 target tokens)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sentences", type=int, default=300, help="held-out pairs for BLEU")
    ap.add_argument("--kd-weight", type=float, default=0.5, help="weight of the KL-to-teacher term (rest: cross-entropy)")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate of the latent quantized weights")
    ap.add_argument("--model", default=None, help="FP32 model directory (default: build/take the cached one)")
    ap.add_argument("--control", action="store_true",
                    help="also train the FP32 model the same way (the QAT run continues training on the task data, so "
                         "this row tells what the extra training alone gives)")
    ap.add_argument("--out", default="bench-out/mt-qat", help="where the compiled files and the table go")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.threads < 1 or a.sentences < 1 or not 0 <= a.kd_weight <= 1 or a.lr <= 0:
        print("python -m models.mt.qat: error: --steps/--threads/--sentences >= 1, --kd-weight in [0, 1], --lr > 0",
              file=sys.stderr)
        sys.exit(2)
    from rich.console import Console
    from rich.table import Table

    from models.mt.train import build
    from qcompiler.errors import QCompilerError
    from qcompiler.schemes import load_scheme

    console = Console(stderr=True)
    try:
        load_scheme(a.scheme)
    except QCompilerError as exc:
        print(f"python -m models.mt.qat: error: {exc}", file=sys.stderr)
        sys.exit(2)
    fp32_dir = Path(a.model) if a.model else build(log=console.print)
    if not (fp32_dir / "model.pt").exists():
        print(f"python -m models.mt.qat: error: no torch checkpoint (model.pt) in {fp32_dir}", file=sys.stderr)
        sys.exit(2)
    try:
        qat_dir = build_qat_dir(fp32_dir, a.scheme, a.steps, a.threads, log=console.print, kd_weight=a.kd_weight, lr=a.lr)
    except QCompilerError as exc:
        print(f"python -m models.mt.qat: error: {exc}", file=sys.stderr)
        sys.exit(2)
    control = build_qat_dir(fp32_dir, None, a.steps, a.threads, log=console.print, kd_weight=a.kd_weight, lr=a.lr) \
        if a.control else None
    rows = compare(fp32_dir, qat_dir, a.scheme, a.sentences, Path(a.out), console, control)
    meta = json.loads((qat_dir / "meta.json").read_text())["qat"]
    peak = f", peak RSS {meta['peak_rss_mb'] / 1024:.2f} GB" if meta.get("peak_rss_mb") else ""
    table = Table(title=f"MT {a.sentences} held-out pairs, greedy; QAT {meta['training']['steps']} steps "
                        f"in {meta['training']['seconds']:.0f} s on {meta['threads']} thread(s){peak}")
    for col in ("variant", "size", "BLEU", "chrF", "delta BLEU vs FP32", "compile"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["variant"], f"{r['size_mb']:.2f} MB", f"{r['bleu']:.2f}", f"{r['chrf']:.2f}",
                      f"{r['bleu'] - rows[0]['bleu']:+.2f}", "-" if r["compile_s"] is None else f"{r['compile_s']:.1f} s")
    Console().print(table)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "mt-qat.json").write_text(json.dumps({"qat": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
