"""Beam search's candidate selection equals the full stable sort it replaced (ties in index order,
-inf entries as at the forced-EOS step), exactly: integer-valued scores make ties common."""

import numpy as np

from qcompiler.seq2seq import _top_k_stable


def test_top_k_equals_stable_argsort_with_ties_and_inf():
    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(1, 300))
        x = rng.integers(-4, 4, n).astype(np.float32)
        if trial % 3 == 0:
            x[rng.random(n) < 0.6] = -np.inf
        if trial % 7 == 0:
            x[:] = -np.inf
            x[int(rng.integers(n))] = 0.0
        k = int(rng.integers(1, 12))
        np.testing.assert_array_equal(_top_k_stable(x, k), np.argsort(-x, kind="stable")[:k])
