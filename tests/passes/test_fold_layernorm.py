"""fold_layernorm: fuse decomposed LayerNorm/RMSNorm; fold gamma/beta into the linears reading a norm."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from qcompiler.passes.canonicalize import Canonicalize
from qcompiler.passes.fold_layernorm import FoldLayerNorm

# Folding is exact in real arithmetic; in float32, (n * gamma) @ W and n @ (gamma * W) round
# differently: about K * 2^-24 relative per dot product (K = 8 here, 64 in tiny BERT).
ATOL = 1e-5
RTOL = 1e-5

K, N1, N2 = 8, 5, 3
RNG = np.random.default_rng(0)
GAMMA = (1.0 + 0.3 * RNG.standard_normal(K)).astype(np.float32)
BETA = (0.2 * RNG.standard_normal(K)).astype(np.float32)
W1 = RNG.standard_normal((K, N1)).astype(np.float32)
B1 = RNG.standard_normal(N1).astype(np.float32)
W2 = RNG.standard_normal((K, N2)).astype(np.float32)


def _vals(a: np.ndarray) -> str:
    return ",".join(f"{v:.9g}" for v in a.ravel())


def _consts(*, beta=True) -> str:
    items = [f"float[{K}] gamma = {{{_vals(GAMMA)}}}", f"float[{K},{N1}] w1 = {{{_vals(W1)}}}",
             f"float[{N1}] b1 = {{{_vals(B1)}}}", f"float[{K},{N2}] w2 = {{{_vals(W2)}}}",
             "float eps = {1e-5}", "float two = {2.0}", "int64[1] axes = {-1}"]
    if beta:
        items.append(f"float[{K}] beta = {{{_vals(BETA)}}}")
    return ", ".join(items)


def _model(body: str, opset: int = 21, outputs: str = f"float[B,{N1}] y1, float[B,{N2}] y2", beta=True) -> str:
    return f"""
<ir_version: 10, opset_import: ["" : {opset}]>
g (float[B,{K}] x) => ({outputs}) <{_consts(beta=beta)}> {{
{body}
}}
"""


# Pre-LN: the norm feeds two linears only (one with a bias, one without).
LINEARS = """
  h1 = MatMul(ln, w1)
  y1 = Add(h1, b1)
  y2 = MatMul(ln, w2)
"""
LN_OP = "  ln = LayerNormalization <axis = -1, epsilon = 1e-5> (x, gamma, beta)\n" + LINEARS
LN_DECOMPOSED = """
  mean = ReduceMean <keepdims = 1> (x, axes)
  d = Sub(x, mean)
  dd = Pow(d, two)
  var = ReduceMean <keepdims = 1> (dd, axes)
  ve = Add(var, eps)
  sd = Sqrt(ve)
  nrm = Div(d, sd)
  sc = Mul(nrm, gamma)
  ln = Add(sc, beta)
""" + LINEARS
RMS_DECOMPOSED = """
  sq = Pow(x, two)
  ms = ReduceMean <keepdims = 1> (sq, axes)
  mse = Add(ms, eps)
  rms = Sqrt(mse)
  nrm = Div(x, rms)
  ln = Mul(nrm, gamma)
""" + LINEARS


def _run(model_or_proto, feeds):
    proto = model_or_proto if isinstance(model_or_proto, onnx.ModelProto) else ir.to_proto(model_or_proto)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _feeds():
    return {"x": (3.0 * np.random.default_rng(1).standard_normal((6, K)) + 0.5).astype(np.float32)}


def _fold(model, make_ctx, **options):
    ctx = make_ctx(model, plan=False)
    result = FoldLayerNorm(ctx, FoldLayerNorm.Options(**options))(model)
    return result, ctx.pass_reports.get("fold_layernorm", {})


def _check_folded_linears(model, *, beta: bool):
    """W1' = diag(gamma) W1, b1' = beta W1 + b1, W2' = diag(gamma) W2, and a new bias beta W2."""
    init = model.graph.initializers
    np.testing.assert_allclose(init["w1"].const_value.numpy(), GAMMA[:, None] * W1, rtol=1e-6)
    np.testing.assert_allclose(init["w2"].const_value.numpy(), GAMMA[:, None] * W2, rtol=1e-6)
    b1 = B1 + (BETA.astype(np.float64) @ W1 if beta else 0)
    np.testing.assert_allclose(init["b1"].const_value.numpy(), b1, rtol=1e-6, atol=1e-7)
    y2_producer = model.graph.outputs[1].producer()
    if beta:
        # The new bias Add took over the MatMul's output name.
        assert y2_producer.op_type == "Add" and model.graph.outputs[1].name == "y2"
        assert y2_producer.inputs[0].producer().op_type == "MatMul"
        np.testing.assert_allclose(y2_producer.inputs[1].const_value.numpy(), BETA.astype(np.float64) @ W2,
                                   rtol=1e-6, atol=1e-7)
        assert y2_producer.inputs[1].name.startswith("w2")
    else:
        assert y2_producer.op_type == "MatMul"


@pytest.mark.parametrize("body", [LN_OP, LN_DECOMPOSED], ids=["LayerNormalization", "decomposed"])
def test_layernorm_folded_into_linears(make_ctx, body):
    proto = onnx.parser.parse_model(_model(body))
    onnx.checker.check_model(proto, full_check=True)
    expected = _run(proto, _feeds())
    model = ir.from_proto(proto)
    result, report = _fold(model, make_ctx)
    assert result.modified
    lns = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert len(lns) == 1 and [n.op_type for n in model.graph].count("ReduceMean") == 0
    ln = lns[0]
    assert len(ln.inputs) == 2 and np.all(ln.inputs[1].const_value.numpy() == 1.0)  # gamma ones, beta gone
    _check_folded_linears(model, beta=True)
    y1 = model.graph.outputs[0]
    assert "beta" not in model.graph.initializers
    (entry,) = report["folded"]
    assert entry["node"] == ln.name and entry["beta_into_bias"] is True and "left" not in report
    assert entry["into"] == [y1.producer().inputs[0].producer().name, model.graph.outputs[1].producer().inputs[0].producer().name]
    if body is LN_DECOMPOSED:
        assert report["fused"]["LayerNormalization"] == 1 and ln.name == "gamma/LayerNormalization"
    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    for a, b in zip(expected, _run(out, _feeds())):
        np.testing.assert_allclose(b, a, atol=ATOL, rtol=RTOL)
    # Idempotent: nothing left to fold.
    assert not _fold(model, make_ctx)[0].modified


@pytest.mark.parametrize("opset", [21, 23])
def test_rmsnorm_folded(make_ctx, opset):
    proto = onnx.parser.parse_model(_model(RMS_DECOMPOSED, opset=opset, beta=False))
    onnx.checker.check_model(proto, full_check=True)
    expected = _run(proto, _feeds())
    model = ir.from_proto(proto)
    _, report = _fold(model, make_ctx)
    ops = [n.op_type for n in model.graph]
    if opset >= 23:
        assert ops.count("RMSNormalization") == 1 and report["fused"]["RMSNormalization"] == 1
        rms = next(n for n in model.graph if n.op_type == "RMSNormalization")
        assert np.all(rms.inputs[1].const_value.numpy() == 1.0)
    else:
        # Below opset 23 it stays decomposed; the gamma Mul is gone, the linears read x / rms.
        assert "RMSNormalization" not in ops and ops.count("Mul") == 0 and "note" in report["fused"]
        mm = next(n for n in model.graph if n.op_type == "MatMul")
        assert mm.inputs[0].producer().op_type == "Div"
    _check_folded_linears(model, beta=False)
    assert report["folded"][0]["beta_into_bias"] is False
    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    for a, b in zip(expected, _run(out, _feeds())):
        np.testing.assert_allclose(b, a, atol=ATOL, rtol=RTOL)


# Post-LN (BERT): the norm output feeds a linear AND the residual Add.
POST_LN = """
  ln = LayerNormalization <axis = -1, epsilon = 1e-5> (x, gamma, beta)
  h1 = MatMul(ln, w1)
  y1 = Add(h1, b1)
  y2 = Add(ln, x)
"""
# A norm whose only consumer is a non-linear op.
LN_RELU = """
  ln = LayerNormalization <axis = -1, epsilon = 1e-5> (x, gamma, beta)
  y1 = Relu(ln)
"""


@pytest.mark.parametrize(
    "body, outputs, reason",
    [
        (POST_LN, f"float[B,{N1}] y1, float[B,{K}] y2", "output also feeds Add (residual)"),
        (LN_RELU, f"float[B,{K}] y1", "output also feeds Relu"),
    ],
    ids=["post_ln_residual", "non_linear_only"],
)
def test_left_alone(make_ctx, body, outputs, reason):
    proto = onnx.parser.parse_model(_model(body, outputs=outputs))
    expected = _run(proto, _feeds())
    model = ir.from_proto(proto)
    before = [(n.op_type, [i.name for i in n.inputs], [o.name for o in n.outputs]) for n in model.graph]
    result, report = _fold(model, make_ctx)
    assert not result.modified
    assert [(n.op_type, [i.name for i in n.inputs], [o.name for o in n.outputs]) for n in model.graph] == before
    np.testing.assert_array_equal(model.graph.initializers["gamma"].const_value.numpy(), GAMMA)
    np.testing.assert_array_equal(model.graph.initializers["w1"].const_value.numpy(), W1)
    assert len(report["left"]) == 1 and report["left"][0]["reason"].startswith(reason)
    assert "folded" not in report
    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_array_equal(_run(out, _feeds())[0], expected[0])


def test_shape_consumer_does_not_block_folding(make_ctx):
    """A Shape of the norm output (torch's x.shape) reads no values: the norm is still folded."""
    proto = onnx.parser.parse_model(_model(LN_OP + "  s = Shape(ln)\n  n = Size(ln)\n",
                                           outputs=f"float[B,{N1}] y1, float[B,{N2}] y2, int64[2] s, int64 n"))
    expected = _run(proto, _feeds())
    model = ir.from_proto(proto)
    result, report = _fold(model, make_ctx)
    assert result.modified and len(report["folded"]) == 1 and "left" not in report
    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    for a, b in zip(expected, _run(out, _feeds())):
        np.testing.assert_allclose(b, a, atol=ATOL, rtol=RTOL)


def test_tied_weight_left(make_ctx):
    """The final norm of a tied-embedding LM: folding would untie the table, so it is left."""
    text = f"""
<ir_version: 10, opset_import: ["" : 21]>
g (float[B,{K}] x, int64[B] ids) => (float[B,{N1}] logits, float[B,{K}] emb) <{_consts()}, float[{N1},{K}] table = {{{_vals(W1.T)}}}> {{
  ln = LayerNormalization <axis = -1, epsilon = 1e-5> (x, gamma, beta)
  tt = Transpose <perm = [1, 0]> (table)
  logits = MatMul(ln, tt)
  emb = Gather(table, ids)
}}
"""
    model = ir.from_proto(onnx.parser.parse_model(text))
    result, report = _fold(model, make_ctx)
    assert not result.modified and "shared" in report["left"][0]["reason"]


def test_fuse_only(make_ctx):
    model = ir.from_proto(onnx.parser.parse_model(_model(LN_DECOMPOSED)))
    _, report = _fold(model, make_ctx, fold_into_linears=False)
    ln = next(n for n in model.graph if n.op_type == "LayerNormalization")
    np.testing.assert_array_equal(ln.inputs[1].const_value.numpy(), GAMMA)
    assert ln.inputs[2].name == "beta" and "folded" not in report


@pytest.mark.parametrize(
    "name, folded, left",
    [("pre_ln_17", 4, 1), ("pre_ln_14", 4, 1), ("rms_14", 4, 1), ("post_ln_14", 0, 5)],
)
def test_tiny_bert(tiny_bert_dir, make_ctx, name, folded, left):
    from models.tiny_bert import example_inputs

    path = tiny_bert_dir / f"{name}.onnx"
    feeds = example_inputs()
    expected = _run(onnx.load(path), feeds)
    model = ir.load(path)
    Canonicalize(make_ctx(model, plan=False), Canonicalize.Options(target_opset=18))(model)   # the patterns' opset
    _, report = _fold(model, make_ctx)
    assert len(report.get("folded", [])) == folded and len(report.get("left", [])) == left
    if folded:
        # q, k, v read the first norm of each layer; FFN up the second.
        assert sorted(len(f["into"]) for f in report["folded"]) == [1, 1, 3, 3]
        assert report["left"] == [{"node": report["left"][0]["node"], "reason": "output is a graph output"}]
    else:
        assert sum(e["reason"] == "output also feeds Add (residual)" for e in report["left"]) == 4
    if name.endswith("_14") and not name.startswith("rms"):
        assert report["fused"]["LayerNormalization"] == 5
    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    # Tolerance: float32 roundings of the folded weights through 2 layers (measured max abs
    # difference ~1.3e-6 on outputs of magnitude ~3.5).
    np.testing.assert_allclose(_run(out, feeds)[0], expected[0], atol=2e-5, rtol=1e-5)


def test_weights_on_the_scheme_grid_are_left(make_ctx):
    """Weights trained with the scheme's quantizer (qcompiler.qat) sit on its grid: folding gamma
    would move them off it (and they would no longer pack losslessly), so the norm stays. The same
    first weight nudged off the grid by one float step (the second FP32) are folded as usual."""
    from qcompiler.schemes import load_scheme

    codes = np.sign(np.round(RNG.standard_normal((K, N1 + N2))))
    alpha = np.float16(0.37).astype(np.float32)
    ternary = (codes * alpha).astype(np.float32)
    w1, w2 = ternary[:, :N1], ternary[:, N1:]

    def build(w1, w2):
        text = _model(LN_OP).replace(f"w1 = {{{_vals(W1)}}}", f"w1 = {{{_vals(w1)}}}") \
                            .replace(f"w2 = {{{_vals(W2)}}}", f"w2 = {{{_vals(w2)}}}")
        return ir.from_proto(onnx.parser.parse_model(text))

    scheme = load_scheme("ternary")
    model = build(w1, w2)
    ctx = make_ctx(model, scheme, plan=False)
    result = FoldLayerNorm(ctx, FoldLayerNorm.Options())(model)
    report = ctx.pass_reports["fold_layernorm"]
    assert not result.modified and "ternary grid" in report["left"][0]["reason"]
    np.testing.assert_array_equal(model.graph.initializers["w1"].const_value.numpy(), w1)

    off = w1.copy()
    off[0, 0] = np.nextafter(off[0, 0], np.float32(2))
    model = build(off, W2)
    ctx = make_ctx(model, scheme, plan=False)
    assert FoldLayerNorm(ctx, FoldLayerNorm.Options())(model).modified
    assert len(ctx.pass_reports["fold_layernorm"]["folded"]) == 1


def test_folded_weights_are_computed_when_read(make_ctx, monkeypatch):
    """The scaled weights are LazyTensors (a streaming compile holds no scaled copies), and made a
    slice of rows at a time they equal the float64 product rounded once: bit for bit."""
    from qcompiler.passes import fold_layernorm

    monkeypatch.setattr(fold_layernorm._ScaledWeight, "ROWS_ELEMENTS", 2 * N1)   # slices of 2 rows
    model = ir.from_proto(onnx.parser.parse_model(_model(LN_OP)))
    _fold(model, make_ctx)
    for name, w in (("w1", W1), ("w2", W2)):
        tensor = model.graph.initializers[name].const_value
        assert isinstance(tensor, ir.LazyTensor)
        assert tensor.shape == w.shape and tensor.dtype == ir.DataType.FLOAT
        want = (GAMMA.astype(np.float64)[:, None] * w.astype(np.float64)).astype(np.float32)
        np.testing.assert_array_equal(tensor.numpy(), want)
        np.testing.assert_array_equal(tensor.numpy(), want)   # the same again: nothing cached or consumed
