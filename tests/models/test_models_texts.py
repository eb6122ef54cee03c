"""Generated calibration / evaluation sentences."""

import pytest

from models.texts import all_sentences, calibration_sentences, evaluation_sentences


def test_splits_are_disjoint_and_sized():
    calib, evals = calibration_sentences(512), evaluation_sentences(256)
    assert len(calib) == 512 and len(evals) == 256
    assert len(set(calib)) == 512 and len(set(evals)) == 256
    assert not set(calib) & set(evals)
    assert not set(calibration_sentences(800)) & set(evaluation_sentences(400))


def test_lengths_and_variety():
    pool = all_sentences()
    assert len(pool) >= 600
    lengths = [len(s.split()) for s in pool]
    assert min(lengths) >= 5 and max(lengths) <= 40
    assert sum(l < 10 for l in lengths) > 50 and sum(l > 25 for l in lengths) > 50
    assert len({s.split()[0] for s in pool}) > 30


def test_deterministic_and_prefix_stable():
    assert calibration_sentences(10) == calibration_sentences(512)[:10]
    assert evaluation_sentences(5) == evaluation_sentences(256)[:5]


def test_too_many_raises():
    with pytest.raises(ValueError):
        evaluation_sentences(10_000)
