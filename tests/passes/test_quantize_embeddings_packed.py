"""quantize_embeddings, formats "packed" / "ternary": PackedGather rows of mixed widths ranked by frequency."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from qcompiler import ops
from qcompiler.errors import SchemeError, UsageError
from qcompiler.passes.quantize_embeddings import (
    QuantizeEmbeddings, assign_row_bits, quantize_mixed_rows, token_counts)
from qcompiler.schemes import Scheme
from qcompiler.ops import contract

V, D = 300, 40   # D = 40: the last scale group (32) is partial

LOOKUP = """
<ir_version: 10, opset_import: ["" : 21]>
g (int64[B, T] ids) => (float[B, T, 40] y) {
    flat = Reshape(ids, shape)
    e = Gather(table, flat)
    y = Reshape(e, out_shape)
}
"""

TIED = """
<ir_version: 10, opset_import: ["" : 21]>
g (int64[B, T] ids) => (float[B, T, 300] logits) {
    e = Gather(table, ids)
    h = Tanh(e)
    wt = Transpose <perm = [1, 0]> (table)
    logits = MatMul(h, wt)
}
"""


def _table() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((V, D)) * rng.uniform(0.05, 2.0, (V, 1))).astype(np.float32)


def _model(text: str, opset: int = 21) -> ir.Model:
    proto = onnx.parser.parse_model(text.replace('"" : 21', f'"" : {opset}'))
    for name, array in (("table", _table()), ("shape", np.array([-1], np.int64)),
                        ("out_shape", np.array([2, -1, D], np.int64))):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return ir.from_proto(proto)


def _scheme(fmt: str = "packed", **settings) -> Scheme:
    return Scheme("t", "", [], {"format": "keep"}, {}, {"format": fmt, **settings}, {}, "<test>")


def _frequent_ids() -> np.ndarray:
    """Calibration ids where rows 7, 8 and 9 are by far the most frequent."""
    rng = np.random.default_rng(3)
    ids = rng.integers(0, V, (2, 50))
    ids[:, :30] = np.array([7, 8, 9] * 10)
    return ids.astype(np.int64)


def _run(model: ir.Model, feeds: dict, native: bool) -> np.ndarray:
    so = ort.SessionOptions()
    if native:
        ops.register(so)
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _decoded_table(model: ir.Model) -> np.ndarray:
    """What the PackedGather initializers hold, decoded with the numpy reference of the contract."""
    node = next(n for n in model.graph if n.op_type == "PackedGather" and n.domain == contract.DOMAIN)
    table, offsets, bits, scales = (v.const_value.numpy() for v in node.inputs[:4])
    return contract.reference("PackedGather", table, offsets, bits, scales, np.arange(V, dtype=np.int64),
                              D=D, group_size=node.attributes.get_int("group_size"))


def test_assign_row_bits_by_priority():
    priority = np.array([5.0, 1.0, 9.0, 0.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0])
    bits = assign_row_bits(priority, [8, 4, 2], [0.2, 0.3, 0.5])
    assert bits[[2, 7]].tolist() == [8, 8]                  # the two highest
    assert sorted(bits[[5, 9, 0]].tolist()) == [4, 4, 4]   # the next three
    assert (bits == 2).sum() == 5


def test_quantize_mixed_rows_fit_their_bits():
    w = _table()
    bits = np.where(np.arange(V) % 3 == 0, 8, np.where(np.arange(V) % 3 == 1, 4, 2)).astype(np.uint8)
    values, scales = quantize_mixed_rows(w, bits, 32)
    assert scales.shape == (V, 2)
    assert np.abs(values[bits == 8]).max() <= 127
    assert np.abs(values[bits == 4]).max() <= 8
    assert set(np.unique(values[bits == 2]).tolist()) <= {-1, 0, 1}
    deq = values * np.repeat(scales, 32, axis=1)[:, :D]
    err = {b: np.linalg.norm(deq[bits == b] - w[bits == b]) / np.linalg.norm(w[bits == b]) for b in (8, 4, 2)}
    assert err[8] < err[4] < err[2]       # more bits, less error


def test_token_counts_follow_value_preserving_ops():
    model = _model(LOOKUP)
    gather = next(n for n in model.graph if n.op_type == "Gather")
    ids = _frequent_ids()
    counts = token_counts(gather.inputs[1], [{"ids": ids}, {"ids": ids[:1]}], V)
    assert counts.sum() == ids.size + ids[:1].size
    assert counts[7] == 30 and counts.argmax() in (7, 8, 9)
    assert token_counts(gather.inputs[1], [{"other": ids}], V) is None


@pytest.mark.parametrize("native", [False, True])
def test_mixed_rows_by_calibration_frequency(make_ctx, native):
    model = _model(LOOKUP)
    ctx = make_ctx(model, _scheme(row_bits=[8, 4, 2], row_fractions=[0.01, 0.29, 0.7]))
    ctx.calib_feeds = [{"ids": _frequent_ids()}]
    p = QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0})
    assert p.needs_stats
    p(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert [n.op_type for n in model.graph].count("PackedGather") == 1
    assert not any(n.op_type == "Gather" for n in model.graph)
    entry = ctx.pass_reports["quantize_embeddings"]["tables"][0]
    assert entry["rows_per_bits"] == {8: 3, 4: 87, 2: 210}
    assert entry["row_ranking"].startswith("calibration token counts")
    node = next(n for n in model.graph if n.op_type == "PackedGather")
    bits = node.inputs[2].const_value.numpy()
    assert bits[[7, 8, 9]].tolist() == [8, 8, 8]           # the frequent tokens get int8 rows
    assert entry["bytes_after"] < V * D                    # under one byte per weight
    # PackedGather is exact everywhere: native kernel and function body equal the reference decode
    ids = np.random.default_rng(1).integers(-V, V, (2, 9)).astype(np.int64)
    got = _run(model, {"ids": ids}, native)
    np.testing.assert_array_equal(got, _decoded_table(model)[ids])


def test_ternary_rows_and_tied_head(make_ctx):
    model = _model(TIED)
    ctx = make_ctx(model, _scheme("ternary"))
    QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0})(model)
    assert "table" not in model.graph.initializers                   # no FP32 copy is left
    # The lookup is the native op; the head's whole-table decode is PackedGather's own body inlined
    # (standard ops on initializers only), which onnxruntime folds once at session start.
    assert [n.op_type for n in model.graph].count("PackedGather") == 1
    head = next(n for n in model.graph if n.op_type == "MatMul")
    todo, seen = [head.inputs[1].producer()], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        assert node.domain == "" and not any(v in model.graph.inputs for v in node.inputs), node
        todo += [v.producer() for v in node.inputs if v is not None]
    assert len(seen) > 10
    ids = np.random.default_rng(2).integers(0, V, (2, 5)).astype(np.int64)
    table = _decoded_table(model)
    h = np.tanh(table[ids])
    for native in (False, True):
        got = _run(model, {"ids": ids}, native)
        # the head is an fp32 MatMul of the same decoded table (MLAS summation order): 1e-5 relative
        np.testing.assert_allclose(got, h @ table.T, rtol=1e-5, atol=1e-5)


def test_row_norm_fallback_for_synthesized_calibration(make_ctx):
    model = _model(LOOKUP)
    ctx = make_ctx(model, _scheme(row_bits=[4, 2], row_fractions=[0.5, 0.5]))
    ctx.calib_feeds, ctx.calibration_synthesized = [{"ids": _frequent_ids()}], True
    QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0})(model)
    entry = ctx.pass_reports["quantize_embeddings"]["tables"][0]
    assert "synthesized" in entry["row_ranking"]
    bits = next(n for n in model.graph if n.op_type == "PackedGather").inputs[2].const_value.numpy()
    norms = np.linalg.norm(_table(), axis=1)
    assert norms[bits == 4].min() >= norms[bits == 2].max()     # the larger rows get 4 bits


def test_counts_file(make_ctx, tmp_path):
    counts = np.zeros(V)
    counts[[11, 12]] = 100
    path = tmp_path / "counts.npy"
    np.save(path, counts)
    model = _model(LOOKUP)
    ctx = make_ctx(model, _scheme(row_bits=[8, 2], row_fractions=[2 / V, 1 - 2 / V], frequency=str(path)))
    QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0})(model)
    bits = next(n for n in model.graph if n.op_type == "PackedGather").inputs[2].const_value.numpy()
    assert np.nonzero(bits == 8)[0].tolist() == [11, 12]
    np.save(path, counts[:10])
    model = _model(LOOKUP)
    with pytest.raises(SchemeError, match="10 counts"):
        QuantizeEmbeddings.from_dict(make_ctx(model, _scheme(row_bits=[8, 2], frequency=str(path))), {"min_elements": 0})(model)


@pytest.mark.parametrize("settings,match", [
    ({"row_bits": [3]}, "row_bits"),
    ({"row_bits": [8, 2], "row_fractions": [1.0]}, "row_fractions"),
    ({"group_size": 0}, "group_size"),
])
def test_bad_settings(make_ctx, settings, match):
    model = _model(LOOKUP)
    with pytest.raises(SchemeError, match=match):
        QuantizeEmbeddings.from_dict(make_ctx(model, _scheme(**settings)), {"min_elements": 0})(model)


def test_needs_opset_21(make_ctx):
    model = _model(LOOKUP, opset=17)
    with pytest.raises(UsageError, match="opset"):
        QuantizeEmbeddings.from_dict(make_ctx(model, _scheme()), {"min_elements": 0})(model)
