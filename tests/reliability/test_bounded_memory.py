"""Bounded memory on models bigger than the budget, checked on small models with small budgets:
streaming spills packed weights and leaves no spill file, skips calibration and verification
with a note, and Gram matrices beyond a quarter of the budget are not collected."""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

from qcompiler import model_io
from qcompiler.pipeline import compile_model

sys.path.insert(0, os.path.dirname(__file__))
import fuzz_models as fm  # noqa: E402


def test_streaming_spills_and_gives_a_correct_model(tmp_path, monkeypatch):
    """Packed weights go through the spill file, which is gone after the save; the model runs."""
    src = fm.linear_model(tmp_path / "m.onnx", k=1024, n=512)   # a 2 MB weight: spilled (>= 1 MB)
    monkeypatch.setattr(model_io, "SPILL_MIN_BYTES", 1024)
    written = []
    original = model_io.Spill._write

    def spy(self, tensor, name):
        written.append(name)
        return original(self, tensor, name)

    monkeypatch.setattr(model_io.Spill, "_write", spy)
    streamed = compile_model(src, scheme="int4", output=tmp_path / "s.onnx", verify=False, memory_budget=0)
    assert written, "nothing was spilled"
    assert any("streaming compile" in n for n in streamed["notes"])
    assert any("calibration skipped" in n for n in streamed["notes"])
    assert not [p for p in tmp_path.iterdir() if model_io.TMP_PREFIX in p.name]
    a = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "s.onnx")).graph.initializer}
    x = np.random.default_rng(0).standard_normal((4, 1024)).astype(np.float32)
    ref = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "s.onnx")).run(None, {"x": x})[0]
    # int4 block 32 of a N(0, 1) weight: ~10% weight error, so the output's relative error is ~0.1
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.2
    assert "W_Q4" in a


def test_grams_beyond_a_quarter_of_the_budget_are_not_collected(tmp_path):
    onnx.save(fm.block_model(), str(tmp_path / "b.onnx"))
    full = compile_model(tmp_path / "b.onnx", scheme="ternary", output=tmp_path / "t1.onnx", verify=False)
    assert {lin["method"] for lin in full["passes"]["replace_matmul"]["linears"]} == {"gptq"}
    # a budget whose quarter holds the 32x32 Gram (8 KB) but not also the 48x48 one (18 KB)
    small = compile_model(tmp_path / "b.onnx", scheme="ternary", output=tmp_path / "t2.onnx", verify=False,
                          memory_budget=4 * (8 * 32 * 32 + 100))
    methods = [lin["method"] for lin in small["passes"]["replace_matmul"]["linears"]]
    assert methods == ["gptq", "plain (no calibration statistics)"]
    assert any("recovery statistics kept for 1 of 2" in n for n in small["notes"])
