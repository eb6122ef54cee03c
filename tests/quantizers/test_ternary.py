"""Ternary quantizer against the TWN definition and the exact error-optimal threshold."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.quantizers.ternary import quantize_ternary, quantize_ternary_rows


def test_twn_hand_example():
    # mean|w| = 0.7 -> delta = 0.49; kept |w| = 0.5, 0.9, 1.3 -> alpha = 0.9
    w = np.array([[0.1], [-0.5], [0.9], [-1.3]], np.float32)
    t = quantize_ternary(w)
    assert t.codes[:, 0].tolist() == [0, -1, 1, -1]
    assert t.codes.dtype == np.int8 and t.scales.shape == (1, 1)
    assert t.scales[0, 0] == pytest.approx(0.9, abs=1e-6)
    np.testing.assert_allclose(t.dequantize()[:, 0], [0, -0.9, 0.9, -0.9], atol=1e-6)


def test_groups_with_k_not_a_multiple_of_group_size():
    # K = 5, group_size 2 -> G = 3; the last group holds one element (its mean is over 1, not 2)
    w = np.array([[1.0, 0.2], [0.1, -0.2], [-2.0, 0.0], [0.2, 0.0], [0.3, -4.0]], np.float32)
    t = quantize_ternary(w, group_size=2)
    assert t.codes.shape == (5, 2) and t.scales.shape == (2, 3)
    # group 0 column 0: mean|w| = 0.55, delta 0.385 -> only 1.0 kept
    assert t.codes[:2, 0].tolist() == [1, 0] and t.scales[0, 0] == pytest.approx(1.0)
    # group 2 (the single last element): delta = 0.7 * 0.3 -> kept, alpha = 0.3 / 4.0
    assert t.codes[4].tolist() == [1, -1]
    np.testing.assert_allclose(t.scales[:, 2], [0.3, 4.0], rtol=1e-6)
    # an all-zero group gives alpha 0 and codes 0
    assert t.scales[1, 1] == 0 and t.codes[2:4, 1].tolist() == [0, 0]
    np.testing.assert_allclose(t.dequantize()[4], [0.3, -4.0], rtol=1e-6)


def test_optimal_threshold_beats_every_threshold():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((37, 5)).astype(np.float32) * rng.uniform(0.1, 3, 5).astype(np.float32)
    opt = quantize_ternary(w, method="optimal")
    err_opt = ((w - opt.dequantize()) ** 2).sum(axis=0)
    for n in range(w.shape[1]):
        a = np.abs(w[:, n].astype(np.float64))
        for thr in np.concatenate([[0.0], a]):             # every support of the form |w| > thr
            keep = a > thr
            if not keep.any():
                continue
            alpha = a[keep].mean()
            err = ((w[:, n] - alpha * np.sign(w[:, n]) * keep) ** 2).sum()
            assert err_opt[n] <= err * (1 + 1e-5) + 1e-9    # float32 rounding of the stored alpha
    twn = quantize_ternary(w)
    assert np.all(err_opt <= ((w - twn.dequantize()) ** 2).sum(axis=0) * (1 + 1e-5))


def test_rows_variant_scales_each_row():
    rng = np.random.default_rng(2)
    table = rng.standard_normal((6, 16)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    codes, scales = quantize_ternary_rows(table)
    assert codes.shape == (6, 16) and scales.shape == (6,)
    for r in range(6):
        one = quantize_ternary(table[r][:, None])
        assert codes[r].tolist() == one.codes[:, 0].tolist()
        assert scales[r] == pytest.approx(float(one.scales[0, 0]))


def test_unknown_method():
    with pytest.raises(ValueError):
        quantize_ternary(np.ones((4, 2), np.float32), method="nope")
