"""FFN pruning: exact at C = 0, removes W1 columns / b1 entries / W2 rows at C > 0, leaves a
non-FFN graph alone, and the pruned model still runs with consistent shapes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from qcompiler.calibration import collect_stats, synthesize_inputs
from qcompiler.passes.prune_ffn import PruneFFN, PruneFFNOptions


def _run(model: ir.Model, feeds):
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _ctx_with_stats(make_ctx, model):
    ctx = make_ctx(model)
    taps = [lin.node.inputs[0].name for lin in ctx.roles.linears if lin.role == "ffn_down"]
    ctx.stats = collect_stats(model, synthesize_inputs(model, samples=4, seq_len=8), taps)
    return ctx


def test_zero_threshold_is_exact(tiny_bert, make_ctx):
    model = ir.load(tiny_bert)
    feeds = synthesize_inputs(model, samples=1, seq_len=8, seed=5)[0]
    before = _run(model, feeds)
    ctx = _ctx_with_stats(make_ctx, model)
    result = PruneFFN(ctx, PruneFFNOptions(threshold=0.0))(model)
    assert not result.modified
    np.testing.assert_array_equal(_run(model, feeds), before)  # nothing touched: bit-identical


def test_threshold_removes_units_consistently(tiny_bert, make_ctx):
    model = ir.load(tiny_bert)
    feeds = synthesize_inputs(model, samples=1, seq_len=8, seed=5)[0]
    ctx = _ctx_with_stats(make_ctx, model)
    ups = [lin for lin in ctx.roles.linears if lin.role == "ffn_up"]
    hidden_before = [lin.shape_kn[1] for lin in ups]
    result = PruneFFN(ctx, PruneFFNOptions(threshold=1.0, min_keep=8))(model)
    assert result.modified
    layers = ctx.pass_reports["prune_ffn"]["layers"]
    assert all(entry["removed"] > 0 for entry in layers)
    for lin, before, entry in zip(ups, hidden_before, layers):
        k, h = lin.shape_kn
        assert h == before - entry["removed"]
        assert lin.bias.const_value.shape[-1] == h
    downs = [lin for lin in ctx.roles.linears if lin.role == "ffn_down"]
    assert [d.shape_kn[0] for d in downs] == [u.shape_kn[1] for u in ups]
    out = _run(model, feeds)  # runs: every shape along the FFN path agrees
    assert np.isfinite(out).all()
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_graph_without_ffn_left_alone(make_ctx):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[B, 4] x) => (float[B, 4] y) {
        h = MatMul(x, W)
        y = MatMul(h, V)
    }
    """
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), n)
                                    for n in ("W", "V")])
    model = ir.from_proto(proto)
    ctx = make_ctx(model)
    assert not PruneFFN(ctx, PruneFFNOptions(threshold=5.0))(model).modified


def test_repeated_compiles_share_calibration_but_not_pruned_stats(tiny_bert, tmp_path):
    """A bench compiles several variants on one calibration cache: pruning in one compile must
    not slice the cached statistics the next compile reads (regression: IndexError 1535 vs 1536)."""
    from qcompiler.pipeline import compile_model

    for i, c in enumerate((0.5, 0.7)):
        rep = compile_model(tiny_bert, "int8", tmp_path / f"p{i}.onnx", verify=False, prune_ffn=c)
        assert rep["passes"]["prune_ffn"]["removed_fraction"] > 0
