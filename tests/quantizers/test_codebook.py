"""k-means codebooks: never worse than the init, nearest assignment, exact on few distinct values."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.quantizers.codebook import quantize_codebook


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_never_worse_than_init(bits):
    rng = np.random.default_rng(bits)
    w = (rng.standard_t(4, (100, 20)) * rng.uniform(0.1, 1, 20)).astype(np.float32)
    init = quantize_codebook(w, bits, iterations=0, seed=3)      # the k-means++ seeding alone
    km = quantize_codebook(w, bits, iterations=8, seed=3)
    e0 = ((w - init.dequantize()) ** 2).sum(0)
    e1 = ((w - km.dequantize()) ** 2).sum(0)
    assert np.all(e1 <= e0 * (1 + 1e-6))                     # float32 codebook storage
    assert e1.sum() < e0.sum()
    assert km.indices.shape == (100, 20) and km.indices.dtype == np.uint8
    assert km.codebook.shape == (20, 2 ** bits) and km.codebook.dtype == np.float32
    assert km.indices.max() < 2 ** bits


def test_assignment_is_nearest_centroid():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((50, 6)).astype(np.float32)
    km = quantize_codebook(w, 3)
    d = np.abs(w[:, :, None] - km.codebook[None, :, :])       # [K, N, C]
    np.testing.assert_allclose(d.min(axis=2), np.abs(w - km.dequantize()), atol=1e-6)


def test_few_distinct_values_are_exact():
    w = np.array([[1.0, -2.0], [3.0, -2.0], [1.0, 5.0], [3.0, 5.0], [-1.0, -2.0]], np.float32)
    km = quantize_codebook(w, 2)
    np.testing.assert_allclose(km.dequantize(), w)


def test_seeded_and_weighted():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((40, 4)).astype(np.float32)
    a, b = quantize_codebook(w, 2, seed=1), quantize_codebook(w, 2, seed=1)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.codebook, b.codebook)
    weights = np.ones(40)
    weights[0] = 1e6                                          # row 0 must be reproduced almost exactly
    c = quantize_codebook(w, 2, weights=weights)
    assert np.abs(c.dequantize()[0] - w[0]).max() < 1e-3


def test_bits_out_of_range():
    with pytest.raises(ValueError):
        quantize_codebook(np.ones((4, 2), np.float32), bits=1)
