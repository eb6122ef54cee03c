"""Train the English -> French transformers MarianMTModel on the gettext corpus, cached.

    python -m models.mt.train_marian          # (`make mt-model`) prints the checkpoint folder
    python -m models.mt.train_marian --tiny   # a seconds-long run of a tiny config (tests)

The opus-mt architecture (post-LN, sinusoidal positions, shared and tied embeddings, swish FFN)
at a size two idle CPU cores train in about 35 minutes: 6 encoder + 2 decoder layers, d 256, one
sentencepiece vocabulary of 8000 pieces. Adam, warm-up then cosine decay over a fixed number of
steps: the budget is steps, not seconds, so the cached model (keyed by its config) is the same
model on a loaded machine, which only takes longer to train it. Label smoothing
0.1. The pad row of the tied table is held at zero: the decoder starts from the pad token, and
Marian and CTranslate2 start from a zero embedding (the tied output layer would move it). The folder (~/.cache/qcompiler/models/marian-en-fr-v<version>-<config key>/) holds the
transformers checkpoint with its MarianTokenizer files, train.tsv / test.tsv (the corpus split
by package), calib_sources.txt (source sentences of the training split) and meta.json (config,
steps, seconds, FP32 test BLEU/chrF of greedy decoding). Built in a temporary folder and
renamed; while training, `partial/` beside it holds the latest checkpoint for early work.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

VERSION = 1
CACHE = Path.home() / ".cache" / "qcompiler" / "models"


@dataclasses.dataclass(frozen=True)
class MarianBuild:
    vocab_size: int = 8000
    d_model: int = 256
    heads: int = 4
    ffn: int = 1024
    encoder_layers: int = 6
    decoder_layers: int = 2
    dropout: float = 0.1
    max_tokens: int = 96
    batch_tokens: int = 2500  # source + target tokens per batch, padding included
    lr: float = 5e-4         # 1e-3 with 200 warm-up steps collapsed (post-LN): one output for every source, BLEU 0.25
    warmup: int = 500
    max_steps: int = 2000
    label_smoothing: float = 0.1
    threads: int = 2
    seed: int = 0
    calib_sentences: int = 256
    train_pairs: int | None = None  # None: the whole training split
    test_pairs: int | None = None

    def key(self) -> str:
        return hashlib.sha1(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:10]


TINY = MarianBuild(vocab_size=600, d_model=32, heads=2, ffn=64, encoder_layers=2, decoder_layers=1, max_tokens=32,
                   batch_tokens=1024, lr=1e-3, warmup=10, max_steps=30, threads=1, calib_sentences=16,
                   train_pairs=3000, test_pairs=40)


def model_dir(cfg: MarianBuild, corpus: Path, cache: Path = CACHE) -> Path:
    return Path(cache) / f"marian-en-fr-v{VERSION}-{cfg.key()}-{corpus.name.split('-')[-1]}"


def marian_config(cfg: MarianBuild, tok):
    from transformers import MarianConfig

    vocab = len(tok.get_vocab())
    return MarianConfig(
        vocab_size=vocab, decoder_vocab_size=vocab, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn, decoder_ffn_dim=cfg.ffn, max_position_embeddings=256, dropout=cfg.dropout,
        attention_dropout=0.0, activation_dropout=0.0, activation_function="swish", scale_embedding=True,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id, forced_eos_token_id=tok.eos_token_id)


def _ids(folder: Path, pairs, max_tokens: int):
    """Source and target ids (EOS appended, truncated to max_tokens keeping the EOS) through the
    folder's tokenizer.json equivalent (the same ids as MarianTokenizer, tested; far faster)."""
    from models.mt.marian_tokenizer import fast_tokenizer

    fast = fast_tokenizer(folder)
    cut = lambda ids: ids if len(ids) <= max_tokens else ids[: max_tokens - 1] + ids[-1:]  # noqa: E731
    src = [cut(e.ids) for e in fast.encode_batch([en for en, _ in pairs])]
    tgt = [cut(e.ids) for e in fast.encode_batch([fr for _, fr in pairs])]
    return list(zip(src, tgt))


def batches(ids, batch_tokens: int, rng: random.Random):
    """Length-bucketed batches of at most batch_tokens (source + target, padded), shuffled."""
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i][0]) + len(ids[i][1]), rng.random()))
    out, cur, widest = [], [], 0
    for i in order:
        w = max(widest, len(ids[i][0]) + len(ids[i][1]))
        if cur and w * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur, w = [], len(ids[i][0]) + len(ids[i][1])
        cur.append(i)
        widest = w
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def tensors(ids, rows, pad: int, start: int):
    """input_ids, attention_mask, decoder_input_ids (start + target[:-1]), labels (-100 on padding)."""
    import torch

    src = [ids[i][0] for i in rows]
    tgt = [ids[i][1] for i in rows]
    s, t = max(map(len, src)), max(map(len, tgt))
    input_ids = torch.tensor([x + [pad] * (s - len(x)) for x in src])
    labels = torch.tensor([y + [-100] * (t - len(y)) for y in tgt])
    dec = torch.tensor([[start] + y[:-1] + [pad] * (t - len(y)) for y in tgt])
    return input_ids, (input_ids != pad).long(), dec, labels


def lr_factor(progress: float, step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def translate(model, tok, sources: list[str], beams: int = 1, batch: int = 32, max_tokens: int = 96) -> list[str]:
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(sources), batch):
            enc = tok(sources[i:i + batch], return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
            gen = model.generate(**enc, num_beams=beams, max_new_tokens=max_tokens, do_sample=False)
            out += tok.batch_decode(gen, skip_special_tokens=True)
    return out


def train(cfg: MarianBuild, out: Path, corpus: Path, log) -> dict:
    """Train into `out` (checkpoint + tokenizer + splits + meta.json); returns the meta."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import MarianMTModel

    from models.mt.gettext_corpus import read_tsv, write_tsv
    from models.mt.marian_tokenizer import load_tokenizer, train_marian_tokenizer

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    train_pairs, test_pairs = read_tsv(corpus / "train.tsv"), read_tsv(corpus / "test.tsv")
    if cfg.train_pairs:
        train_pairs = random.Random(1).sample(train_pairs, min(cfg.train_pairs, len(train_pairs)))
    if cfg.test_pairs:
        test_pairs = test_pairs[: cfg.test_pairs]
    write_tsv(train_pairs, out / "train.tsv")
    write_tsv(test_pairs, out / "test.tsv")
    calib = random.Random(2).sample([en for en, _ in train_pairs], min(cfg.calib_sentences, len(train_pairs)))
    (out / "calib_sources.txt").write_text("".join(s + "\n" for s in calib), encoding="utf-8")
    spm_dir = out.parent / f"marian-tokenizer-v{VERSION}-{cfg.vocab_size}-{hashlib.sha1(json.dumps(train_pairs).encode()).hexdigest()[:10]}"
    if not (spm_dir / "tokenizer_config.json").is_file():  # the vocabulary is cached by its inputs
        text = [s for pair in random.Random(3).sample(train_pairs, len(train_pairs)) for s in pair]
        train_marian_tokenizer(text, spm_dir.with_name(spm_dir.name + ".tmp"), vocab_size=cfg.vocab_size)
        os.replace(spm_dir.with_name(spm_dir.name + ".tmp"), spm_dir)
    for f in spm_dir.iterdir():
        shutil.copy(f, out / f.name)
    tok = load_tokenizer(out)
    ids = _ids(out, train_pairs, cfg.max_tokens)
    log(f"{len(ids)} training pairs, {sum(len(a) + len(b) for a, b in ids)} tokens, vocabulary {len(tok.get_vocab())}")
    model = MarianMTModel(marian_config(cfg, tok))
    model.generation_config.bad_words_ids = [[pad_id := tok.pad_token_id]]
    model.generation_config.max_length = cfg.max_tokens
    assert model.generation_config.decoder_start_token_id in (None, pad_id)
    log(f"MarianMTModel: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=cfg.label_smoothing)
    pad, start = tok.pad_token_id, model.config.decoder_start_token_id
    step, epoch, start_t, last_ckpt, losses = 0, 0, time.perf_counter(), time.perf_counter(), []
    progress = Progress(TextColumn("[bold]training[/bold]"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=None, transient=False)
    done = False
    with progress:
        bar = progress.add_task("train", total=1.0, info="")
        while not done:
            epoch += 1
            for rows in batches(ids, cfg.batch_tokens, rng):
                elapsed = time.perf_counter() - start_t
                frac = step / cfg.max_steps
                if frac >= 1.0:
                    done = True
                    break
                model.train()
                input_ids, mask, dec, labels = tensors(ids, rows, pad, start)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(frac, step, cfg.warmup)
                logits = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=dec).logits
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                with torch.no_grad():  # decoding starts from a zero embedding, as in Marian and CTranslate2
                    model.model.shared.weight[pad].zero_()
                step += 1
                losses.append(float(loss.detach()))
                mean = sum(losses[-50:]) / len(losses[-50:])
                progress.update(bar, completed=frac, info=f"step {step} epoch {epoch} loss {mean:.3f}")
                if step % 50 == 0:
                    log(f"step {step} epoch {epoch} {elapsed:.0f}s loss {mean:.3f} lr {opt.param_groups[0]['lr']:.2e}")
                if step % 250 == 0:   # a model that ignores its source shows here long before the test BLEU
                    model.eval()
                    probe = translate(model, tok, [en for en, _ in test_pairs[:2]], max_tokens=cfg.max_tokens)
                    log("  probe: " + " | ".join(f"{en!r} -> {fr!r}" for (en, _), fr in zip(test_pairs[:2], probe)))
                if time.perf_counter() - last_ckpt > 300:
                    partial = out.with_name(out.name + ".partial")
                    model.save_pretrained(partial)
                    tok.save_pretrained(partial)
                    last_ckpt = time.perf_counter()
    seconds = time.perf_counter() - start_t
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    hyps = translate(model, tok, [en for en, _ in test_pairs], beams=1, max_tokens=cfg.max_tokens)
    import sacrebleu

    refs = [fr for _, fr in test_pairs]
    meta = {"config": dataclasses.asdict(cfg), "steps": step, "epochs": epoch, "seconds": round(seconds, 1),
            "final_loss": sum(losses[-50:]) / max(len(losses[-50:]), 1), "train_pairs": len(train_pairs),
            "test_pairs": len(test_pairs), "parameters": sum(p.numel() for p in model.parameters()),
            "torch_greedy_bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "torch_greedy_chrf": sacrebleu.corpus_chrf(hyps, [refs]).score, "corpus": str(corpus),
            "distinct_outputs": round(len(set(hyps)) / max(len(hyps), 1), 4)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"done: {step} steps in {seconds:.0f}s, test greedy BLEU {meta['torch_greedy_bleu']:.2f} "
        f"chrF {meta['torch_greedy_chrf']:.2f}, {meta['distinct_outputs']:.0%} distinct outputs")
    if meta["distinct_outputs"] < 0.5:
        log("WARNING: most test sentences get the same translation: the model ignores its source (collapsed)")
    return meta


def build(cfg: MarianBuild = MarianBuild(), cache: Path = CACHE, corpus: Path | None = None, log=None) -> Path:
    """The cached checkpoint folder for cfg (trained here the first time)."""
    from models.mt import gettext_corpus

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    corpus = Path(corpus) if corpus else gettext_corpus.build(log=log)
    out = model_dir(cfg, corpus, cache)
    if (out / "meta.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    train(cfg, tmp, corpus, log)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    shutil.rmtree(tmp.with_name(tmp.name + ".partial"), ignore_errors=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the seconds-long tiny configuration (tests)")
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--corpus", default=None, help="a corpus folder (train.tsv, test.tsv) instead of the gettext build")
    ap.add_argument("--export", action="store_true", help="also export it with Optimum (CHECKPOINT.onnx/) and print that")
    args = ap.parse_args(argv)
    out = build(TINY if args.tiny else MarianBuild(), Path(args.cache), args.corpus)
    if args.export:
        from models.mt.bench_marian import export_dir

        out = export_dir(out)
    print(out)


if __name__ == "__main__":
    main()
