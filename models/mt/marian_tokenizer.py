"""A shared sentencepiece vocabulary written as a transformers MarianTokenizer folder.

MarianTokenizer reads source.spm / target.spm (segmentation) and vocab.json (piece -> id); with one
shared vocabulary both .spm files are the same model. Ids follow the opus-mt checkpoints: `</s>` 0,
`<unk>` 1, the pieces, `<pad>` last (also the decoder start token). Placeholders (`%s`, `%d`,
`%1$s`, `{0}` ...) are user-defined pieces, so they stay single tokens and copy through.
`fast_tokenizer` gives the same ids from the `tokenizers` library (tokenizer.json).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import warnings
from pathlib import Path

PLACEHOLDERS = ("%s", "%d", "%u", "%i", "%ld", "%lu", "%zu", "%lld", "%llu", "%x", "%c", "%f", "%%", "%1$s", "%2$s",
                "%3$s", "%1$d", "%2$d", "%3$d", "%(name)s", "{}", "{0}", "{1}", "{2}")


def train_marian_tokenizer(sentences: list[str], out_dir: str | Path, vocab_size: int = 8000,
                           max_sentences: int = 200000) -> Path:
    """Train a unigram model on `sentences` (both languages) and write source.spm, target.spm,
    vocab.json and tokenizer_config.json into out_dir; returns out_dir."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences[:max_sentences]), model_writer=buf, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=1, pad_id=-1,
        user_defined_symbols=list(PLACEHOLDERS), num_threads=1, minloglevel=2, seed_sentencepiece_size=200000,
        shuffle_input_sentence=False)
    (out_dir / "source.spm").write_bytes(buf.getvalue())
    shutil.copy(out_dir / "source.spm", out_dir / "target.spm")
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1}
    for p in pieces:
        if p not in ("<unk>", "</s>", "<s>", "<pad>"):
            vocab.setdefault(p, len(vocab))
    vocab["<pad>"] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MarianTokenizer", "source_lang": "en", "target_lang": "fr", "separate_vocabs": False,
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 256}, indent=1))
    return out_dir


def load_tokenizer(path: str | Path):
    """The MarianTokenizer of a folder written above (or of any opus-mt-style checkpoint)."""
    from transformers import MarianTokenizer

    return MarianTokenizer.from_pretrained(str(path))


def fast_tokenizer(folder: str | Path):
    """A `tokenizers.Tokenizer` equal to the folder's MarianTokenizer: its sentencepiece model's
    normalizer and unigram scores, vocab.json's ids, `</s>` appended."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers.convert_slow_tokenizer import SpmConverter

    folder = Path(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))

    class _Holder:  # what SpmConverter reads from a slow tokenizer
        vocab_file = str(folder / "source.spm")
        legacy = False
        add_prefix_space = True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = SpmConverter(_Holder())
    proto = conv.proto
    scores = {p.piece: p.score for p in proto.pieces}
    tok = Tokenizer(models.Unigram([(piece, scores.get(piece, 0.0)) for piece, _ in sorted(vocab.items(), key=lambda kv: kv[1])],
                                   vocab["<unk>"], byte_fallback=False))
    tok.normalizer = conv.normalizer(proto)
    # sentencepiece cuts its user-defined pieces (the placeholders) out of the text wherever they
    # occur, after the space marker: " %s" is "▁" + "%s".
    user = sorted((p.piece for p in proto.pieces if p.type == 4), key=len, reverse=True)
    splits = [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
    if user:
        splits.append(pre_tokenizers.Split(Regex("|".join(re.escape(u) for u in user)), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
    tok.decoder = conv.decoder("▁", "always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", vocab["</s>"])])
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("</s>", "<unk>", "<pad>")])
    return tok
