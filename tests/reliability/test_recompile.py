"""Issue 18 case 7: qcompile fed its own output, or a file with an ai.qcompiler op it does not know.

What is already compiled (ai.qcompiler ops, MatMulNBits, MatMulInteger, MatMuls on DequantizeLinear
weights, integer embedding tables, and the FP32 outlier rows and scale tables beside them) is left
as it is and named in the report; any FP32 linear still there is compiled; a file with nothing left
to compile is refused (exit 2, one line, nothing written): the output would carry the new scheme's
name and the old scheme's weights. Never exit 1.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler.ops as qops
from qcompiler.cli import main

SCHEMES = ["int8", "int4", "ternary", "bcq2", "kmeans4"]
COMPILED_OP = {"int8": "MatMulInteger", "int4": "MatMulNBits", "ternary": "TernaryMatMul",
               "bcq2": "BinaryCodeMatMul", "kmeans4": "CodebookMatMul"}


def _compile(src, out, scheme, capsys, *extra) -> tuple[int, str]:
    code = main([str(src), "-s", scheme, "-o", str(out), "-q", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err and code in (0, 2), (code, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("qcompile: error:"), err
        assert not out.exists()
    return code, err


@pytest.fixture(scope="module")
def compiled(tiny_bert_dir, tmp_path_factory):
    """tiny BERT compiled per scheme, all of it or all but ffn_down, on first use: compiled[part, scheme]."""
    d = tmp_path_factory.mktemp("recompile")
    src = tiny_bert_dir / "post_ln_17.onnx"

    class Files(dict):
        def __missing__(self, key):
            part, scheme = key
            out = d / f"{part}.{scheme}.onnx"
            extra = ["--exclude", "ffn_down"] if part == "partial" else []
            assert main([str(src), "-s", scheme, "-o", str(out), "-q", "--no-verify", *extra]) == 0
            self[key] = out
            return out

    return Files()


@pytest.mark.parametrize("first", SCHEMES)
def test_fully_compiled_file_is_refused_naming_what_it_holds(compiled, tmp_path, capsys, first):
    """Used to be exit 1 ('Type Error ... Gather_scales_Gather_dequant_Mul') or a re-quantized
    int8 outlier path; now every second scheme ends in exit 2 naming the compiled ops."""
    for second in SCHEMES:
        code, err = _compile(compiled["all", first], tmp_path / f"again.{second}.onnx", second, capsys)
        assert code == 2 and "already compiled" in err and COMPILED_OP[first] in err, (first, second, err)


def _session(path, native=True):
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    if native:
        qops.register(opts)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("first,second", [("ternary", "ternary"), ("kmeans4", "kmeans4"), ("bcq2", "ternary"),
                                          ("int4", "int4"), ("int8", "int8"), ("int8", "int4"), ("ternary", "int8")])
def test_remaining_fp32_linears_are_compiled(compiled, tmp_path, capsys, first, second):
    """A file compiled with --exclude ffn_down: the second run compiles just the two ffn_down
    linears; the first run's 10 compiled linears stay byte for byte, the report names them.
    Tolerance: cosine >= 0.95 vs FP32 on synthesized inputs (measured 0.989-0.999 for these pairs)."""
    src = compiled["partial", first]
    out, rep_path = tmp_path / "again.onnx", tmp_path / "again.json"
    code, err = _compile(src, out, second, capsys, "--report", str(rep_path))
    assert code == 0, err
    rep = json.loads(rep_path.read_text())
    held = [n.op_type for n in onnx.load(src).graph.node].count(COMPILED_OP[first])   # 10 linears, q/k/v merged or not
    assert any(f"already compiled, left as they are" in n and f"{COMPILED_OP[first]} x{held}" in n for n in rep["notes"])
    assert sorted(w["name"] for w in rep["weights"] if w["format"] != "keep") == ["onnx::MatMul_257", "onnx::MatMul_270"]
    assert rep["verification"]["outputs"]["last_hidden_state"]["cosine_mean"] >= 0.95
    before, after = onnx.load(src), onnx.load(out)
    ops = [n.op_type for n in after.graph.node]
    assert ops.count(COMPILED_OP[first]) >= held and COMPILED_OP[second] in ops
    old = {i.name: i.raw_data for i in before.graph.initializer if i.data_type in (TensorProto.UINT8, TensorProto.INT8)}
    new = {i.name: i.raw_data for i in after.graph.initializer}
    assert old and all(new.get(k) == v for k, v in old.items())     # the packed weights untouched
    onnx.checker.check_model(after, full_check=True)
    feed = {"input_ids": np.array([[5, 17, 3, 99]], np.int64), "attention_mask": np.ones((1, 4), np.int64)}
    native = _session(out).run(None, feed)[0]
    fallback = _session(out, native=False).run(None, feed)[0]     # the function bodies of both ops' kinds
    assert np.isfinite(native).all() and np.isfinite(fallback).all()


def _two_linears(path, extra_node=None):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 64)) / 8).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "V"], ["y"])]
    if extra_node is not None:
        nodes = [extra_node, helper.make_node("MatMul", ["h", "V"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 64])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w.T.copy(), "V")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("ai.qcompiler", 1)], ir_version=9)
    onnx.save(model, str(path))


@pytest.mark.parametrize("extra", [[], ["--memory-budget", "0"], ["--no-verify"]], ids=["default", "streaming", "no-verify"])
def test_unknown_ai_qcompiler_op_is_refused(tmp_path, capsys, extra):
    """Used to be exit 1 (ContractError); refused before anything runs, also when nothing would run it."""
    src = tmp_path / "unknown.onnx"
    _two_linears(src, helper.make_node("FrobMatMul", ["x", "W"], ["h"], domain="ai.qcompiler", name="frob"))
    for scheme in ("int8", "ternary"):
        code, err = _compile(src, tmp_path / "o.onnx", scheme, capsys, *extra)
        assert code == 2 and "FrobMatMul" in err and "does not define that op" in err, err


def test_other_domain_version_is_refused(compiled, tmp_path, capsys):
    """A compiled file whose ai.qcompiler import says version 2: this version's ops are version 1."""
    proto = onnx.load(compiled["partial", "ternary"])
    next(o for o in proto.opset_import if o.domain == "ai.qcompiler").version = 2
    src = tmp_path / "v2.onnx"
    onnx.save(proto, src)
    code, err = _compile(src, tmp_path / "o.onnx", "int8", capsys)
    assert code == 2 and "ai.qcompiler version 2" in err, err


def test_compiled_node_breaking_the_contract_is_refused(compiled, tmp_path, capsys):
    """A compiled file with format_version 2 on one node: refused even by a streaming compile, which
    runs nothing (the library and the fallback refuse it at run time)."""
    proto = onnx.load(compiled["partial", "ternary"])
    node = next(n for n in proto.graph.node if n.op_type == "TernaryMatMul")
    next(a for a in node.attribute if a.name == "format_version").i = 2
    src = tmp_path / "fv2.onnx"
    onnx.save(proto, src)
    code, err = _compile(src, tmp_path / "o.onnx", "ternary", capsys, "--memory-budget", "0")
    assert code == 2 and "breaks the op contract" in err and "format_version 2" in err, err


def test_int8_on_fp16_activations_is_refused(tmp_path, capsys):
    """Used to be exit 1 (DynamicQuantizeLinear type error in verification): the int8 form takes
    float32 activations, so the plan keeps every linear and the compile says why."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((64, 64)) / 8).astype(np.float16)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["B", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["B", 64])],
                              [numpy_helper.from_array(w, "W")])
    src = tmp_path / "fp16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), src)
    code, err = _compile(src, tmp_path / "o.onnx", "int8", capsys)
    assert code == 2 and "nothing was quantized" in err and "float16" in err, err
