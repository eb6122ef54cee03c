"""Augmented calibration samples: deterministic under a seed, well-formed (same shapes, mask = the
unpadded tokens, the opening and closing tokens kept), and different from the samples they vary."""

from __future__ import annotations

import numpy as np

from qcompiler.qat.augment import augment


def _feeds(n=6, seq=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(5, seq + 1))
        ids = np.zeros((1, seq), np.int64)
        ids[0, :length] = [101, *rng.integers(1000, 2000, length - 2), 102]
        mask = (ids != 0).astype(np.int64)
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return out


def test_deterministic_under_a_seed():
    a, b, c = augment(_feeds(), 3, seed=5), augment(_feeds(), 3, seed=5), augment(_feeds(), 3, seed=6)
    assert len(a) == 18
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert any(not np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))


def test_variants_are_well_formed_and_new():
    feeds = _feeds()
    out = augment(feeds, 4, seed=1)
    originals = {f["input_ids"].tobytes() for f in feeds}
    assert sum(v["input_ids"].tobytes() not in originals for v in out) >= len(out) * 3 // 4
    for v in out:
        assert {k: x.shape for k, x in v.items()} == {k: x.shape for k, x in feeds[0].items()}
        ids, mask = v["input_ids"][0], v["attention_mask"][0]
        n = int(mask.sum())
        assert n >= 3 and np.all(mask[:n] == 1) and np.all(mask[n:] == 0)
        assert ids[0] == 101 and ids[n - 1] == 102 and np.all(ids[n:] == 0)
        assert np.all(v["token_type_ids"] == 0)


def test_nothing_to_vary_without_token_ids():
    assert augment([{"x": np.zeros((1, 4), np.float32)}], 3) == []
