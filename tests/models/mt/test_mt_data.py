"""The parallel data generator: deterministic, held-out set disjoint from training."""

from __future__ import annotations

import pytest

from models.mt.data import make_pair, make_splits, read_tsv, write_tsv


def test_same_seed_same_corpus():
    assert make_splits(500, 50) == make_splits(500, 50)


def test_other_seed_other_corpus():
    assert make_splits(500, 50, train_seed=1)[0] != make_splits(500, 50, train_seed=7)[0]


def test_test_sources_are_distinct_and_never_in_training():
    train, test = make_splits(5000, 300)
    sources = [en for en, _ in test]
    assert len(test) == 300 and len(set(sources)) == 300
    assert not set(sources) & {en for en, _ in train}


def test_pairs_are_words_in_both_languages():
    import random

    rng = random.Random(0)
    for _ in range(200):
        en, fr = make_pair(rng)
        assert en and fr and not any(c.isdigit() for c in en + fr)
        assert "\t" not in en + fr and "\n" not in en + fr


def test_tsv_round_trip_and_bad_line(tmp_path):
    pairs = make_splits(20, 5)[1]
    write_tsv(pairs, tmp_path / "t.tsv")
    assert read_tsv(tmp_path / "t.tsv") == pairs
    (tmp_path / "bad.tsv").write_text("only one column\n")
    with pytest.raises(ValueError, match="source<TAB>reference"):
        read_tsv(tmp_path / "bad.tsv")
