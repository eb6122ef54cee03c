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


def test_grams_beyond_a_quarter_of_the_budget_are_not_collected(tmp_path, monkeypatch):
    # This test is about the Gram budget, not the rows rule (tests/quantizers/test_recovery_rows.py):
    # the small block model's synthesized calibration has fewer rows than recovery asks for by default.
    from qcompiler.passes import replace_matmul

    monkeypatch.setattr(replace_matmul, "too_few_rows", lambda rows, k: None)
    onnx.save(fm.block_model(), str(tmp_path / "b.onnx"))
    full = compile_model(tmp_path / "b.onnx", scheme="ternary", output=tmp_path / "t1.onnx", verify=False)
    assert {lin["method"] for lin in full["passes"]["replace_matmul"]["linears"]} == {"gptq"}
    # a budget whose quarter holds the 32x32 Gram (8 KB) but not also the 48x48 one (18 KB)
    small = compile_model(tmp_path / "b.onnx", scheme="ternary", output=tmp_path / "t2.onnx", verify=False,
                          memory_budget=4 * (8 * 32 * 32 + 100))
    methods = [lin["method"] for lin in small["passes"]["replace_matmul"]["linears"]]
    assert methods == ["gptq", "plain (no calibration statistics)"]
    assert any("recovery statistics kept for 1 of 2" in n for n in small["notes"])


def _chain_with_calibration(tmp_path, layers=6, dim=512, samples=40):
    from models.large_synthetic import write_chain

    src = write_chain(tmp_path / "c.onnx", layers=layers, dim=dim)
    x = np.random.default_rng(0).standard_normal((samples, dim)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", h0=x)
    return src, tmp_path / "calib.npz"


def test_streaming_calibrates_in_pieces_within_the_budget(tmp_path, monkeypatch):
    """A streaming compile with --calib data runs calibration piece by piece: no onnxruntime session
    holds more than one 1 MB weight (the pieces' floor with this budget), the Gram matrices come back
    memory-mapped from disk, every linear gets calibrated recovery, and nothing is left behind."""
    from qcompiler import calibration
    from qcompiler.passes import quantize_int4
    from qcompiler.pipeline import CALIB_PIECE_MIN_BYTES

    # About pieces and memory, not the rows rule (tests/quantizers/test_recovery_rows.py): 40 samples
    # of one row each are below its bound for 512 input channels.
    monkeypatch.setattr(quantize_int4, "too_few_rows", lambda rows, k: None)
    src, calib = _chain_with_calibration(tmp_path)          # 6 weights of 1 MB, Grams of 2 MB
    sessions, grams = [], []
    original_session = calibration._piece_session

    def spy_session(model, nodes, node_idx, inputs, outputs):
        inits = model.graph.initializers
        sessions.append(sum(v.const_value.nbytes for i in node_idx
                            for v in calibration._initializer_inputs(nodes[i], inits)))
        return original_session(model, nodes, node_idx, inputs, outputs)

    original_collect = calibration.collect_stats_in_pieces

    def spy_collect(*args, **kwargs):
        stats, info = original_collect(*args, **kwargs)
        grams.extend(type(st.gram) for st in stats.values())
        return stats, info

    monkeypatch.setattr(calibration, "_piece_session", spy_session)
    monkeypatch.setattr(calibration, "collect_stats_in_pieces", spy_collect)
    rep = compile_model(src, scheme="int4", output=tmp_path / "s.onnx", calib=calib, verify=False,
                        memory_budget=4 * CALIB_PIECE_MIN_BYTES)
    assert any("streaming compile" in n for n in rep["notes"])
    assert any(n.startswith("calibrated in 6 pieces") for n in rep["notes"]), rep["notes"]
    assert rep["calibration"].endswith("(40 samples)")
    # the last MatMul's output feeds no linear: its piece needs no session
    assert len(sessions) == 5 and max(sessions) == 512 * 512 * 4
    assert grams and set(grams) == {np.memmap}
    assert [lin["method"] for lin in rep["passes"]["quantize_int4"]["linears"]] == ["gptq"] * 6
    assert not [p for p in tmp_path.iterdir() if model_io.TMP_PREFIX in p.name]
    # the compiled model runs and is close to the FP32 chain (int4 block 32: ~10% weight error per layer)
    x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
    ref = ort.InferenceSession(str(src)).run(None, {"h0": x})[0]
    got = ort.InferenceSession(str(tmp_path / "s.onnx")).run(None, {"h0": x})[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.4


def test_streaming_without_calibration_data_skips_calibration(tmp_path):
    src, _ = _chain_with_calibration(tmp_path, layers=2, dim=64)
    rep = compile_model(src, scheme="int4", output=tmp_path / "s.onnx", verify=False, memory_budget=0)
    assert any(n.startswith("calibration skipped: a streaming compile calibrates only on given data") for n in rep["notes"])
    assert {lin["method"] for lin in rep["passes"]["quantize_int4"]["linears"]} == {"plain (no calibration statistics)"}


def test_streaming_calibration_samples_are_capped(tmp_path, monkeypatch):
    from qcompiler import pipeline

    monkeypatch.setattr(pipeline, "STREAMING_CALIB_SAMPLES", 8)
    src, calib = _chain_with_calibration(tmp_path, layers=2, dim=64, samples=30)
    rep = compile_model(src, scheme="int8", output=tmp_path / "s.onnx", calib=calib, verify=False, memory_budget=0)
    assert rep["calibration"].endswith("(30 samples), 8 of them used (evenly spaced)")
    assert any("on 8 samples" in n for n in rep["notes"])
