"""insert_qdq on small ONNX text graphs: structure, onnxruntime parity and fusion, outliers, left-alone cases."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from qcompiler.calibration import collect_stats, session_with_taps
from qcompiler.passes import PASS_TABLE
from qcompiler.passes.insert_qdq import InsertQDQ, _fake_quant, activation_range
from qcompiler.schemes import Scheme

# Two linears with biases and a ReLU between them; input channel 3 is scaled up 60x (an outlier).
TWO_LINEARS = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[B, T, 16] x) => (float[B, T, 4] y) {
    xs = Mul(x, gain)
    h0 = MatMul(xs, w1)
    h = Add(h0, b1)
    r = Relu(h)
    y0 = MatMul(r, w2)
    y = Add(b2, y0)
}
"""


def _model(text: str, **arrays: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, array in arrays.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return ir.from_proto(proto)


def _two_linears(outlier: float = 60.0) -> ir.Model:
    rng = np.random.default_rng(0)
    gain = np.ones(16, np.float32)
    gain[3] = outlier
    return _model(
        TWO_LINEARS,
        gain=gain,
        w1=rng.standard_normal((16, 24)).astype(np.float32) / 4,
        b1=rng.standard_normal(24).astype(np.float32) * 0.1,
        w2=rng.standard_normal((24, 4)).astype(np.float32) / 5,
        b2=rng.standard_normal(4).astype(np.float32) * 0.1,
    )


def _feeds(n: int = 6, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 10, 16)).astype(np.float32)} for _ in range(n)]


def _scheme(fmt: str = "int8") -> Scheme:
    return Scheme("t", "", [], {"format": fmt}, {}, {}, {}, "<test>")


def _run(model: ir.Model, feeds, outputs=None) -> list[list[np.ndarray]]:
    sess = session_with_taps(model, outputs or [])
    return [sess.run(outputs, f) for f in feeds]


def _compile(model: ir.Model, make_ctx, feeds=None, **options):
    ctx = make_ctx(model, _scheme())
    ctx.stats = collect_stats(model, feeds or _feeds(), [lin.node.inputs[0].name for lin in ctx.roles.linears])
    result = InsertQDQ.from_dict(ctx, options)(model)
    return ctx, result


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _ops(model: ir.Model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph)


def test_registered():
    assert PASS_TABLE["insert_qdq"] is InsertQDQ
    assert InsertQDQ.needs_stats and InsertQDQ.stage == "transform"


def test_dynamic_structure_and_parity(make_ctx):
    model = _two_linears()
    ref_model = _two_linears()
    ctx, result = _compile(model, make_ctx, outlier_channels=0)
    assert result.modified
    ops = _ops(model)
    # Golden: each linear becomes DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(Mul(xs, ws)) -> Add(bias).
    assert ops == collections.Counter({"Mul": 5, "DynamicQuantizeLinear": 2, "MatMulInteger": 2, "Cast": 2,
                                       "Add": 2, "Relu": 1})
    graph = model.graph
    assert "w1" not in graph.initializers and "w2" not in graph.initializers  # no FP32 weight left
    assert graph.initializers["w1_quantized"].const_value.dtype == ir.DataType.INT8
    assert graph.initializers["w1_scale"].const_value.shape == ir.Shape([24])
    # The linears' outputs keep their names (verification compares per layer by name).
    names = {o.name for n in graph for o in n.outputs}
    assert {"h", "y"} <= names and graph.outputs[0].name == "y"
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    # Tolerance: uint8 per-tensor activations (step = range / 255) and int8 per-channel weights
    # give about 1% relative L2 output error on this graph; 3% leaves room for the 60x outlier
    # channel, which widens the activation range of the first linear.
    feeds = _feeds(4, seed=7)
    for (out,), (ref,) in zip(_run(model, feeds), _run(ref_model, feeds)):
        assert _rel(out, ref) < 0.03
    report = ctx.pass_reports["insert_qdq"]["linears"]
    assert [e["weight"] for e in report] == ["w1", "w2"]
    assert all(e["activations"] == "dynamic" and e["outlier_channels"] == [] for e in report)
    # 7-bit codes (the default on CPUs that saturate; 8 bits elsewhere): step absmax/63, ~1.3%
    # relative error for Gaussian weights of 24 rows; 8-bit codes halve it.
    assert all(0 < e["weight_rel_l2"] < 0.02 for e in report)


def test_weight_bits_8_uses_the_full_int8_range(make_ctx):
    model = _two_linears()
    ctx, _ = _compile(model, make_ctx, outlier_channels=0, weight_bits=8)
    codes = model.graph.initializers["w1_quantized"].const_value.numpy()
    assert np.abs(codes).max() == 127
    assert all(0 < e["weight_rel_l2"] < 0.01 for e in ctx.pass_reports["insert_qdq"]["linears"])
    model7 = _two_linears()
    _compile(model7, make_ctx, outlier_channels=0, weight_bits=7)
    assert np.abs(model7.graph.initializers["w1_quantized"].const_value.numpy()).max() == 63


@pytest.mark.parametrize("saturates, codes", [(True, 63), (False, 127)])
def test_weight_bits_auto_follows_the_cpu(make_ctx, monkeypatch, saturates, codes):
    """The default takes 7-bit codes where onnxruntime's int8 dot products saturate, 8 where they don't,
    and reports the choice with its reason."""
    import qcompiler.passes.insert_qdq as insert_qdq
    monkeypatch.setattr(insert_qdq, "int8_dot_saturates", lambda: (saturates, "test CPU"))
    model = _two_linears()
    ctx, _ = _compile(model, make_ctx, outlier_channels=0)
    assert np.abs(model.graph.initializers["w1_quantized"].const_value.numpy()).max() == codes
    chosen = ctx.pass_reports["insert_qdq"]["weight_bits"]
    assert chosen["bits"] == (7 if saturates else 8) and "test CPU" in chosen["reason"]


def test_weight_bits_rejects_other_widths(make_ctx):
    from qcompiler.errors import SchemeError
    with pytest.raises(SchemeError, match="weight_bits"):
        _compile(_two_linears(), make_ctx, weight_bits=6)


def test_dynamic_form_fuses_in_onnxruntime(make_ctx, tmp_path):
    model = _two_linears()
    _compile(model, make_ctx, outlier_channels=0)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(ir.to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    fused = ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"]
    assert fused == 2 and ops["MatMulInteger"] == 0, ops


def test_outlier_channel_goes_through_fp32(make_ctx):
    model, plain, ref_model = _two_linears(), _two_linears(), _two_linears()
    ctx, _ = _compile(model, make_ctx, outlier_channels=2, outlier_ratio=8.0)
    _compile(plain, make_ctx, outlier_channels=0)
    report = {e["weight"]: e for e in ctx.pass_reports["insert_qdq"]["linears"]}
    assert report["w1"]["outlier_channels"] == [3]  # only channel 3 is 60x the median
    assert report["w2"]["outlier_channels"] == []   # the ReLU output has no such channel
    graph = model.graph
    gathers = [n for n in graph if n.op_type == "Gather"]
    assert len(gathers) == 1 and gathers[0].attributes.get_int("axis") == -1
    mask = graph.initializers["xs_out1_mask"].const_value.numpy()
    assert mask[3] == 0 and mask.sum() == 15
    # The outlier's weight row is zero in the int8 weight and kept exactly in FP32 beside it.
    codes = graph.initializers["w1_out1_quantized"].const_value.numpy()
    assert not codes[3].any()
    w1 = ref_model.graph.initializers["w1"].const_value.numpy()
    np.testing.assert_array_equal(graph.initializers["w1_out1_outlier_rows"].const_value.numpy(), w1[3:4])
    outlier_mm = [n for n in graph if n.name == "w1_outlier_MatMul"]
    assert len(outlier_mm) == 1 and outlier_mm[0].inputs[0] is gathers[0].outputs[0]
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    feeds = _feeds(4, seed=7)
    ref = _run(ref_model, feeds, ["h"])
    with_out = np.mean([_rel(a[0], r[0]) for a, r in zip(_run(model, feeds, ["h"]), ref)])
    without = np.mean([_rel(a[0], r[0]) for a, r in zip(_run(plain, feeds, ["h"]), ref)])
    # Tolerance: without the 60x channel the range shrinks ~20x, so the error falls well below 1%.
    assert with_out < 0.01 and with_out < without / 4


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_static_qdq(make_ctx, method):
    model, ref_model = _two_linears(outlier=1.0), _two_linears(outlier=1.0)
    ctx, _ = _compile(model, make_ctx, activations="static", calibration=method, outlier_channels=0)
    ops = _ops(model)
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 4 and ops["MatMul"] == 2
    for node in model.graph:
        if node.op_type == "DequantizeLinear" and node.inputs[0].is_initializer():
            assert node.attributes.get_int("axis") == 1
            assert node.inputs[0].const_value.dtype == ir.DataType.INT8
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    lo, hi = ctx.pass_reports["insert_qdq"]["linears"][0]["activation_range"]
    assert lo < 0 < hi
    # Tolerance: calibrated (not per-run) ranges on the same distribution; clipping methods may
    # clip a few of the test rows' extremes: 3% relative L2.
    feeds = _feeds(4, seed=7)
    for (out,), (ref,) in zip(_run(model, feeds), _run(ref_model, feeds)):
        assert _rel(out, ref) < 0.03


def test_activation_range_methods():
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((4000, 8)).astype(np.float32)
    samples[0, 0] = 40.0  # one extreme value
    lo, hi = float(samples.min()), float(samples.max())
    assert activation_range(samples, "minmax", lo, hi) == (lo, hi)
    p_lo, p_hi = activation_range(samples, "percentile", lo, hi, percentile=99.9)
    assert 2.5 < p_hi < 4.5 and -4.5 < p_lo < -2.5
    m_lo, m_hi = activation_range(samples, "mse", lo, hi)
    assert lo <= m_lo < 0 < m_hi <= hi

    def mse(a, b):
        return float(np.mean((_fake_quant(samples, a, b) - samples) ** 2))

    assert mse(m_lo, m_hi) <= mse(lo, hi)  # never worse than minmax on the samples it was fit to
    assert activation_range(np.abs(samples), "minmax", 0.0, 40.0)[0] == 0.0  # 0 stays in range


def test_transposed_weight(make_ctx):
    text = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[N, 16] x) => (float[N, 8] y) {
        wt = Transpose <perm = [1, 0]> (w)
        y = MatMul(x, wt)
    }
    """
    w = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    model, ref_model = _model(text, w=w), _model(text, w=w)
    _compile(model, make_ctx, [{"x": f["x"][0]} for f in _feeds()], outlier_channels=0)
    assert "w" not in model.graph.initializers and _ops(model)["Transpose"] == 0
    np.testing.assert_array_equal(model.graph.initializers["w_quantized"].const_value.shape, [16, 8])
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    feeds = [{"x": np.random.default_rng(4).standard_normal((5, 16)).astype(np.float32)}]
    # Tolerance: one int8 linear, 2% relative L2.
    assert _rel(_run(model, feeds)[0][0], _run(ref_model, feeds)[0][0]) < 0.02


def test_keep_plan_is_left_alone(make_ctx):
    model = _two_linears()
    ctx = make_ctx(model, _scheme("keep"))
    before = ir.to_proto(model).SerializeToString()
    assert not InsertQDQ(ctx)(model).modified
    assert ir.to_proto(model).SerializeToString() == before


@pytest.mark.parametrize("tool", ["quantize_dynamic", "quantize_static"])
def test_graph_quantized_by_onnxruntime_is_not_quantized_twice(make_ctx, tmp_path, tool):
    from onnxruntime import quantization as q

    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(ir.to_proto(_two_linears()), src)
    if tool == "quantize_dynamic":
        q.quantize_dynamic(str(src), str(dst), per_channel=True)
    else:
        class Reader(q.CalibrationDataReader):
            def __init__(self):
                self.data = iter(_feeds())

            def get_next(self):
                return next(self.data, None)

        q.quantize_static(str(src), str(dst), Reader(), per_channel=True, quant_format=q.QuantFormat.QDQ)
    model = ir.load(dst)
    ctx = make_ctx(model, _scheme())
    assert ctx.roles.linears == []  # MatMuls on DequantizeLinear / MatMulInteger are not linears
    before = ir.to_proto(model).SerializeToString()
    assert not InsertQDQ(ctx)(model).modified
    assert ir.to_proto(model).SerializeToString() == before


def test_tiny_bert(make_ctx, tmp_path):
    from models.tiny_bert import build_tiny_bert

    path = build_tiny_bert(str(tmp_path / "tiny.onnx"), opset=17, variant="post_ln")
    model, ref_model = ir.load(path), ir.load(path)
    ctx = make_ctx(model, _scheme())
    rng = np.random.default_rng(0)
    feeds = [{"input_ids": rng.integers(1, 1000, (1, 12)).astype(np.int64), "attention_mask": np.ones((1, 12), np.int64)}
             for _ in range(6)]
    ctx.stats = collect_stats(model, feeds, [lin.node.inputs[0].name for lin in ctx.roles.linears])
    InsertQDQ.from_dict(ctx, {"outlier_ratio": 8.0})(model)
    PASS_TABLE["cleanup"](ctx)(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert _ops(model)["MatMulInteger"] == len(ctx.roles.linears) == 12
    report = ctx.pass_reports["insert_qdq"]["linears"]
    assert any(e["outlier_channels"] for e in report if e["role"] == "ffn_down")  # the model's planted outliers
    # Tolerance: 12 int8 linears through 2 post-LN layers: 5% relative L2 on last_hidden_state.
    for (out,), (ref,) in zip(_run(model, feeds[:3]), _run(ref_model, feeds[:3])):
        assert _rel(out, ref) < 0.05
