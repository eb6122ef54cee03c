"""quantize_embeddings' measured precision: int4 / int8 / FP32 rows by their own output error vs
round-to-nearest int4 linears (the MatMulNBits level), on a small tied-head graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort

from qcompiler.passes.quantize_embeddings import QuantizeEmbeddings
from qcompiler.plan import KEEP
from qcompiler.report import to_markdown
from qcompiler.schemes import Scheme

V, D = 300, 32

# Embedding, one int4 linear, a tied LM head: logits = tanh(e) @ W @ table^T.
TIED = """
<ir_version: 10, opset_import: ["" : 21]>
g (int64[B, T] ids) => (float[B, T, 300] logits) {
    e = Gather(table, ids)
    h = Tanh(e)
    h2 = MatMul(h, w)
    wt = Transpose <perm = [1, 0]> (table)
    logits = MatMul(h2, wt)
}
"""


def _model() -> ir.Model:
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(TIED)
    table = (rng.standard_normal((V, D)) * rng.uniform(0.05, 1.5, (V, 1))).astype(np.float32)
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(table, "table"),
                                    onnx.numpy_helper.from_array(rng.standard_normal((D, D)).astype(np.float32) / 6, "w")])
    return ir.from_proto(proto)


def _feeds(n=6):
    rng = np.random.default_rng(3)
    return [{"ids": rng.integers(0, V, (1, 9)).astype(np.int64)} for _ in range(n)]


def _compile(make_ctx, feeds=None, **options):
    model = _model()
    scheme = Scheme("t", "", [], {"format": "int4", "block_size": 32}, {}, {"format": "int4", "block_size": 32}, {}, "<t>")
    ctx = make_ctx(model, scheme)
    ctx.calib_feeds = _feeds() if feeds is None else feeds
    QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0, "precision": "measured", **options})(model)
    return model, ctx


def _logits(model, feeds):
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return [sess.run(None, f)[0] for f in feeds]


def _decision(ctx):
    (d,) = ctx.pass_reports["quantize_embeddings"]["precision"]
    return d


def test_choice_follows_the_rule_and_the_measured_error_is_the_written_models(make_ctx):
    # the head reading the shared dequantized rows: exactly the weights the pass measured
    model, ctx = _compile(make_ctx, tied_head="shared")
    d = _decision(ctx)
    e4, limit = d["output_error"]["int4"], d["limit"]
    assert d["tied_head"] and d["matmulnbits_level_error"] > 0 and np.isclose(limit, 0.5 * d["matmulnbits_level_error"], rtol=1e-4)
    expect = "int4" if e4 <= limit else ("int8" if d["output_error"]["int8"] <= limit else "fp32")
    assert d["chosen"] == expect and d["why"].startswith(expect)
    if expect != "fp32":
        # The pass measured the very rows it wrote: the compiled graph (only the table quantized here)
        # errs at the output by the recorded figure (float rounding apart: 1e-4 relative).
        ref = _logits(_model(), _feeds())
        got = _logits(model, _feeds())
        err = np.mean([np.linalg.norm(r - g) / np.linalg.norm(r) for r, g in zip(ref, got)])
        assert np.isclose(err, d["output_error"][expect], rtol=1e-3, atol=1e-6), (err, d)
        # The default head (MatMulNBits on the codes, accuracy_level 4) also rounds its activations
        # to int8 per block: measured 0.0096 against the rows' 0.0079 here (SPR); bound +0.01.
        fast, _ = _compile(make_ctx)
        got = _logits(fast, _feeds())
        err_fast = np.mean([np.linalg.norm(r - g) / np.linalg.norm(r) for r, g in zip(ref, got)])
        assert err_fast <= d["output_error"][expect] + 0.01, (err_fast, d)


def test_share_decides_int4_int8_fp32(make_ctx):
    _, ctx = _compile(make_ctx, error_share=0.0)
    d = _decision(ctx)
    assert d["chosen"] == "fp32" and ctx.plan["table"].format == KEEP and ctx.plan["table"].reason.startswith("measured")
    e4, e8, level = d["output_error"]["int4"], d["output_error"]["int8"], d["matmulnbits_level_error"]
    assert 0 < e8 < e4                                        # int8 rows err less than int4 rows
    model, ctx = _compile(make_ctx, error_share=(e4 + e8) / 2 / level)
    assert _decision(ctx)["chosen"] == "int8" and ctx.plan["table"].format == "int8"
    (entry,) = ctx.pass_reports["quantize_embeddings"]["tables"]
    assert entry["bits"] == 8 and "int8 rows" in entry["chosen_by"]
    # int8 codes, stored once in the tied MatMulNBits head's layout (uint8 [V, D / 32, 32], codes + 128)
    assert model.graph.initializers["table_quantized_u8"].const_value.shape == (V, 1, 32)
    assert "table_quantized" not in model.graph.initializers
    model, ctx = _compile(make_ctx, error_share=2 * e4 / level)
    assert _decision(ctx)["chosen"] == "int4" and "int8" not in _decision(ctx)["output_error"]
    assert model.graph.initializers["table_quantized"].const_value.dtype == ir.DataType.UINT8   # packed nibbles
    md = to_markdown({"input": "m.onnx", "scheme": "int4", "size_before": 1, "size_after": 1, "seconds_total": 0.1,
                      "passes": ctx.pass_reports})
    assert "## Embedding tables: precision" in md and "`table`: int4 rows: output error" in md


def test_without_calibration_the_plan_stands_and_says_so(make_ctx):
    model, ctx = _compile(make_ctx, feeds=[])
    d = _decision(ctx)
    assert d["chosen"] == "int4" and "not measured: no calibration samples" in d["why"]
    assert "table" not in model.graph.initializers   # quantized as planned


def test_scheme_precision_keeps_the_plan(make_ctx):
    model = _model()
    scheme = Scheme("t", "", [], {"format": "keep"}, {}, {"format": "int4", "block_size": 32}, {}, "<t>")
    ctx = make_ctx(model, scheme)
    ctx.calib_feeds = _feeds()
    QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0})(model)
    assert "precision" not in ctx.pass_reports["quantize_embeddings"]
    assert ctx.pass_reports["quantize_embeddings"]["tables"][0]["bits"] == 4
