"""Weights already on a format's grid are recognised and packed losslessly; others are not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcompiler.passes.replace_matmul import _settings, quantize_and_pack
from qcompiler.qat.modules import FakeQuantWeight, QuantSpec
from qcompiler.qat.on_grid import find_on_grid

SPECS = [QuantSpec("ternary"), QuantSpec("bcq", 2, 64), QuantSpec("bcq", 3, 64),
         QuantSpec("int4", group_size=32, scale_dtype="float32", symmetric=False),
         QuantSpec("int4", group_size=32, scale_dtype="float32", symmetric=True)]


def _trained(spec: QuantSpec, outliers, seed=0) -> np.ndarray:
    """A weight as training leaves it: the fake-quant forward of a latent moved off its init grid."""
    rng = np.random.default_rng(seed)
    w = torch.from_numpy(rng.standard_normal((192, 40)).astype(np.float32) * 0.05)
    f = FakeQuantWeight(w, spec, outliers)
    with torch.no_grad():
        f.weight.add_(torch.from_numpy(rng.standard_normal((192, 40)).astype(np.float32) * 0.01))
    return f.effective()


@pytest.mark.parametrize("outliers", [None, [5, 100]], ids=["plain", "outliers"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.format}{s.bits or ''}{'s' if s.symmetric else ''}")
def test_exact_codes_of_trained_weights(spec, outliers):
    w = _trained(spec, outliers)
    rec = find_on_grid(w, spec.format, spec.bits, spec.group_size, spec.scale_dtype, spec.symmetric, max_outliers=2)
    assert rec is not None
    assert np.array_equal(rec.dequantized, w)                     # bit for bit
    assert sorted(rec.outlier_idx.tolist()) == sorted(outliers or [])


@pytest.mark.parametrize("fmt", ["ternary", "bcq", "int4"])
def test_float_weights_are_not_on_grid(fmt):
    w = np.random.default_rng(1).standard_normal((192, 40)).astype(np.float32)
    assert find_on_grid(w, fmt, 2, 64, "float32") is None


def test_more_outliers_than_allowed_is_not_on_grid():
    w = _trained(QuantSpec("ternary"), [1, 2, 3])
    assert find_on_grid(w, "ternary", max_outliers=2) is None
    assert find_on_grid(w, "ternary", max_outliers=3) is not None


def test_float16_scales_required():
    w = _trained(QuantSpec("ternary", scale_dtype="float32"), None)
    if np.array_equal(w, w.astype(np.float16).astype(np.float32)):
        pytest.skip("scales happen to be float16 values")
    assert find_on_grid(w, "ternary", scale_dtype="float16") is None
    assert find_on_grid(w, "ternary", scale_dtype="float32") is not None


@pytest.mark.parametrize("fmt, settings, spec", [
    ("ternary", {"recovery": "gptq"}, QuantSpec("ternary")),
    ("bcq", {"recovery": "gptq", "bits": 2, "group_size": 64}, QuantSpec("bcq", 2, 64)),
])
def test_replace_matmul_packs_on_grid_weights_losslessly(fmt, settings, spec):
    # GPTQ would move an on-grid weight; the pass must keep it exactly (what the trained model computed).
    w = _trained(spec, [7, 9])
    x = np.random.default_rng(2).standard_normal((400, 192)).astype(np.float32)
    p = quantize_and_pack(w, fmt, _settings("w", fmt, settings), x.T @ x)
    assert p.method == "on-grid (lossless)"
    assert np.array_equal(p.effective, w)
