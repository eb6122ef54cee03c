"""Recovery checked on a held-out split: the report's figures, and plain rounding whenever GPTQ codes
are worse than it on the held-out rows."""

from __future__ import annotations

import numpy as np

from passes.replace_matmul import quantize_and_pack
from qcompiler.quantizers.recovery import held_out_check, output_error, quantize_plain, recover

RNG = np.random.default_rng(3)
SETTINGS = {"bits": None, "recovery": "gptq", "n_outliers": 2, "accuracy_level": 0, "scale_dtype": "float32"}


def _gram(x):
    return x.astype(np.float64).T @ x


def test_held_out_check_figures():
    w = RNG.standard_normal((32, 8)).astype(np.float32)
    x = RNG.standard_normal((2000, 32)) @ RNG.standard_normal((32, 32))   # correlated channels, as in a model
    x[:, 5] *= 8.0
    h_fit, h_held = _gram(x[:1500]), _gram(x[1500:])
    rec = recover(w, h_fit, "ternary", n_outliers=2).dequantized
    plain = quantize_plain(w, "ternary").dequantized
    chk = held_out_check(w, rec, plain, h_fit, h_held)
    rel = output_error(w, rec, h_held) / output_error(w, np.zeros_like(w), h_held)
    assert abs(chk["held_output_rel_error"] - rel) < 1e-6          # rounded to 6 places
    assert abs(chk["carry_over"] - chk["held_output_rel_error"] / chk["fit_output_rel_error"]) < 2e-3
    assert not chk["worse_than_plain"]                               # same distribution: recovery helps


def test_falls_back_when_recovery_is_worse_on_held_out():
    # Fit rows live in a 6-dim subspace: GPTQ pushes all rounding error into the directions they
    # never see, which the held-out rows (full rank) do see.
    k, n = 48, 16
    w = RNG.standard_normal((k, n)).astype(np.float32)
    basis = RNG.standard_normal((6, k))
    x_fit = RNG.standard_normal((2000, 6)) @ basis
    x_held = RNG.standard_normal((500, k))
    h_fit, h_held = _gram(x_fit), _gram(x_held)
    p = quantize_and_pack(w, "ternary", dict(SETTINGS), h_fit, rows=2000, held_gram=h_held)
    assert p.method.startswith("plain (recovery worse") and p.held_out["worse_than_plain"]
    plain = quantize_plain(w, "ternary").dequantized
    shipped = output_error(w, p.effective, h_held)
    assert shipped <= output_error(w, plain, h_held) * (1 + 1e-3)   # fp32 scales: equal up to rounding
    # the same data without a held-out split keeps GPTQ
    assert quantize_and_pack(w, "ternary", dict(SETTINGS), h_fit, rows=2000).method == "gptq"
