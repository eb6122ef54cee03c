"""canonicalize: opset upgrade, folding, Gemm -> MatMul (+ Add), Identity/dead-node removal, shapes."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from qcompiler.passes.canonicalize import Canonicalize

# Float32 parity: the rewrites only reorder or pre-multiply (alpha/beta folded into constants,
# a torch graph's kernels picked afresh), so results differ by a few float32 roundings.
ATOL = 1e-5
RTOL = 1e-5


def _run(model_or_proto, feeds):
    proto = model_or_proto if isinstance(model_or_proto, onnx.ModelProto) else ir.to_proto(model_or_proto)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _canonicalize(model, make_ctx, **options):
    ctx = make_ctx(model, plan=False)
    result = Canonicalize(ctx, Canonicalize.Options(**options))(model)
    return result, ctx.pass_reports.get("canonicalize", {})


# opset 14: ReduceMean axes as an attribute, an Identity, a dead branch, a foldable constant
# expression, and a Gemm with transB, alpha and beta (torch's 2-D nn.Linear export form).
OPSET14 = """
<ir_version: 8, opset_import: ["" : 14]>
g (float[B,4] x) => (float[B,3] y, float[B,1] m) <
    float[3,4] w = {0.1,0.2,0.3,0.4, -0.5,0.6,-0.7,0.8, 0.9,-1.0,1.1,-1.2},
    float[3] c = {0.5,-0.25,1.0},
    float[1] k1 = {2.0}, float[1] k2 = {3.0}> {
  xi = Identity(x)
  k = Add(k1, k2)
  xs = Mul(xi, k)
  y = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (xs, w, c)
  m = ReduceMean <axes = [-1]> (xs)
  dead = Relu(x)
}
"""


def test_opset14_graph_upgraded_folded_and_gemm_unified(make_ctx):
    proto = onnx.parser.parse_model(OPSET14)
    onnx.checker.check_model(proto, full_check=True)
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)}
    expected = _run(proto, feeds)

    model = ir.from_proto(proto)
    result, report = _canonicalize(model, make_ctx, target_opset=21)
    assert result.modified

    # Golden structure.
    assert model.opset_imports[""] == 21
    ops = collections.Counter(n.op_type for n in model.graph if n.op_type != "Constant")
    assert ops == {"Mul": 1, "MatMul": 1, "Add": 1, "ReduceMean": 1}, ops
    mul = next(n for n in model.graph if n.op_type == "Mul")
    assert ir.convenience.get_const_tensor(mul.inputs[1]).numpy().tolist() == [5.0]  # k1 + k2 folded
    mm = next(n for n in model.graph if n.op_type == "MatMul")
    w_kn = mm.inputs[1]
    assert w_kn.is_initializer() and w_kn.name == "w_kn"
    w = onnx.numpy_helper.to_array(proto.graph.initializer[0])
    np.testing.assert_allclose(w_kn.const_value.numpy(), 0.5 * w.T, rtol=1e-7)  # alpha folded, no Transpose
    add = next(n for n in model.graph if n.op_type == "Add")
    np.testing.assert_allclose(add.inputs[1].const_value.numpy(), [1.0, -0.5, 2.0])  # beta folded
    assert add.outputs[0].name == "y" and add.outputs[0].is_graph_output()
    rm = next(n for n in model.graph if n.op_type == "ReduceMean")
    assert len(rm.inputs) == 2 and rm.inputs[1].const_value.numpy().tolist() == [-1]  # axes now an input
    assert rm.attributes.get_int("keepdims") == 1  # default attributes written out
    assert all(v.shape is not None for n in model.graph for v in n.outputs)
    assert "dead" not in {v.name for n in model.graph for v in n.outputs}
    assert report["opset"]["action"] == "upgraded" and report["gemm_to_matmul"] == 1
    assert report["identity_removed"] == 1

    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    for a, b in zip(expected, _run(out, feeds)):
        np.testing.assert_allclose(b, a, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    "attrs, c_input, b_runtime",
    [
        ("transA = 1", True, False),
        ("transB = 1", False, True),   # runtime B: a Transpose node, not a constant
        ("beta = 0.0", True, False),   # C ignored
        ("alpha = 2.0, transB = 1", True, True),
    ],
)
def test_gemm_forms(make_ctx, attrs, c_input, b_runtime):
    trans_a = "transA = 1" in attrs
    x_shape = "float[4,B]" if trans_a else "float[B,4]"
    b_decl = "float[3,4] w" if "transB" in attrs else "float[4,3] w"
    inputs = f"{x_shape} x" + (f", {b_decl}" if b_runtime else "")
    consts = [] if b_runtime else [f"{b_decl} = {{{','.join(str(0.1 * i - 0.5) for i in range(12))}}}"]
    if c_input:
        consts.append("float[3] c = {0.5,-0.25,1.0}")
    args = "x, w, c" if c_input else "x, w"
    text = f"""
<ir_version: 10, opset_import: ["" : 21]>
g ({inputs}) => (float[B,3] y) <{', '.join(consts)}> {{
  y = Gemm <{attrs}> ({args})
}}
"""
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((4, 5) if trans_a else (5, 4)).astype(np.float32)}
    if b_runtime:
        feeds["w"] = rng.standard_normal((3, 4) if "transB" in attrs else (4, 3)).astype(np.float32)
    expected = _run(proto, feeds)
    model = ir.from_proto(proto)
    _, report = _canonicalize(model, make_ctx)
    ops = [n.op_type for n in model.graph]
    assert "Gemm" not in ops and "MatMul" in ops and report["gemm_to_matmul"] == 1
    assert ("Transpose" in ops) == (trans_a or (b_runtime and "transB" in attrs))
    assert ("Add" in ops) == (c_input and "beta = 0.0" not in attrs)
    assert model.graph.outputs[0].name == "y"
    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_allclose(_run(out, feeds)[0], expected[0], atol=ATOL, rtol=RTOL)


CANONICAL = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[2,4] x) => (float[2,3] y) <float[4,3] w = {1.,2.,3.,4.,5.,6.,7.,8.,9.,10.,11.,12.}, float[3] b = {1.,0.,-1.}> {
  h = MatMul(x, w)
  hb = Add(h, b)
  y = Relu(hb)
}
"""


def test_leaves_canonical_graph_alone(make_ctx):
    proto = onnx.parser.parse_model(CANONICAL)
    model = ir.from_proto(proto)
    before = [(n.name, n.op_type, [i.name for i in n.inputs], [o.name for o in n.outputs]) for n in model.graph]
    _, report = _canonicalize(model, make_ctx)
    after = [(n.name, n.op_type, [i.name for i in n.inputs], [o.name for o in n.outputs]) for n in model.graph]
    assert after == before
    assert report["opset"]["action"] == "none" and report["gemm_to_matmul"] == 0
    assert sorted(model.graph.initializers) == ["b", "w"]
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(),
                                  onnx.numpy_helper.to_array(proto.graph.initializer[0]))
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


@pytest.mark.parametrize("name", ["post_ln_14", "post_ln_17", "rms_14"])
def test_tiny_bert_exports(tiny_bert_dir, make_ctx, name):
    from models.tiny_bert import example_inputs

    path = tiny_bert_dir / f"{name}.onnx"
    feeds = example_inputs()
    expected = _run(onnx.load(path), feeds)
    model = ir.load(path)
    n_matmul = sum(n.op_type == "MatMul" for n in model.graph)
    _, report = _canonicalize(model, make_ctx, target_opset=21)
    assert model.opset_imports[""] == 21 and report["opset"]["action"] == "upgraded"
    assert sum(n.op_type == "MatMul" for n in model.graph) == n_matmul
    # opset 14 -> 21: ReduceMean's axes moved from attribute to input.
    for node in model.graph:
        if node.op_type == "ReduceMean":
            assert "axes" not in node.attributes and len(node.inputs) == 2
    assert report["shape_inference"] == {"ran": True, "values_without_shape": 0}
    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    # Tolerance: ops are unchanged; onnxruntime may pick other kernels for the upgraded
    # ReduceMean (measured max abs difference ~1e-6 on outputs of magnitude ~3.5).
    np.testing.assert_allclose(_run(out, feeds)[0], expected[0], atol=1e-5, rtol=1e-5)
    # A second run finds nothing to do.
    assert not Canonicalize(make_ctx(model, plan=False), Canonicalize.Options(target_opset=21))(model).modified


def _head_model(head: np.ndarray, table: np.ndarray) -> ir.Model:
    v, d = table.shape
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["table", "ids"], ["h"], axis=0),
         onnx.helper.make_node("MatMul", ["h", "head"], ["logits"])],
        "lm", [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["B", "S"])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["B", "S", v])],
        [onnx.numpy_helper.from_array(table, "table"), onnx.numpy_helper.from_array(head, "head")])
    return ir.from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)]))


def test_transposed_copy_of_a_table_is_retied(make_ctx):
    """torch folds a tied head's Transpose(table) into a copy: the head reads Transpose(table)
    again, the copy goes, analyze sees the tie; outputs unchanged; a head that differs in one
    element is left alone."""
    from qcompiler.analyze import analyze

    rng = np.random.default_rng(0)
    table = rng.standard_normal((11, 6)).astype(np.float32)
    feeds = {"ids": np.array([[1, 4, 10]], np.int64)}
    model = _head_model(np.ascontiguousarray(table.T), table)
    expected = _run(model, feeds)
    _, report = _canonicalize(model, make_ctx)
    assert report["retied_heads"] == 1
    assert "head" not in model.graph.initializers
    (emb,) = analyze(model).embeddings
    assert [lin.role for lin in emb.tied_linears] == ["lm_head"]
    np.testing.assert_array_equal(_run(model, feeds)[0], expected[0])   # the same numbers, moved

    other = np.ascontiguousarray(table.T)
    other[2, 3] += 1e-3
    model = _head_model(other, table)
    _, report = _canonicalize(model, make_ctx)
    assert "retied_heads" not in report and "head" in model.graph.initializers
