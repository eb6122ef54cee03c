"""Binary-code quantizer: greedy init by definition, alternating refinement never worse than greedy."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.quantizers.binary_code import nearest_combination, quantize_binary_code
from qcompiler.quantizers.ternary import group_view


def _group_err(w, q, gs):
    return ((group_view(w - q, gs)) ** 2).sum(axis=1)         # [G, N]


def test_one_bit_greedy_is_sign_and_mean_abs():
    w = np.array([[0.5, -1.0], [-1.5, 2.0], [1.0, 3.0]], np.float32)
    b = quantize_binary_code(w, bits=1, method="greedy")
    assert b.planes.shape == (1, 3, 2) and b.alphas.shape == (1, 2, 1)
    assert b.planes[0].tolist() == [[1, -1], [-1, 1], [1, 1]]
    np.testing.assert_allclose(b.alphas[0, :, 0], [1.0, 2.0], rtol=1e-6)


def test_two_bit_greedy_by_hand():
    w = np.array([[3.0], [1.0], [-1.0], [-3.0]], np.float32)
    b = quantize_binary_code(w, bits=2, method="greedy")
    # plane 0: signs, alpha 2; residual +-1 -> plane 1 its signs, alpha 1: exact
    np.testing.assert_allclose(b.alphas[:, 0, 0], [2.0, 1.0])
    np.testing.assert_allclose(b.dequantize(), w)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("group_size", [None, 16])
def test_alternating_never_worse_than_greedy(bits, group_size):
    rng = np.random.default_rng(bits)
    # heavy tails make greedy clearly sub-optimal; K = 70 is not a multiple of 16
    w = (rng.standard_t(3, (70, 24)) * rng.uniform(0.01, 1, 24)).astype(np.float32)
    g = quantize_binary_code(w, bits, group_size, method="greedy")
    a = quantize_binary_code(w, bits, group_size, method="alternating")
    gs = g.group_size
    eg, ea = _group_err(w, g.dequantize(), gs), _group_err(w, a.dequantize(), gs)
    # per channel and group; 1e-5 relative covers the float32 storage of the alphas
    assert np.all(ea <= eg * (1 + 1e-5) + 1e-12)
    if bits >= 2:
        assert ea.sum() < 0.97 * eg.sum()                    # and it does improve in aggregate
    G = -(-70 // gs)
    assert a.planes.shape == (bits, 70, 24) and a.planes.dtype == np.int8
    assert a.alphas.shape == (bits, 24, G) and a.alphas.dtype == np.float32
    assert set(np.unique(a.planes)) <= {-1, 1}
    assert np.all(a.alphas >= 0)


def test_dequantize_is_the_sum_of_planes():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((10, 3)).astype(np.float32)
    b = quantize_binary_code(w, bits=3, group_size=4)
    manual = np.zeros_like(w)
    for k in range(10):
        for n in range(3):
            manual[k, n] = sum(b.alphas[i, n, k // 4] * b.planes[i, k, n] for i in range(3))
    np.testing.assert_allclose(b.dequantize(), manual, rtol=1e-6, atol=1e-7)


def test_nearest_combination_is_the_nearest():
    rng = np.random.default_rng(6)
    alphas = np.abs(rng.standard_normal((3, 8)))
    x = rng.standard_normal(8) * 2
    signs = nearest_combination(x, alphas)
    got = np.abs((signs * alphas).sum(0) - x)
    for n in range(8):
        best = min(abs(sum(s * a for s, a in zip(c, alphas[:, n])) - x[n])
                   for c in np.array(np.meshgrid(*[[-1, 1]] * 3)).reshape(3, -1).T)
        assert got[n] == pytest.approx(best)


def test_bits_out_of_range():
    with pytest.raises(ValueError):
        quantize_binary_code(np.ones((4, 2), np.float32), bits=5)
