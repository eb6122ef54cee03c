"""Odd graphs users bring (issue 15 item 4): float16 models, Gemm with transA, a MatMul whose weight
is a graph input without a default, and initializers shared by the files of a folder (one external
data file)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx.parser
import onnxruntime as ort
import pytest

from qcompiler.cli import main
from qcompiler.pipeline import compile_model

RNG = np.random.default_rng(0)


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


# float16 weights and activations: a table, two linears.
FP16 = """
<ir_version: 8, opset_import: ["" : 18]>
g (int64[B,T] ids) => (float16[B,T,64] y) {
  e = Gather(E, ids)
  a = MatMul(e, W)
  r = Relu(a)
  y = MatMul(r, V)
}
"""


@pytest.fixture()
def fp16_model(tmp_path):
    m = onnx.parser.parse_model(FP16)
    m.graph.initializer.extend([nh.from_array(RNG.standard_normal((500, 64)).astype(np.float16), "E"),
                                nh.from_array((RNG.standard_normal((64, 64)) / 8).astype(np.float16), "W"),
                                nh.from_array((RNG.standard_normal((64, 64)) / 8).astype(np.float16), "V")])
    path = tmp_path / "fp16.onnx"
    onnx.save(m, path)
    return path


def test_float16_model_compiles_int4_in_float16(fp16_model, tmp_path):
    out = tmp_path / "fp16.int4.onnx"
    rep = compile_model(fp16_model, "int4", output=out)
    formats = {w["name"]: w["format"] for w in rep["weights"]}
    assert formats["W"] == formats["V"] == "int4" and formats["E"] in ("int4", "int8")
    model = onnx.load(str(out))
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert not [t.name for t in model.graph.initializer if t.name in ("E", "W", "V")]   # no float copy left
    feeds = {"ids": RNG.integers(0, 500, (2, 7)).astype(np.int64)}
    got = _run(out, feeds)
    assert got.dtype == np.float16
    # 4-bit linears and 4/8-bit rows on random weights: ~10% relative L2 measured; 0.3 catches a broken graph.
    assert _rel(_run(fp16_model, feeds), got) < 0.3


@pytest.mark.parametrize("scheme", ["ternary", "kmeans4"])
def test_float16_model_refused_by_float32_only_formats(fp16_model, tmp_path, capsys, scheme):
    out = tmp_path / f"fp16.{scheme}.onnx"
    assert main([str(fp16_model), "--scheme", scheme, "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "float16 activations" in err and "--scheme int4" in err, err
    assert not out.exists()


GEMM_TRANS_A = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[64,B] x) => (float[B,32] y) {
  y = Gemm <transA = 1, alpha = 0.5, beta = 2.0> (x, W, c)
}
"""


def test_gemm_with_trans_a_is_quantized_and_exact_in_form(tmp_path):
    m = onnx.parser.parse_model(GEMM_TRANS_A)
    m.graph.initializer.extend([nh.from_array(RNG.standard_normal((64, 32)).astype(np.float32), "W"),
                                nh.from_array(RNG.standard_normal((32,)).astype(np.float32), "c")])
    src, out = tmp_path / "gemm.onnx", tmp_path / "gemm.int8.onnx"
    onnx.save(m, src)
    rep = compile_model(src, "int8", output=out)
    assert [w["format"] for w in rep["weights"]] == ["int8"]
    assert not [n for n in onnx.load(str(out)).graph.node if n.op_type == "Gemm"]
    x = RNG.standard_normal((64, 5)).astype(np.float32)
    # int8 weights and dynamic int8 activations over K = 64: ~1% measured; 0.03 bound.
    assert _rel(_run(src, {"x": x}), _run(out, {"x": x})) < 0.03


PURE_INPUT = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[B,32] x, float[32,16] w) => (float[B,8] y) {
  h = MatMul(x, w)
  r = Relu(h)
  y = MatMul(r, v)
}
"""


def test_matmul_weight_that_is_only_a_graph_input_is_left_alone_with_a_reason(tmp_path):
    m = onnx.parser.parse_model(PURE_INPUT)
    m.graph.initializer.append(nh.from_array(RNG.standard_normal((16, 8)).astype(np.float32), "v"))
    src, out = tmp_path / "pure.onnx", tmp_path / "pure.int8.onnx"
    onnx.save(m, src)
    rep = compile_model(src, "int8", output=out, verify=False)
    assert any("graph inputs, fed at run time" in n and "w" in n for n in rep["notes"]), rep["notes"]
    assert [w["name"] for w in rep["weights"] if w["format"] != "keep"] == ["v"]
    feeds = {"x": RNG.standard_normal((3, 32)).astype(np.float32), "w": RNG.standard_normal((32, 16)).astype(np.float32)}
    assert _rel(_run(src, feeds), _run(out, feeds)) < 0.05


TWO_FILES = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[B,64] x) => (float[B,64] y) {
  a = MatMul(x, W)
  y = %s(a)
}
"""


def test_folder_files_sharing_one_external_data_file(tmp_path):
    """Two files read W from one data file: each output file gets its own packed copy, the shared
    data file is not copied, and both outputs run alone."""
    src = tmp_path / "src"
    src.mkdir()
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    for name, op in (("encoder_model.onnx", "Relu"), ("decoder_model.onnx", "Tanh")):
        m = onnx.parser.parse_model(TWO_FILES % op)
        m.graph.initializer.append(nh.from_array(w, "W"))
        onnx.save(m, src / name, save_as_external_data=True, location="shared.data", size_threshold=0)
    onnx.save(onnx.load(str(src / "encoder_model.onnx")), src / "encoder_model.onnx",
              save_as_external_data=True, location="shared.data", size_threshold=0)   # both files: one data file
    out = tmp_path / "out"
    assert main([str(src), "--scheme", "int8", "-o", str(out), "-q"]) == 0
    assert not (out / "shared.data").exists()
    assert "shared.data" not in json.loads((out / "qcompile.json").read_text())["copied"]
    x = {"x": RNG.standard_normal((4, 64)).astype(np.float32)}
    codes = []
    for name in ("encoder_model.onnx", "decoder_model.onnx"):
        model = onnx.load(str(out / name))
        ints = [nh.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
        assert len(ints) == 1
        codes.append(ints[0])
        assert _rel(_run(src / name, x), _run(out / name, x)) < 0.05    # int8: ~1% measured
    np.testing.assert_array_equal(codes[0], codes[1])   # the shared weight packed the same in both files
