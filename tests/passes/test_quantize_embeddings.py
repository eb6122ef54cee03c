"""quantize_embeddings on small ONNX text graphs: int8 rows, packed int4 rows, tied head, left-alone cases."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from qcompiler.passes import PASS_TABLE
from qcompiler.passes.quantize_embeddings import QuantizeEmbeddings, pack_int4_rows, unpack_int4_rows
from qcompiler.quantizers.uniform import quantize_rows
from qcompiler.schemes import Scheme

V, D = 300, 16

LOOKUP = """
<ir_version: 9, opset_import: ["" : 17]>
g (int64[B, T] ids) => (float[B, T, 16] y) {
    e = Gather(table, ids)
    y = Mul(e, two)
}
"""

# Tied LM head: logits = h @ table^T (the GPT-2 / T5 form).
TIED = """
<ir_version: 9, opset_import: ["" : 17]>
g (int64[B, T] ids) => (float[B, T, 300] logits) {
    e = Gather(table, ids)
    h = Tanh(e)
    wt = Transpose <perm = [1, 0]> (table)
    logits = MatMul(h, wt)
}
"""


def _table(d: int = D) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((V, d)) * rng.uniform(0.02, 2.0, (V, 1))).astype(np.float32)  # rows of varied scale


def _model(text: str, table: np.ndarray | None = None) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(_table() if table is None else table, "table"))
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    return ir.from_proto(proto)


def _scheme(fmt: str, **settings) -> Scheme:
    return Scheme("t", "", [], {"format": "keep"}, {}, {"format": fmt, **settings}, {}, "<test>")


def _run(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _ids(shape=(2, 7)) -> np.ndarray:
    return np.random.default_rng(5).integers(0, V, shape).astype(np.int64)


def _quantize(model: ir.Model, make_ctx, fmt: str, **options):
    ctx = make_ctx(model, _scheme(fmt))
    result = QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0, **options})(model)
    return ctx, result


def _ops(model: ir.Model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph)


def test_registered():
    assert PASS_TABLE["quantize_embeddings"] is QuantizeEmbeddings


def test_int8_rows(make_ctx):
    model = _model(LOOKUP)
    ctx, result = _quantize(model, make_ctx, "int8")
    assert result.modified
    # Golden: only the gathered rows are dequantized.
    assert _ops(model) == collections.Counter({"Gather": 2, "Cast": 2, "Mul": 2})
    graph = model.graph
    assert "table" not in graph.initializers
    codes = graph.initializers["table_quantized"].const_value
    scales = graph.initializers["table_scale"].const_value
    assert codes.dtype == ir.DataType.INT8 and tuple(codes.shape) == (V, D)
    assert scales.dtype == ir.DataType.FLOAT16 and tuple(scales.shape) == (V, 1)
    assert any(o.name == "e" for n in graph for o in n.outputs)  # the Gather's output name is kept
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    ids = _ids()
    (y,) = _run(model, {"ids": ids})
    table = _table()
    # Tolerance: round-to-nearest with one scale per row: |error| <= scale/2 per element
    # (plus the float16 rounding of the scale, 2^-11 relative).
    step = np.abs(table).max(axis=1, keepdims=True) / 127
    bound = 2 * (step / 2 + np.abs(table) * 2**-11 + 1e-7)
    assert np.all(np.abs(y - 2 * table[ids]) <= bound[ids])
    entry = ctx.pass_reports["quantize_embeddings"]["tables"][0]
    assert entry["rows"] == V and entry["bits"] == 8
    assert entry["bytes_before"] == V * D * 4 and entry["bytes_after"] == V * D + V * 2
    assert 0 < entry["rel_l2_error"] < 0.01


@pytest.mark.parametrize("d", [16, 15])  # even and odd row lengths (odd: a padding nibble, sliced off)
def test_int4_packed_rows(make_ctx, d):
    text = LOOKUP.replace("16] y", f"{d}] y")
    table = _table(d)
    model = _model(text, table)
    ctx, _ = _quantize(model, make_ctx, "int4", block_size=8)
    graph = model.graph
    codes = graph.initializers["table_quantized"].const_value
    assert codes.dtype == ir.DataType.UINT8 and tuple(codes.shape) == (V, (d + 1) // 2)  # really 4 bits each
    assert tuple(graph.initializers["table_scale"].const_value.shape) == (V, 2)
    ops = _ops(model)
    assert ops["Mod"] == 1 and ops["BitShift"] == 1 and ops["Concat"] == 1 and ops["Slice"] == (d % 2)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    ids = _ids()
    (y,) = _run(model, {"ids": ids})
    # Tolerance: the graph's unpacking must reproduce the numpy reference exactly, up to the
    # float16 rounding of the block scales (2^-11 relative).
    q = quantize_rows(table, bits=4, block_size=8, search_clip=True)
    ref = q.dequantize()[ids]
    np.testing.assert_allclose(y, 2 * ref, rtol=2**-10, atol=1e-6)
    assert ctx.pass_reports["quantize_embeddings"]["tables"][0]["rel_l2_error"] < 0.15


def test_int4_pack_roundtrip():
    codes = np.random.default_rng(1).integers(-8, 8, (5, 9)).astype(np.int8)
    packed = pack_int4_rows(codes)
    assert packed.dtype == np.uint8 and packed.shape == (5, 5)
    np.testing.assert_array_equal(unpack_int4_rows(packed, 9), codes)


def test_scalar_and_rank3_ids(make_ctx):
    text = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (int64 i, int64[A, B, C] ids) => (float[16] one, float[A, B, C, 16] many) {
        one = Gather(table, i)
        many = Gather(table, ids)
    }
    """
    model = _model(text)
    _quantize(model, make_ctx, "int4", block_size=8)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    ids = np.random.default_rng(2).integers(0, V, (2, 3, 4)).astype(np.int64)
    one, many = _run(model, {"i": np.array(7, np.int64), "ids": ids})
    assert one.shape == (16,) and many.shape == (2, 3, 4, 16)
    ref = quantize_rows(_table(), bits=4, block_size=8, search_clip=True).dequantize()
    np.testing.assert_allclose(many, ref[ids], rtol=2**-10, atol=1e-6)
    np.testing.assert_allclose(one, ref[7], rtol=2**-10, atol=1e-6)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_tied_head_shares_the_codes(make_ctx, fmt):
    model, ref_model = _model(TIED), _model(TIED)
    ctx = make_ctx(model, _scheme(fmt, block_size=8))
    assert [lin.role for lin in ctx.roles.linears] == ["lm_head"]
    QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0, "tied_head": "shared"})(model)
    PASS_TABLE["cleanup"](ctx)(model)
    graph = model.graph
    floats = [v for v in graph.initializers.values() if v.const_value.dtype == ir.DataType.FLOAT and v.const_value.size >= V]
    assert floats == []  # no FP32 copy of the table is left for the head
    assert ctx.pass_reports["quantize_embeddings"]["tables"][0]["tied_linears"] == ["logits"]
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    feeds = {"ids": _ids()}
    (logits,) = _run(model, feeds)
    (ref,) = _run(ref_model, feeds)
    # Tolerance: relative L2 of the logits ~ the table's own error: int8 1%, int4 (block 8) 12%.
    rel = np.linalg.norm(logits - ref) / np.linalg.norm(ref)
    assert rel < (0.01 if fmt == "int8" else 0.12)


def _tied_int4(make_ctx, target="ort", **options):
    model = _model(TIED)
    ctx = make_ctx(model, _scheme("int4", block_size=16), target=target)
    QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0, **options})(model)
    PASS_TABLE["cleanup"](ctx)(model)
    return model, ctx.pass_reports["quantize_embeddings"]


def test_tied_head_runs_as_matmulnbits_on_the_table_codes(make_ctx):
    """With int4 rows (target ort) the head is MatMulNBits on the table's own codes and scales: with fp32
    activations (accuracy_level 0) it computes the shared head's logits; with int8 activations
    (accuracy_level 4, the default) within their rounding. Standard ops only elsewhere."""
    shared, rep = _tied_int4(make_ctx, tied_head="shared")
    assert "MatMulNBits" not in _ops(shared) and rep["tables"][0]["tied_head"][0].startswith("shared")
    exact, rep = _tied_int4(make_ctx, tied_head="int4", tied_head_accuracy_level=0)
    assert _ops(exact)["MatMulNBits"] == 1 and "Transpose" not in _ops(exact)
    assert rep["tables"][0]["tied_head"][0].startswith("MatMulNBits")
    default, _ = _tied_int4(make_ctx)
    node = next(n for n in default.graph if n.op_type == "MatMulNBits")
    assert node.attributes["accuracy_level"].value == 4 and node.attributes["block_size"].value == 16
    onnx.checker.check_model(ir.to_proto(default), full_check=True)
    feeds = {"ids": _ids()}
    (ref,), (got,), (fast,) = _run(shared, feeds), _run(exact, feeds), _run(default, feeds)
    # the same weights; MLAS's int4 kernel sums in its own order: 1e-5 relative
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # int8 activations per block of 16: measured 0.24% relative L2 of the logits (AVX2); bound 1%
    assert np.linalg.norm(fast - ref) / np.linalg.norm(ref) < 0.01


@pytest.mark.parametrize("block_size, d", [(None, D), (16, D), (None, 64)])
def test_tied_head_of_int8_rows_runs_as_matmulnbits_8bit(make_ctx, block_size, d):
    """int8 rows (one scale per row, or per block of 16): the head is MatMulNBits 8-bit on the codes
    + 128; with fp32 activations it computes the shared head's logits, with int8 ones within their
    rounding. With D a multiple of 32 the file holds the codes once: the gathers read the head's B."""
    def compiled(**options):
        model = _model(TIED, _table(d))
        ctx = make_ctx(model, _scheme("int8", **({"block_size": block_size} if block_size else {})))
        QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0, **options})(model)
        PASS_TABLE["cleanup"](ctx)(model)
        return model, ctx.pass_reports["quantize_embeddings"]

    shared, _ = compiled(tied_head="shared")
    exact, rep = compiled(tied_head_accuracy_level=0)
    fast, _ = compiled()
    node = next(n for n in fast.graph if n.op_type == "MatMulNBits")
    assert node.attributes["bits"].value == 8 and node.attributes["accuracy_level"].value == 4
    assert rep["tables"][0]["tied_head"][0].startswith("MatMulNBits int8")
    onnx.checker.check_model(ir.to_proto(fast), full_check=True)
    code_bytes = [v.const_value.size for v in fast.graph.initializers.values()
                  if v.const_value.dtype in (ir.DataType.INT8, ir.DataType.UINT8)]
    assert sum(code_bytes) == (V * d if d % 32 == 0 else 2 * V * d + V * (-d % 32)), code_bytes
    feeds = {"ids": _ids()}
    (ref,), (got,), (quick,) = _run(shared, feeds), _run(exact, feeds), _run(fast, feeds)
    # the same weights; MLAS sums in its own order: 1e-5 relative
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # int8 activations per block: measured 0.32% relative L2 of the logits here (SPR); bound 2%
    assert np.linalg.norm(quick - ref) / np.linalg.norm(ref) < 0.02


def test_int8_rows_as_nbits_pads_with_value_zero():
    from qcompiler.passes.quantize_embeddings import _int8_rows_as_nbits

    codes = np.random.default_rng(0).integers(-127, 128, (5, 40)).astype(np.int8)
    scales = np.arange(1, 6, dtype=np.float32)[:, None]
    b, s, block = _int8_rows_as_nbits(codes, scales, None)
    assert b.shape == (5, 2, 32) and block == 32 and s.shape == (10,)
    values = (b.reshape(5, 64).astype(np.float32) - 128) * np.repeat(s.reshape(5, 2), 32, axis=1)
    np.testing.assert_array_equal(values[:, :40], codes * scales)
    assert not values[:, 40:].any()


def test_tied_head_is_matmulnbits_for_the_library_target_too(make_ctx):
    """--target qcompiler runs on onnxruntime (plus the library): the head is not an FP32 MatMul (on
    the Marian model an FP32 8000 x 256 head took 140 of 1530 us per decoded token). Without the
    library's ops in the scheme (no int4 linears for Int4MatMul) it stays MatMulNBits."""
    model, rep = _tied_int4(make_ctx, target="qcompiler")
    assert _ops(model)["MatMulNBits"] == 1 and rep["tables"][0]["tied_head"][0].startswith("MatMulNBits")


def _tied_int4_at(make_ctx, target, passes, **options):
    """The tied model at the library ops' opset (21), compiled with a scheme listing `passes`."""
    model = _model(TIED.replace('"" : 17', '"" : 21'))
    scheme = _scheme("int4", block_size=16)
    scheme.passes = passes
    ctx = make_ctx(model, scheme, target=target)
    QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0, **options})(model)
    PASS_TABLE["cleanup"](ctx)(model)
    return model, ctx.pass_reports["quantize_embeddings"]


@pytest.mark.parametrize("level", [0, 4])
def test_tied_head_is_int4matmul_where_the_library_runs_anyway(make_ctx, level):
    """With the library's ops in the compiled model (--target qcompiler with int4 linears) the int4 head
    is Int4MatMul on the same codes and scales: with fp32 activations it computes MatMulNBits' logits
    (1e-5 relative: both sum the same products in their own order), with int8 ones within their
    rounding of the shared head (bound 1%); without the library its ONNX function body gives the
    same logits as the kernel (1e-5)."""
    from qcompiler.bench import native_library
    from qcompiler import ops

    nbits, _ = _tied_int4(make_ctx, tied_head_accuracy_level=level)
    shared, _ = _tied_int4(make_ctx, tied_head="shared")
    lib, rep = _tied_int4_at(make_ctx, "qcompiler", ["quantize_embeddings", "quantize_int4"],
                             tied_head_accuracy_level=level)
    assert _ops(lib)["Int4MatMul"] == 1 and "MatMulNBits" not in _ops(lib) and "Transpose" not in _ops(lib)
    assert rep["tables"][0]["tied_head"][0].startswith("Int4MatMul")
    onnx.checker.check_model(ir.to_proto(lib), full_check=True)
    feeds = {"ids": _ids()}
    (ref,), (want,), (fallback,) = _run(shared, feeds), _run(nbits, feeds), _run(lib, feeds)
    if level == 0:
        np.testing.assert_allclose(fallback, want, rtol=1e-5, atol=1e-5)
    else:
        assert np.linalg.norm(fallback - ref) / np.linalg.norm(ref) < 0.01
    if not native_library().startswith("loaded"):
        pytest.skip("the op library is not built: the kernel half of the check needs it")
    opts = ort.SessionOptions()
    ops.register(opts)
    sess = ort.InferenceSession(ir.to_proto(lib).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    (native,) = sess.run(None, feeds)
    if level == 0:
        np.testing.assert_allclose(native, fallback, rtol=1e-5, atol=1e-5)
    else:  # both within the int8-activation rounding of the shared head
        assert np.linalg.norm(native - ref) / np.linalg.norm(ref) < 0.01


def test_tied_head_stays_matmulnbits_for_stock_onnxruntime(make_ctx):
    """The default target (stock onnxruntime) keeps MatMulNBits even at opset 21 with int4 linears."""
    model, rep = _tied_int4_at(make_ctx, "ort", ["quantize_embeddings", "quantize_int4"])
    assert _ops(model)["MatMulNBits"] == 1 and rep["tables"][0]["tied_head"][0].startswith("MatMulNBits")


def test_tied_head_stays_shared_where_matmulnbits_does_not_apply(make_ctx):
    portable, rep = _tied_int4(make_ctx, target="portable")
    assert "MatMulNBits" not in _ops(portable) and rep["tables"][0]["tied_head"][0].startswith("shared")
    with pytest.raises(Exception, match="tied_head must be"):
        QuantizeEmbeddings.from_dict(make_ctx(_model(TIED), _scheme("int4")), {"tied_head": "fp8"})(_model(TIED))


def test_left_alone(make_ctx):
    # Planned "keep".
    model = _model(LOOKUP)
    before = ir.to_proto(model).SerializeToString()
    assert not _quantize(model, make_ctx, "keep")[1].modified
    assert ir.to_proto(model).SerializeToString() == before
    # A table under min_elements (the default, 4096, leaves BERT's 2-row token-type table).
    ctx = make_ctx(model, _scheme("int8"))
    assert not QuantizeEmbeddings.from_dict(ctx, {"min_elements": V * D + 1})(model).modified
    assert "small table" in ctx.pass_reports["quantize_embeddings"]["skipped"][0]["reason"]
    # A table something else also reads: quantizing would keep two copies.
    text = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (int64[N] ids) => (float[N, 16] y, float[300, 16] z) {
        y = Gather(table, ids)
        z = Mul(table, two)
    }
    """
    model = _model(text)
    ctx, result = _quantize(model, make_ctx, "int8")
    assert not result.modified and "table" in model.graph.initializers
    assert "also read by Mul" in ctx.pass_reports["quantize_embeddings"]["skipped"][0]["reason"]


def test_tiny_bert(make_ctx, tmp_path):
    from models.tiny_bert import build_tiny_bert

    path = build_tiny_bert(str(tmp_path / "tiny.onnx"), opset=17, variant="post_ln")
    model, ref_model = ir.load(path), ir.load(path)
    ctx = make_ctx(model, _scheme("int8"))
    QuantizeEmbeddings(ctx)(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    tables = {e["table"]: e for e in ctx.pass_reports["quantize_embeddings"]["tables"]}
    assert len(tables) == 2  # word (1000 x 64) and position (512 x 64); token types (2 x 64) stay
    feeds = {"input_ids": np.random.default_rng(0).integers(1, 1000, (2, 9)).astype(np.int64),
             "attention_mask": np.ones((2, 9), np.int64)}
    (out,), (ref,) = _run(model, feeds), _run(ref_model, feeds)
    # Tolerance: int8 rows (~0.7% each) through 2 post-LN layers: 2% relative L2.
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.02


def _head_input_stats(h: np.ndarray):
    from qcompiler.calibration import ActivationStats

    x = h.reshape(-1, h.shape[-1]).astype(np.float64)
    absmax = np.abs(x).max(axis=0)
    return ActivationStats(absmax, (x ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0), len(x), None, x.T @ x)


def test_tied_head_codes_from_the_head_input_gram(make_ctx):
    """int4 rows of a tied table are chosen by GPTQ on the head input's Gram matrix when calibration
    kept it: the logits' error on those inputs falls below plain per-row rounding's (the rows' own
    error rises: they now serve the head first). A table already on the int4 row grid (trained with
    qcompiler.qat) is kept exactly."""
    rng = np.random.default_rng(5)
    table = _table()
    # correlated head inputs (a few directions dominate, as in real hidden states): GPTQ's gain
    h = (rng.standard_normal((64, 9, 3)) @ rng.standard_normal((3, D)) + 0.1 * rng.standard_normal((64, 9, D)))
    h = h.astype(np.float32)
    errors = {}
    for mode in ("none", "gptq"):
        model = _model(TIED, table)
        ctx = make_ctx(model, _scheme("int4", block_size=8))
        ctx.stats = {ctx.roles.linears[0].node.inputs[0].name: _head_input_stats(h)}
        QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0, "tied_recovery": mode})(model)
        entry = ctx.pass_reports["quantize_embeddings"]["tables"][0]
        assert entry["method"] == ("gptq (tied head)" if mode == "gptq" else "plain")
        stored = _decoded_int4_table(model)
        errors[mode] = np.linalg.norm(h @ (stored - table).T) / np.linalg.norm(h @ table.T)
    assert errors["gptq"] < 0.8 * errors["none"], errors   # measured 0.017 vs 0.066

    model = _model(TIED, stored)              # the last decoded table: on the int4 row grid
    ctx = make_ctx(model, _scheme("int4", block_size=8))
    ctx.stats = {ctx.roles.linears[0].node.inputs[0].name: _head_input_stats(h)}
    QuantizeEmbeddings.from_dict(ctx, {"min_elements": 0})(model)
    assert ctx.pass_reports["quantize_embeddings"]["tables"][0]["method"] == "on-grid (lossless)"
    np.testing.assert_array_equal(_decoded_int4_table(model), stored)


def _decoded_int4_table(model: ir.Model) -> np.ndarray:
    init = model.graph.initializers
    codes = next(v for n, v in init.items() if n.endswith("_quantized")).const_value.numpy()
    scales = next(v for n, v in init.items() if n.endswith("_scale")).const_value.numpy().astype(np.float32)
    values = unpack_int4_rows(codes, D).astype(np.float32)
    return values * np.repeat(scales, 8, axis=1)[:, :D]
