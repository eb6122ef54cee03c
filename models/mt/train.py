"""Build the MT model end to end, cached: data -> tokenizer -> time-boxed torch training on CPU ->
ONNX export (encoder + decoder-with-past) -> calibration inputs -> held-out BLEU/chrF.

    python -m models.mt.train            # (`make mt-model`) prints the model directory
The directory (~/.cache/qcompiler/models/mt-en-fr-<version>-<config>/) holds encoder.onnx,
decoder.onnx, tokenizer.model, train.tsv, test.tsv, calib_encoder.npz, calib_decoder.npz and
meta.json (configuration, steps, time, FP32 BLEU/chrF). It is built in a temporary directory
and renamed, so a partial build is never taken for a model.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from models.mt.data import make_splits, write_tsv
from models.mt.tokenizer import BOS, EOS, PAD, Tokenizer, train_tokenizer

VERSION = 1
CACHE = Path.home() / ".cache" / "qcompiler" / "models"


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    train_size: int = 40000
    test_size: int = 1000
    vocab_size: int = 400
    d_model: int = 128
    heads: int = 4
    ffn: int = 512
    layers: int = 3
    train_seconds: float = 900.0  # a safety box: the step budget ends first (~1.5 min on two idle cores)
    max_steps: int = 400
    batch_tokens: int = 3000
    lr: float = 2e-3
    threads: int = 2  # the same losses as one thread (torch's CPU kernels here), 1.6x sooner
    seed: int = 0
    calib_samples: int = 128

    def key(self) -> str:
        return hashlib.sha1(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def model_dir(cfg: BuildConfig = BuildConfig(), cache: str | Path | None = None) -> Path:
    return Path(cache or CACHE) / f"mt-en-fr-v{VERSION}-{cfg.key()}"


def _batches(pairs_ids, batch_tokens: int, rng: random.Random):
    """Length-bucketed batches of about batch_tokens target tokens, shuffled."""
    order = sorted(range(len(pairs_ids)), key=lambda i: (len(pairs_ids[i][0]), rng.random()))
    batches, cur, longest = [], [], 0
    for i in order:
        longest = max(longest, len(pairs_ids[i][0]) + 2, len(pairs_ids[i][1]) + 2)
        if cur and longest * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur, longest = [], max(len(pairs_ids[i][0]), len(pairs_ids[i][1])) + 2
        cur.append(i)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def _pad(seqs, value=PAD):
    width = max(len(s) for s in seqs)
    return np.array([s + [value] * (width - len(s)) for s in seqs], np.int64)


def batch_tensors(pairs_ids, batch):
    """Teacher-forcing tensors of the pairs `batch` indexes: source ids + EOS, its mask, target
    input (BOS + ids) and target output (ids + EOS), each padded to the batch's longest."""
    import torch

    src = torch.from_numpy(_pad([pairs_ids[i][0] + [EOS] for i in batch]))
    tgt = _pad([[BOS] + pairs_ids[i][1] + [EOS] for i in batch])
    return src, (src != PAD).long(), torch.from_numpy(tgt[:, :-1]), torch.from_numpy(tgt[:, 1:])


def train_model(pairs_ids, vocab_size: int, cfg: BuildConfig, log=print):
    """Train with label smoothing, warm-up then cosine decay over the time box; returns (model, stats)."""
    import torch
    from torch.nn import functional as F

    from models.mt.model import MarianMT, MTConfig

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model = MarianMT(MTConfig(vocab_size=vocab_size, d_model=cfg.d_model, heads=cfg.heads, ffn=cfg.ffn,
                              encoder_layers=cfg.layers, decoder_layers=cfg.layers))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = random.Random(cfg.seed)
    start, step, epoch, warmup, loss_avg = time.perf_counter(), 0, 0, 200, None
    model.train()
    while True:
        for batch in _batches(pairs_ids, cfg.batch_tokens, rng):
            elapsed = time.perf_counter() - start
            if elapsed > cfg.train_seconds or step >= cfg.max_steps:
                return model.eval(), {"steps": step, "epochs": epoch, "seconds": elapsed, "loss": loss_avg}
            frac = max(elapsed / cfg.train_seconds, step / cfg.max_steps)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
            src, src_mask, tgt_in, tgt_out = batch_tensors(pairs_ids, batch)
            logits = model(src, src_mask, tgt_in)
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), tgt_out.reshape(-1), ignore_index=PAD,
                                   label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            loss_value = loss.item()
            loss_avg = loss_value if loss_avg is None else 0.98 * loss_avg + 0.02 * loss_value
            if step % 100 == 0:
                log(f"  step {step}  loss {loss_avg:.3f}  {elapsed:.0f}/{cfg.train_seconds:.0f} s")
        epoch += 1


def calibration_arrays(translator, tok: Tokenizer, pairs, n: int, seed: int = 0):
    """Real encoder and decoder inputs from training pairs: padded sources, and decoder steps after
    the BOS step (past of length 1 from the FP32 decoder, the teacher-forced target as new tokens)."""
    rng = random.Random(seed)
    chosen = rng.sample(pairs, min(n, len(pairs)))
    src = [tok.encode(en) + [EOS] for en, _ in chosen]
    tgt = [tok.encode(fr) + [EOS] for _, fr in chosen]
    ids = _pad(src)
    mask = (ids != PAD).astype(np.int64)
    enc = {"input_ids": ids, "attention_mask": mask}
    cross = dict(zip(translator.cross_names, translator.encoder.run(translator.cross_names, enc)))
    bos = np.full((len(chosen), 1), BOS, np.int64)
    _, past = translator.step(bos, mask, cross, translator.empty_past(len(chosen)))
    dec = {"input_ids": _pad(tgt), "encoder_attention_mask": mask, **cross, **past}
    return enc, dec


def write_calibration(directory: Path, tok: Tokenizer, pairs, n: int, seed: int = 0):
    """calib_encoder.npz / calib_decoder.npz from the directory's own export; returns its translator."""
    from models.mt.decode import OnnxTranslator

    translator = OnnxTranslator(directory / "encoder.onnx", directory / "decoder.onnx")
    enc, dec = calibration_arrays(translator, tok, pairs, n, seed)
    np.savez(directory / "calib_encoder.npz", **enc)
    np.savez(directory / "calib_decoder.npz", **dec)
    return translator


@contextlib.contextmanager
def staged_directory(target: Path):
    """Build into a temporary directory beside `target`, renamed to it on success (unless another
    build got there first) and removed on error: a partial build is never taken for a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        yield work
        os.chmod(work, 0o755)
        try:
            os.replace(work, target)
        except OSError:  # another build finished first: keep theirs
            if not (target / "meta.json").exists():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def evaluate(translator, tok: Tokenizer, pairs, beam: int = 1) -> dict:
    """BLEU and chrF (sacrebleu) of the translations of `pairs`, and decoding speed at batch 1."""
    import sacrebleu

    hyps, tokens, seconds = [], 0, 0.0
    for en, _ in pairs:
        t = time.perf_counter()
        out = translator.translate(tok.encode(en), beam)
        seconds += time.perf_counter() - t
        tokens += len(out) + 1
        hyps.append(tok.decode(out))
    refs = [fr for _, fr in pairs]
    return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "exact": float(np.mean([h == r for h, r in zip(hyps, refs)])), "tokens_per_s": tokens / seconds,
            "latency_ms": 1e3 * seconds / len(pairs), "hypotheses": hyps}


def build(cfg: BuildConfig = BuildConfig(), cache: str | Path | None = None, log=print, eval_sentences: int = 1000) -> Path:
    """The model directory, built if missing (training takes max_steps or train_seconds, whichever ends first)."""
    import torch

    from models.mt.export import export_onnx

    target = model_dir(cfg, cache)
    if (target / "meta.json").exists():
        return target
    with staged_directory(target) as work:
        t0 = time.perf_counter()
        log(f"generating {cfg.train_size} training and {cfg.test_size} held-out pairs (num2words, en -> fr) ...")
        train, test = make_splits(cfg.train_size, cfg.test_size)
        write_tsv(train, work / "train.tsv")
        write_tsv(test, work / "test.tsv")
        tok = train_tokenizer([s for pair in train for s in pair], work / "tokenizer.model", cfg.vocab_size)
        log(f"tokenizer: {tok.vocab_size} pieces; training {cfg.layers}+{cfg.layers} layers d={cfg.d_model} "
            f"for {cfg.train_seconds:.0f} s on {cfg.threads} thread(s) ...")
        ids = [(tok.encode(en), tok.encode(fr)) for en, fr in train]
        model, stats = train_model(ids, tok.vocab_size, cfg, log)
        if stats["steps"] < cfg.max_steps:
            log(f"warning: the {cfg.train_seconds:.0f} s time box ended training at step {stats['steps']} of "
                f"{cfg.max_steps} (a loaded machine?): this model is undertrained and cached as it is; delete "
                f"{target} to train it again")
        torch.save(model.state_dict(), work / "model.pt")
        export_onnx(model, work)
        translator = write_calibration(work, tok, train, cfg.calib_samples, cfg.seed)
        log(f"evaluating the FP32 ONNX model on {min(eval_sentences, len(test))} held-out sentences ...")
        metrics = evaluate(translator, tok, test[:eval_sentences])
        metrics.pop("hypotheses")
        meta = {"version": VERSION, "config": dataclasses.asdict(cfg), "vocab_size": tok.vocab_size,
                "parameters": sum(p.numel() for p in model.parameters()), "training": stats,
                "fp32_greedy": metrics, "build_seconds": time.perf_counter() - t0}
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
    return target


def load_torch_model(directory: str | Path):
    """The trained torch model of a built directory (for references and further training)."""
    import torch

    from models.mt.model import MarianMT, MTConfig

    meta = json.loads((Path(directory) / "meta.json").read_text())
    c = meta["config"]
    model = MarianMT(MTConfig(vocab_size=meta["vocab_size"], d_model=c["d_model"], heads=c["heads"], ffn=c["ffn"],
                              encoder_layers=c["layers"], decoder_layers=c["layers"]))
    model.load_state_dict(torch.load(Path(directory) / "model.pt", map_location="cpu"))
    return model.eval()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m models.mt.train", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=BuildConfig.train_seconds, help="training time box (safety bound)")
    ap.add_argument("--steps", type=int, default=BuildConfig.max_steps, help="training steps")
    ap.add_argument("--threads", type=int, default=BuildConfig.threads)
    ap.add_argument("--cache", default=None, help="cache root (default ~/.cache/qcompiler/models)")
    a = ap.parse_args(argv)
    if a.seconds <= 0 or a.threads < 1 or a.steps < 1:
        print("python -m models.mt.train: error: --seconds must be > 0, --steps and --threads >= 1", file=sys.stderr)
        sys.exit(2)
    cfg = dataclasses.replace(BuildConfig(), train_seconds=a.seconds, max_steps=a.steps, threads=a.threads)
    path = build(cfg, a.cache, log=lambda *args: print(*args, flush=True))
    meta = json.loads((path / "meta.json").read_text())
    m = meta["fp32_greedy"]
    print(f"{path}\n  {meta['parameters'] / 1e6:.2f} M parameters, {meta['training']['steps']} steps; "
          f"FP32 greedy BLEU {m['bleu']:.2f} chrF {m['chrf']:.2f} exact {m['exact']:.3f}, "
          f"{m['tokens_per_s']:.0f} tokens/s, {m['latency_ms']:.2f} ms/sentence (batch 1, one thread)")


if __name__ == "__main__":
    main()
