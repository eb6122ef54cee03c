"""replace_matmul: ternary / binary-code / k-means linears -> ai.qcompiler ops with function bodies."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from qcompiler import ops
from qcompiler.calibration import ActivationStats
from qcompiler.errors import SchemeError, UsageError
from qcompiler.passes.canonicalize import Canonicalize
from qcompiler.passes.replace_matmul import ReplaceMatMul
from qcompiler.schemes import Scheme
from qcompiler.ops import contract

K, N1, N2 = 64, 48, 24
RNG = np.random.default_rng(0)
WEIGHTS = {"W1": RNG.standard_normal((K, N1)).astype(np.float32),
           "b1": RNG.standard_normal(N1).astype(np.float32),
           "W2": RNG.standard_normal((N2, N1)).astype(np.float32),   # read through Transpose
           "Ws": RNG.standard_normal((N2, N2)).astype(np.float32)}   # shared by two MatMuls

# x -> MatMul+Add (bias folded) -> Relu -> MatMul(Transpose(W2)) -> MatMul(Ws) -> MatMul(Ws)
TEXT = f"""
<ir_version: 10, opset_import: ["" : %d]>
g (float[B, S, {K}] x) => (float[B, S, {N2}] y, float[B, S, {N2}] z) {{
  h0 = MatMul(x, W1)
  h = Add(h0, b1)
  r = Relu(h)
  W2t = Transpose<perm=[1, 0]>(W2)
  z = MatMul(r, W2t)
  s1 = MatMul(z, Ws)
  y = MatMul(s1, Ws)
}}
"""
FORMATS = [("ternary", {}), ("bcq", {"bits": 2, "group_size": 16}), ("bcq", {"bits": 3, "group_size": 32}),
           ("kmeans", {"bits": 3}), ("kmeans", {"bits": 4})]


def _proto(opset: int = 21) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(TEXT % opset)
    for name, arr in WEIGHTS.items():
        proto.graph.initializer.append(numpy_helper.from_array(arr, name))
    return proto


def _scheme(fmt: str, **settings) -> Scheme:
    return Scheme(name=fmt, summary="test", passes=[], weights={"format": fmt, **settings}, roles={},
                  embeddings={}, options={}, source="<test>")


def _run_pass(model: ir.Model, make_ctx, scheme: Scheme, stats=None):
    ctx = make_ctx(model, scheme)
    if stats is not None:
        ctx.stats = stats
    result = ReplaceMatMul(ctx)(model)
    return result, ctx.pass_reports.get("replace_matmul", {})


def _effective(inits: dict, node: onnx.NodeProto) -> np.ndarray:
    """W [K, N] the node multiplies by (the contract's dequantization plus the FP16 outlier rows)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = contract.dequantize(node.op_type, inits[node.input[1]], inits[node.input[2]], **attrs)
    idx, wout = inits[node.input[4]], inits[node.input[5]]
    w[idx] += wout.astype(np.float32)
    return w


def _dequantized_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with each ai.qcompiler node replaced by a float MatMul + Add on its numpy-dequantized weight."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    nodes = []
    for node in out.graph.node:
        if node.domain != contract.DOMAIN:
            nodes.append(node)
            continue
        wname = f"{node.output[0]}_deq"
        out.graph.initializer.append(numpy_helper.from_array(_effective(inits, node), wname))
        nodes.append(helper.make_node("MatMul", [node.input[0], wname], [f"{wname}_y"]))
        nodes.append(helper.make_node("Add", [f"{wname}_y", node.input[3]], [node.output[0]]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.functions[:]
    for i in reversed(range(len(out.opset_import))):
        if out.opset_import[i].domain == contract.DOMAIN:
            del out.opset_import[i]
    return out


def _run(proto: onnx.ModelProto, feeds: dict, library: bool = False) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if library:
        ops.register(so)
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("fmt, settings", FORMATS)
def test_text_graph(make_ctx, fmt, settings):
    model = ir.serde.deserialize_model(_proto())
    result, report = _run_pass(model, make_ctx, _scheme(fmt, **settings))
    assert result.modified
    out = ir.to_proto(model)
    op_type = {"ternary": "TernaryMatMul", "bcq": "BinaryCodeMatMul", "kmeans": "CodebookMatMul"}[fmt]
    # golden structure: the 4 MatMuls (and the bias Add, the Transpose) are 4 custom nodes, names kept
    assert [(n.op_type, n.domain, list(n.output)) for n in out.graph.node] == [
        (op_type, contract.DOMAIN, ["h"]), ("Relu", "", ["r"]), (op_type, contract.DOMAIN, ["z"]),
        (op_type, contract.DOMAIN, ["s1"]), (op_type, contract.DOMAIN, ["y"])]
    assert [(f.domain, f.name) for f in out.functions] == [(contract.DOMAIN, op_type)]
    assert {o.domain: o.version for o in out.opset_import} == {"": 21, contract.DOMAIN: 1}
    names = {t.name for t in out.graph.initializer}
    assert names & {"W1", "b1", "W2", "Ws"} == {"b1"}    # no FP32 weight left behind
    assert out.graph.node[0].input[3] == "b1"               # the bias Add folded into the op
    onnx.checker.check_model(out, full_check=True)
    # report: format, bits per weight, relative weight error of each linear; Ws packed once
    assert report["replaced"] == 4 and report["packed_weights"] == 3
    assert [e["shared"] for e in report["linears"]] == [False, False, False, True]
    for e in report["linears"]:
        assert e["format"] == fmt and e["op"] == op_type and 0 < e["rel_error"] < 0.6
        assert e["bits_per_weight"] > (2 if fmt == "ternary" else settings["bits"])

    x = RNG.standard_normal((2, 5, K)).astype(np.float32)
    ref = _run(_dequantized_model(out), {"x": x})
    stock = _run(out, {"x": x})
    # Stock onnxruntime runs the function body: the same dequantized weights, only the fp32
    # summation order differs (one MatMul + a separate outlier MatMul); outputs are O(10-100)
    # after 3 chained layers of K <= 64, so a few ulps of 1e-4 relative is ample.
    for a, b in zip(stock, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    lib = _run(out, {"x": x}, library=True)
    # Native kernels at accuracy_level 0: the contract's bound per op is 1e-4 * |A| @ |W|; through
    # three chained ops on outputs of this magnitude that stays below 2e-4 relative + 2e-3 absolute.
    for a, b in zip(lib, stock):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-3)


def test_gptq_recovery_uses_gram_and_outliers(make_ctx):
    proto = _proto()
    x = RNG.standard_normal((256, K)).astype(np.float32)
    x[:, 3] *= 30.0                                            # one dominant input channel
    model = ir.serde.deserialize_model(proto)
    scheme = _scheme("ternary", recovery="gptq")
    ctx = make_ctx(model, scheme)
    p = ReplaceMatMul(ctx)
    assert p.needs_stats and p.needs_gram
    assert not ReplaceMatMul(make_ctx(ir.serde.deserialize_model(proto), _scheme("ternary"))).needs_stats
    stats = {"x": ActivationStats(np.abs(x).max(0), (x ** 2).sum(0), x.min(0), x.max(0), len(x), None,
                                  x.astype(np.float64).T @ x)}
    ctx.stats = stats
    p(model)
    report = ctx.pass_reports["replace_matmul"]
    first = report["linears"][0]
    assert first["method"] == "gptq" and first["n_outliers"] == 2 and "output_rel_error" in first
    assert [e["method"] for e in report["linears"][1:]] == ["plain (no calibration statistics)"] * 2 + ["plain (no calibration statistics)"]
    out = ir.to_proto(model)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert 3 in inits[out.graph.node[0].input[4]].tolist()   # the dominant channel stays FP16
    # calibrated codes give a smaller output error on the calibration rows than plain rounding
    plain = ir.serde.deserialize_model(proto)
    _run_pass(plain, make_ctx, _scheme("ternary"))
    p_out = ir.to_proto(plain)
    p_inits = {t.name: numpy_helper.to_array(t) for t in p_out.graph.initializer}
    err_gptq = np.linalg.norm(x @ _effective(inits, out.graph.node[0]) - x @ WEIGHTS["W1"])
    err_plain = np.linalg.norm(x @ _effective(p_inits, p_out.graph.node[0]) - x @ WEIGHTS["W1"])
    assert err_gptq < err_plain
    onnx.checker.check_model(out, full_check=True)
    feeds = {"x": x[None, :8]}
    np.testing.assert_allclose(_run(out, feeds)[0], _run(_dequantized_model(out), feeds)[0], rtol=1e-4, atol=1e-3)


def test_leaves_alone(make_ctx):
    # an activation x activation MatMul, and a weight planned "keep"
    text = """
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[4, 8] a, float[8, 4] b) => (float[4, 4] y, float[4, 3] z) <float[8, 3] W = {%s}> {
      y = MatMul(a, b)
      z = MatMul(a, W)
    }
    """ % ",".join(["0.5"] * 24)
    model = ir.serde.deserialize_model(onnx.parser.parse_model(text))
    before = ir.to_proto(model).SerializeToString()
    result, report = _run_pass(model, make_ctx, _scheme("keep"))
    assert not result.modified and report == {}
    assert ir.to_proto(model).SerializeToString() == before
    result, _ = _run_pass(model, make_ctx, _scheme("int4"))     # another pass's format
    assert not result.modified


def test_errors(make_ctx):
    model = ir.serde.deserialize_model(_proto(opset=17))
    with pytest.raises(UsageError, match="canonicalize"):
        _run_pass(model, make_ctx, _scheme("ternary"))
    with pytest.raises(SchemeError, match="bits"):
        _run_pass(ir.serde.deserialize_model(_proto()), make_ctx, _scheme("kmeans", bits=5))
    with pytest.raises(SchemeError, match="unknown settings"):
        _run_pass(ir.serde.deserialize_model(_proto()), make_ctx, _scheme("bcq", bitz=2))


@pytest.mark.parametrize("fmt, settings", [("ternary", {}), ("bcq", {"bits": 3, "group_size": 32}), ("kmeans", {"bits": 4})])
def test_tiny_bert(tiny_bert, make_ctx, fmt, settings):
    from models.tiny_bert import example_inputs

    feeds = example_inputs()
    model = ir.load(tiny_bert)
    Canonicalize(make_ctx(model, plan=False), Canonicalize.Options(target_opset=21))(model)   # the function bodies' opset
    result, report = _run_pass(model, make_ctx, _scheme(fmt, **settings))
    assert result.modified and report["replaced"] == 12     # 2 layers x (q, k, v, out, up, down)
    out = ir.to_proto(model)
    assert not any(n.op_type == "MatMul" and n.input[1] in {t.name for t in out.graph.initializer}
                   for n in out.graph.node)
    assert sum(n.domain == contract.DOMAIN for n in out.graph.node) == 12
    onnx.checker.check_model(out, full_check=True)
    ref = _run(_dequantized_model(out), feeds)
    stock = _run(out, feeds)
    lib = _run(out, feeds, library=True)
    # Function body vs numpy-dequantized MatMuls: same weights, summation order only; through
    # 2 layers with LayerNorms the outputs (magnitude ~3) agree to ~1e-5.
    np.testing.assert_allclose(stock[0], ref[0], rtol=1e-4, atol=1e-4)
    # Native kernels (accuracy_level 0, contract bound 1e-4 * |A| @ |W| per op) vs the function body.
    np.testing.assert_allclose(lib[0], stock[0], rtol=1e-3, atol=1e-3)
