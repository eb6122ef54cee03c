"""A sentencepiece unigram tokenizer shared by both languages (one vocabulary, tied embeddings).

Ids 0..3 are pad, unk, bos, eos; the model file is the whole tokenizer.
"""

from __future__ import annotations

import io
from pathlib import Path

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def train_tokenizer(sentences: list[str], model_path: str | Path, vocab_size: int = 400) -> "Tokenizer":
    """Train on `sentences` and write the .model file; the vocabulary may come out smaller."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, hard_vocab_limit=False,
        num_threads=1, minloglevel=2,
    )
    Path(model_path).write_bytes(buf.getvalue())
    return Tokenizer(model_path)


class Tokenizer:
    """encode: text -> ids (no bos/eos); decode: ids -> text (stops at nothing, skips specials)."""

    def __init__(self, model_path: str | Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) > EOS])
