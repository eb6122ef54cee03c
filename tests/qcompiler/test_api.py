"""qcompiler.compile: a path, an onnx.ModelProto or an onnx_ir.Model in; a CompileResult out."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import qcompiler
from qcompiler.errors import CalibrationError, UsageError


def _calib(n=20, seq=8, vocab=100, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (n, seq), dtype=np.int64)   # first axis = samples (batch 1 each)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _inputs(path):
    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def test_path_in_typed_result_out(tiny_bert, tmp_path):
    out = tmp_path / "o.onnx"
    result = qcompiler.compile(tiny_bert, "int8", out)
    assert isinstance(result, qcompiler.CompileResult)
    assert result.output == out and out.exists()
    assert result.size_after < result.size_before and result.compression > 1
    assert result.weights and all(isinstance(w, qcompiler.WeightResult) for w in result.weights)
    assert {w.format for w in result.weights} >= {"int8"}
    measured = [w for w in result.weights if w.rel_l2 is not None]
    assert measured and all(0 <= w.rel_l2 < 0.2 for w in measured)   # per-linear error from verification
    assert result.verification["outputs"] and result.to_dict()["output"] == str(out)


@pytest.mark.parametrize("kind", ["proto", "ir"])
def test_in_memory_models(tiny_bert, tmp_path, kind):
    model = onnx.load(str(tiny_bert)) if kind == "proto" else ir.load(str(tiny_bert))
    out = tmp_path / f"{kind}.onnx"
    result = qcompiler.compile(model, scheme="int8", output=out, verify=False)
    assert out.exists() and result.input.startswith("<in-memory")
    with pytest.raises(UsageError, match="output= is required"):
        qcompiler.compile(model, scheme="int8")


def test_calibration_as_a_dict(tiny_bert, tmp_path):
    names = _inputs(tiny_bert)
    calib = {k: v for k, v in _calib().items() if k in names}
    result = qcompiler.compile(tiny_bert, "int4", tmp_path / "o.onnx", calib=calib, verify=False)
    assert "20 samples" in result.calibration
    with pytest.raises(CalibrationError):
        qcompiler.compile(tiny_bert, "int4", tmp_path / "p.onnx", calib={"nope": np.zeros((2, 4), np.int64)})
    with pytest.raises(CalibrationError):
        qcompiler.compile(tiny_bert, "int4", tmp_path / "q.onnx", calib=[1, 2])


def test_other_objects_are_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="must be a path, an onnx.ModelProto or an onnx_ir.Model"):
        qcompiler.compile(42, output=tmp_path / "x.onnx")


def test_docstring_documents_the_arguments():
    doc = qcompiler.compile.__doc__
    for word in ("model:", "scheme:", "output:", "calib:", "exclude:", "target:", "min_cosine:", "Raises"):
        assert word in doc
