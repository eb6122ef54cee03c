"""Issue 18 case 9: without --calib, recovery on a [B, K] model had 16 synthesized rows and did worse
than plain rounding (rel. error 0.66-0.70 vs 0.44). Below max(128, K/4) calibration rows a linear
falls back to plain rounding and the report says so; with enough rows recovery runs again.

Checked by the CLI on the model of the issue (x [B, K] -> MatMul): the fallback gives exactly
plain rounding's output (same codes), and the note names the row count.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler.ops as qops
from qcompiler.cli import main

K, N = 64, 48


@pytest.fixture()
def src(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "lin",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", N])],
                              [numpy_helper.from_array(w, "W")])
    path = tmp_path / "lin.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    return path


def _compile(src, out, scheme, *extra) -> dict:
    rep = out.with_suffix(".json")
    assert main([str(src), "-s", scheme, "-o", str(out), "--report", str(rep), "-q", *extra]) == 0
    return json.loads(rep.read_text())


def _method(rep) -> str:
    return next(d["linears"] for d in rep["passes"].values() if isinstance(d, dict) and "linears" in d)[0]["method"]


def _run(path, x):
    opts = ort.SessionOptions()
    qops.register(opts)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("scheme", ["ternary", "bcq2", "kmeans4"])
def test_too_few_synthesized_rows_round_plainly_and_say_so(src, tmp_path, scheme):
    rep = _compile(src, tmp_path / "default.onnx", scheme)
    assert _method(rep).startswith("plain (") and "calibration rows <" in _method(rep), _method(rep)
    assert any("rounded plainly" in n and "calibration rows < 128" in n for n in rep["notes"]), rep["notes"]
    plain = tmp_path / "plain.toml"       # the same scheme with recovery off: the codes must be the same
    text = (resources.files("qcompiler") / "schemes" / f"{scheme}.toml").read_text()
    plain.write_text(text.replace('recovery = "gptq"', 'recovery = "none"').replace(f'name = "{scheme}"', 'name = "plain"'))
    _compile(src, tmp_path / "plain.onnx", str(plain), "--no-verify")
    x = np.random.default_rng(5).standard_normal((16, K)).astype(np.float32)
    np.testing.assert_array_equal(_run(tmp_path / "default.onnx", x), _run(tmp_path / "plain.onnx", x))


def test_enough_rows_recover(src, tmp_path):
    """256 calibration rows >= 128: recovery runs (the fallback is a threshold, not a switch-off)."""
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(6).standard_normal((256, K)).astype(np.float32))
    rep = _compile(src, tmp_path / "calibrated.onnx", "ternary", "--calib", str(tmp_path / "c.npz"))
    assert not _method(rep).startswith("plain"), _method(rep)
    assert not any("rounded plainly" in n for n in rep["notes"])
