"""The sentencepiece tokenizer: decode(encode(s)) == s on held-out sentences of both languages."""

from __future__ import annotations

from models.mt.data import read_tsv
from models.mt.tokenizer import BOS, EOS, UNK, Tokenizer


def test_round_trip_on_held_out(tiny_mt):
    tok = Tokenizer(tiny_mt / "tokenizer.model")
    for en, fr in read_tsv(tiny_mt / "test.tsv"):
        for text in (en, fr):
            ids = tok.encode(text)
            assert UNK not in ids
            assert tok.decode(ids) == text


def test_decode_skips_special_ids(tiny_mt):
    tok = Tokenizer(tiny_mt / "tokenizer.model")
    ids = tok.encode("vingt-deux euros")
    assert tok.decode([BOS, *ids, EOS]) == "vingt-deux euros"
