"""Recovery and the amount of calibration data: shrinkage from rows per channel, and plain rounding
when the rows are too few (a Gram of fewer rows than channels fits the sample, not the data)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from qcompiler.pipeline import compile_model
from qcompiler.schemes import BUILTIN_DIR
from qcompiler.quantizers.recovery import (MIN_RECOVERY_ROWS, output_error, quantize_plain, recover,
                                           shrinkage_for, too_few_rows)


def test_too_few_rows_threshold():
    assert too_few_rows(None, 64) is None
    assert too_few_rows(MIN_RECOVERY_ROWS, 64) is None
    assert "16 calibration rows" in too_few_rows(16, 64)
    assert too_few_rows(300, 1536) is not None and too_few_rows(384, 1536) is None   # k / 4 for wide inputs


def test_shrinkage_for():
    assert shrinkage_for(None, 384, 1.0) == 0.0 and shrinkage_for(3000, 384, 0.0) == 0.0
    assert shrinkage_for(3840, 384, 1.0) == pytest.approx(0.1)
    assert shrinkage_for(100, 384, 1.0) == 1.0


def test_full_shrinkage_is_the_diagonal_gram():
    """Shrunk all the way, H is its diagonal: no error feedback between input rows."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    x = rng.standard_normal((500, 64)) @ (np.eye(64) + rng.standard_normal((64, 64)) / 8)
    H = x.T @ x
    full = recover(w, H, "bcq", 2, n_outliers=2, shrink=1.0)
    diag = recover(w, np.diag(np.diag(H)), "bcq", 2, n_outliers=2)
    np.testing.assert_array_equal(full.codes, diag.codes)
    np.testing.assert_allclose(full.dequantized, diag.dequantized, rtol=1e-6, atol=1e-7)


def test_shrinkage_generalizes_from_few_rows():
    """Few correlated rows: shrinkage lowers the output error on fresh rows of the same distribution."""
    rng = np.random.default_rng(2)
    k, n = 128, 48
    mix = np.eye(k) + rng.standard_normal((k, k)) / np.sqrt(k) * 2
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    fit = rng.standard_normal((160, k)) @ mix
    held = rng.standard_normal((4000, k)) @ mix
    Hf, Hh = fit.T @ fit, held.T @ held
    err = {s: output_error(w, recover(w, Hf, "ternary", n_outliers=0, shrink=s).dequantized, Hh) for s in (0.0, 0.5)}
    assert err[0.5] < err[0.0]


def _linear_2d(path, k=64, n=32, seed=0):
    """x [B, K] -> MatMul -> y: the 2-D input of issue 18's case (one row per synthesized sample)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")], "lin",
                              [helper.make_tensor_value_info("x", 1, ["B", k])],
                              [helper.make_tensor_value_info("y", 1, ["B", n])], [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("scheme", ["ternary", "int4"])
def test_synthesized_rows_too_few_fall_back_to_plain(tmp_path, scheme):
    """No --calib on a [B, K] model: 64 synthesized rows < 128, so recovery gives way to plain rounding
    (the same codes as recovery = "none") and the report says why."""
    src = tmp_path / "lin.onnx"
    _linear_2d(src)
    rep = compile_model(str(src), scheme=scheme, output=str(tmp_path / "gptq.onnx"), verify=False, progress=False)
    linears = next(d["linears"] for d in rep["passes"].values() if isinstance(d, dict) and "linears" in d)
    assert linears[0]["method"].startswith("plain (64 calibration rows < 128")
    assert any("rounded plainly" in n and "calibration rows" in n for n in rep["notes"])
    toml = tmp_path / "plain.toml"
    base = resources.files("qcompiler") / BUILTIN_DIR / f"{scheme}.toml"
    toml.write_text(base.read_text().replace('recovery = "gptq"', 'recovery = "none"').replace(
        f'name = "{scheme}"', 'name = "plain"'))
    compile_model(str(src), scheme=str(toml), output=str(tmp_path / "plain.onnx"), verify=False, progress=False)
    x = np.random.default_rng(5).standard_normal((8, 64)).astype(np.float32)
    np.testing.assert_array_equal(_run(tmp_path / "gptq.onnx", x), _run(tmp_path / "plain.onnx", x))
