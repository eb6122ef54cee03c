"""Blockwise int4 clip search: each block's choice against a float64 brute force over the same
candidates, the error it reports, and the coarse grid + zoom against the dense grid it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.quantizers.uniform import quantize_blockwise


def _weights(k=200, n=48, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[rng.random((k, n)) < 0.02] *= 6          # a few outliers per column: clipping pays off
    return w


def _block_errors(w, q, block_size):
    """Squared error of every block [G, N] in float64."""
    k, n = w.shape
    g = -(-k // block_size)
    d = np.zeros((g * block_size, n))
    d[:k] = q.dequantize().astype(np.float64) - w
    return np.square(d).reshape(g, block_size, n).sum(axis=1)


def _brute_force(w, block_size, symmetric, ratios):
    """Least error per block [G, N] over the ratios (and both full-range targets), in float64."""
    k, n = w.shape
    g = -(-k // block_size)
    x = np.zeros((g * block_size, n))
    x[:k] = w
    x = x.reshape(g, block_size, n)
    best = np.full((g, n), np.inf)
    if symmetric:
        idx = np.abs(x).argmax(axis=1)[:, None, :]
        extreme = np.take_along_axis(x, idx, axis=1)[:, 0, :]
        for target in (-8.0, 7.0):
            for r in ratios:
                s = np.where(extreme != 0, extreme * r / target, 1.0)[:, None, :]
                best = np.minimum(best, np.square(np.clip(np.rint(x / s), -8, 7) * s - x).sum(axis=1))
    else:
        lo, hi = np.minimum(x.min(axis=1), 0), np.maximum(x.max(axis=1), 0)
        base = np.where(hi - lo > 0, (hi - lo) / 15, 1.0)
        zp = np.clip(np.rint(-lo / base), 0, 15)[:, None, :]
        for r in ratios:
            s = (base * r)[:, None, :]
            best = np.minimum(best, np.square((np.clip(np.rint(x / s) + zp, 0, 15) - zp) * s - x).sum(axis=1))
    return best


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block_size", [16, 32])
def test_each_block_gets_the_best_grid_candidate(symmetric, block_size):
    # K = 200 is not a multiple of the block: the last block is zero-padded.
    w = _weights()
    ratios = np.linspace(1.0, 0.5, 6)
    q = quantize_blockwise(w, 4, block_size, symmetric, grid=6, full_range=symmetric)
    got = _block_errors(w, q, block_size)
    want = _brute_force(w, block_size, symmetric, ratios)
    # float32 scoring vs float64: a near-tie may go the other way; 1e-4 relative covers that
    # (a wrong candidate costs percents).
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("symmetric", [True, False])
def test_reported_squared_error_is_the_dequantized_error(symmetric):
    w = _weights(seed=1)
    q = quantize_blockwise(w, 4, 32, symmetric, full_range=symmetric, grid=4, zoom=2, refine=1)
    actual = float(np.square(q.dequantize().astype(np.float64) - w).sum())
    # float32 per-block sums: relative 1e-5
    assert q.squared_error == pytest.approx(actual, rel=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_search_never_worse_than_min_max_rounding(symmetric):
    w = _weights(seed=2)
    rtn = quantize_blockwise(w, 4, 32, symmetric, search_clip=False, full_range=symmetric)
    q = quantize_blockwise(w, 4, 32, symmetric, full_range=symmetric, grid=4, zoom=2, refine=1)
    # ratio 1 is a candidate, and a candidate is kept only when it errs less: per block, exact
    # up to float32 scoring (1e-5 relative)
    assert np.all(_block_errors(w, q, 32) <= _block_errors(w, rtn, 32) * (1 + 1e-5) + 1e-12)


@pytest.mark.parametrize("symmetric", [True, False])
def test_coarse_grid_with_zoom_matches_the_dense_grid(symmetric):
    """3 ratios (1, 0.8, 0.6) + 2 halvings (7 candidates per block, what quantize_int4 uses) against
    the 20-ratio grid it replaced: within 1% of its total error (on MiniLM's linears 0.00628 vs
    0.00639 asymmetric, 0.00730 vs 0.00723 symmetric)."""
    w = _weights(512, 128, seed=3)
    dense = quantize_blockwise(w, 4, 32, symmetric, full_range=symmetric, grid=20, refine=1)
    zoomed = quantize_blockwise(w, 4, 32, symmetric, full_range=symmetric, grid=3, min_ratio=0.6, zoom=2, refine=1)
    assert zoomed.squared_error <= 1.01 * dense.squared_error


def test_rows_in_slices_are_the_rows_at_once(monkeypatch):
    """quantize_rows searches a slice of rows at a time (rows are independent): same codes, scales
    and error as one search over the whole table, bit for bit."""
    from qcompiler.quantizers import uniform
    from qcompiler.quantizers.uniform import quantize_rows

    table = _weights(300, 96, seed=4)
    whole = quantize_rows(table, bits=4, block_size=32, search_clip=True)
    monkeypatch.setattr(uniform, "ROWS_ELEMENTS", 96 * 37)      # slices of 37 rows, the last one short
    sliced = quantize_rows(table, bits=4, block_size=32, search_clip=True)
    np.testing.assert_array_equal(sliced.codes, whole.codes)
    np.testing.assert_array_equal(sliced.scales, whole.scales)
    assert sliced.squared_error == pytest.approx(whole.squared_error, rel=1e-12)   # float64 sums, another order
