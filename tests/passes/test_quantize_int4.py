"""quantize_int4: blockwise int4 linears as MatMulNBits (target ort) or opset-21 DequantizeLinear."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import quantize_matmul_4bits

from qcompiler.errors import SchemeError, UsageError
from qcompiler.passes.quantize_int4 import QuantizeInt4, pack_matmul_nbits, quantize_int4_weight
from qcompiler.schemes import Scheme

# K = 200 is a multiple of none of the block sizes (6*32+8, 3*64+8, 128+72).
K, N1, N2 = 200, 24, 16
RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((K, N1)).astype(np.float32)
B1 = RNG.standard_normal(N1).astype(np.float32)
W2T = RNG.standard_normal((N2, K)).astype(np.float32)   # stored [N, K], read through Transpose
X = RNG.standard_normal((2, 5, K)).astype(np.float32)

# accuracy_level 0: fp32 activations, the same dequantized weight; only the summation order
# differs (MLAS blocks K): a few ulps of the K-term dot products, far below 1e-5 of the output's
# scale (outputs are ~sqrt(K) = 14 here).
TIGHT = 1e-5
# accuracy_level 4: MLAS quantizes each block of activations to int8 (one scale per block_size
# values), a relative error of about 1/127/sqrt(3) per term: ~0.5 % of the output's L2 norm.
# Bound: 2 % relative L2.
LOOSE_REL_L2 = 2e-2


def _vals(a: np.ndarray) -> str:
    return ",".join(f"{v:.9g}" for v in a.ravel())


def _model(opset: int = 21) -> ir.Model:
    text = f"""
<ir_version: 10, opset_import: ["" : {opset}]>
g (float[B,S,{K}] x) => (float[B,S,{N1}] y1, float[B,S,{N2}] y2)
  <float[{K},{N1}] w1 = {{{_vals(W1)}}}, float[{N1}] b1 = {{{_vals(B1)}}}, float[{N2},{K}] w2t = {{{_vals(W2T)}}}> {{
  h1 = MatMul(x, w1)
  y1 = Add(h1, b1)
  w2 = Transpose <perm = [1, 0]> (w2t)
  y2 = MatMul(x, w2)
}}
"""
    proto = onnx.parser.parse_model(text)
    proto.graph.node[0].name = "layer0/MatMul"
    proto.graph.node[1].name = "layer0/Add"
    proto.graph.node[3].name = "layer1/MatMul"
    return ir.from_proto(proto)


def _scheme(block_size: int = 32, symmetric: bool = True) -> Scheme:
    return Scheme(name="int4-test", summary="", passes=["quantize_int4"],
                  weights={"format": "int4", "block_size": block_size, "symmetric": symmetric},
                  roles={}, embeddings={}, options={}, source="<test>")


def _run(model: ir.Model, **config: str) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    proto = ir.serde.serialize_model(model)
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip(["y1", "y2"], sess.run(["y1", "y2"], {"x": X})))


def _reference(w1: np.ndarray, w2: np.ndarray) -> dict[str, np.ndarray]:
    x = X.astype(np.float64)
    return {"y1": x @ w1 + B1, "y2": x @ w2}


def _unpack_nibbles(a: np.ndarray) -> np.ndarray:
    return np.stack([a & 0x0F, a >> 4], axis=-1).reshape(*a.shape[:-1], 2 * a.shape[-1])


def _decode_nbits(model: ir.Model, node: ir.Node) -> np.ndarray:
    """The [K, N] weight a MatMulNBits node computes with, decoded from its initializers."""
    k, n, bs = (node.attributes.get_int(a) for a in ("K", "N", "block_size"))
    b = node.inputs[1].const_value.numpy()
    g = b.shape[1]
    scales = node.inputs[2].const_value.numpy().reshape(n, g)
    zp_in = node.inputs[3] if len(node.inputs) > 3 else None
    zp = np.full((n, g), 8.0) if zp_in is None else _unpack_nibbles(zp_in.const_value.numpy().reshape(n, -1))[:, :g]
    codes = _unpack_nibbles(b).reshape(n, g, bs).astype(np.float64)
    w = (codes - zp[:, :, None]) * scales[:, :, None]
    return w.reshape(n, g * bs)[:, :k].T


def _decode_dq(node: ir.Node) -> np.ndarray:
    """The [K, N] weight a blockwise DequantizeLinear node produces."""
    bs = node.attributes.get_int("block_size")
    x = node.inputs[0].const_value.numpy().astype(np.float64)
    scale = np.repeat(node.inputs[1].const_value.numpy().astype(np.float64), bs, axis=0)[: x.shape[0]]
    zp = 0.0
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        zp = np.repeat(node.inputs[2].const_value.numpy().astype(np.float64), bs, axis=0)[: x.shape[0]]
    return (x - zp) * scale


def _ops(model: ir.Model) -> list[tuple[str, str]]:
    return [(n.domain, n.op_type) for n in model.graph]


def _check(model: ir.Model) -> None:
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


# --- packing: bit-identical with onnxruntime's own quantizer ------------------------------------


@pytest.mark.parametrize("k,n,block_size", [(64, 8, 32), (200, 6, 32), (200, 5, 64), (200, 7, 128), (72, 3, 16)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_packing_matches_onnxruntime_quantizer(k, n, block_size, symmetric):
    """Given onnxruntime's codes, our packer writes onnxruntime's exact B and zero-point bytes."""
    w = np.random.default_rng(k + n).standard_normal((k, n)).astype(np.float32)
    g = -(-k // block_size)
    b_ort = np.zeros((n, g, block_size // 2), np.uint8)
    zp_ort = np.zeros((n, (g + 1) // 2), np.uint8)
    scales = np.zeros((n, g), np.float32)
    quantize_matmul_4bits(b_ort, w, scales, zp_ort, block_size, n, k, symmetric)
    codes = _unpack_nibbles(b_ort).reshape(n, g * block_size)[:, :k].T          # [K, N] 0..15
    zero_points = _unpack_nibbles(zp_ort)[:, :g]
    b, zp = pack_matmul_nbits(codes, None if symmetric else zero_points, block_size)
    assert b.dtype == np.uint8 and b.shape == b_ort.shape
    assert b.tobytes() == b_ort.tobytes()
    if symmetric:
        assert zp is None  # onnxruntime writes no zero points either: the op's default 8 applies
    else:
        assert zp.tobytes() == zp_ort.tobytes()


def test_full_range_symmetric_codes_beat_plain_symmetric():
    """Symmetric int4 uses -8..7 (like onnxruntime) and its weight error is lower than -7..7."""
    from qcompiler.quantizers.uniform import quantize_blockwise

    w = np.random.default_rng(1).standard_normal((256, 64)).astype(np.float32)
    q = quantize_int4_weight(w, 32, symmetric=True)
    assert q.codes.min() == -8 and q.codes.max() <= 7
    plain = quantize_blockwise(w, 4, 32, symmetric=True)
    err = np.linalg.norm(q.dequantize() - w)
    assert err < 0.95 * np.linalg.norm(plain.dequantize() - w)


# --- MatMulNBits form -----------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matmulnbits_structure_and_parity(make_ctx, block_size, symmetric):
    model = _model()
    ctx = make_ctx(model, _scheme(block_size, symmetric))
    result = QuantizeInt4.from_dict(ctx, {"accuracy_level": 0})(model)
    assert result.modified
    model = result.model
    assert _ops(model) == [("com.microsoft", "MatMulNBits"), ("com.microsoft", "MatMulNBits")]
    n1, n2 = list(model.graph)
    assert n1.name == "layer0/MatMulNBits" and n2.name == "layer1/MatMulNBits"
    assert [o.name for o in model.graph.outputs] == ["y1", "y2"]
    assert n1.outputs[0].name == "y1" and n2.outputs[0].name == "y2"
    # bias folded into the op's bias input (index 5); no zero points when symmetric
    assert n1.inputs[5].name == "b1" and (n1.inputs[3] is None) == symmetric
    assert "accuracy_level" not in n1.attributes  # 0 is the default, written only when nonzero
    g = -(-K // block_size)
    assert n1.attributes.get_int("K") == K and n1.attributes.get_int("N") == N1
    assert n1.attributes.get_int("bits") == 4 and n1.attributes.get_int("block_size") == block_size
    assert n1.inputs[1].name == "w1_Q4" and n1.inputs[1].const_value.shape == (N1, g, block_size // 2)
    assert n1.inputs[2].name == "w1_scales" and n1.inputs[2].const_value.shape == (N1 * g,)
    if not symmetric:
        assert n1.inputs[3].name == "w1_zero_points" and n1.inputs[3].const_value.shape == (N1 * ((g + 1) // 2),)
    assert set(model.graph.initializers) >= {"w1_Q4", "w1_scales", "b1", "w2t_Q4", "w2t_scales"}
    assert "w1" not in model.graph.initializers and "w2t" not in model.graph.initializers
    assert model.opset_imports["com.microsoft"] == 1
    _check(model)

    # the packed weight decodes to exactly what the quantizer produced
    w1_q, w2_q = _decode_nbits(model, n1), _decode_nbits(model, n2)
    np.testing.assert_array_equal(w1_q.astype(np.float32), quantize_int4_weight(W1, block_size, symmetric).dequantize())
    np.testing.assert_array_equal(w2_q.astype(np.float32), quantize_int4_weight(W2T.T, block_size, symmetric).dequantize())

    ref = _reference(w1_q, w2_q)
    got = _run(model)
    for name in ("y1", "y2"):
        np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=TIGHT * np.abs(ref[name]).max())

    report = ctx.pass_reports["quantize_int4"]
    assert report["quantized"] == 2 and report["target"] == "ort"
    entry = report["linears"][0]
    assert entry["weight"] == "w1" and entry["block_size"] == block_size and entry["symmetric"] == symmetric
    assert entry["form"] == "MatMulNBits (bias folded)"
    rel = np.linalg.norm(w1_q - W1) / np.linalg.norm(W1)
    assert entry["rel_error"] == pytest.approx(rel, abs=1e-5) and 0.05 < rel < 0.15


@pytest.mark.parametrize("block_size", [32, 128])
def test_matmulnbits_accuracy_level_4(make_ctx, block_size):
    model = _model()
    ctx = make_ctx(model, _scheme(block_size, symmetric=False))
    model = QuantizeInt4.from_dict(ctx, {"accuracy_level": 4})(model).model
    n1, n2 = list(model.graph)
    assert n1.attributes.get_int("accuracy_level") == 4
    _check(model)
    ref = _reference(_decode_nbits(model, n1), _decode_nbits(model, n2))
    got = _run(model)
    for name in ("y1", "y2"):
        rel = np.linalg.norm(got[name] - ref[name]) / np.linalg.norm(ref[name])
        assert rel < LOOSE_REL_L2, (name, rel)


def test_bias_kept_as_add_when_not_folded(make_ctx):
    model = _model()
    ctx = make_ctx(model, _scheme())
    model = QuantizeInt4.from_dict(ctx, {"accuracy_level": 0, "fold_bias": False})(model).model
    assert [n.op_type for n in model.graph] == ["MatMulNBits", "Add", "MatMulNBits"]
    assert model.graph.node(1).outputs[0].name == "y1" and model.graph.node(1).name == "layer0/Add"
    _check(model)
    n1, _, n2 = list(model.graph)
    ref = _reference(_decode_nbits(model, n1), _decode_nbits(model, n2))
    got = _run(model)
    np.testing.assert_allclose(got["y1"], ref["y1"], rtol=0, atol=TIGHT * np.abs(ref["y1"]).max())


def test_shared_weight_is_packed_once(make_ctx):
    text = f"""
<ir_version: 10, opset_import: ["" : 21]>
g (float[B,{K}] x, float[B,{K}] z) => (float[B,{N1}] y1, float[B,{N1}] y2) <float[{K},{N1}] w1 = {{{_vals(W1)}}}> {{
  y1 = MatMul(x, w1)
  y2 = MatMul(z, w1)
}}
"""
    model = ir.from_proto(onnx.parser.parse_model(text))
    ctx = make_ctx(model, _scheme())
    model = QuantizeInt4.from_dict(ctx, {})(model).model
    a, b = list(model.graph)
    assert a.inputs[1] is b.inputs[1] and a.inputs[2] is b.inputs[2]
    assert sorted(model.graph.initializers) == ["w1_Q4", "w1_scales"]
    _check(model)


# --- portable form ----------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_portable_structure_and_parity(make_ctx, block_size, symmetric):
    model = _model(opset=21)
    ctx = make_ctx(model, _scheme(block_size, symmetric), target="portable")
    model = QuantizeInt4.from_dict(ctx, {})(model).model
    assert [n.op_type for n in model.graph] == ["DequantizeLinear", "MatMul", "Add", "DequantizeLinear", "MatMul"]
    assert all(n.domain == "" for n in model.graph)
    dq1, mm1, add1, dq2, mm2 = list(model.graph)
    assert dq1.name == "layer0/DequantizeLinear" and mm1.name == "layer0/MatMul"
    assert add1.outputs[0].name == "y1" and mm2.outputs[0].name == "y2"
    assert mm1.inputs[1] is dq1.outputs[0] and mm2.inputs[1] is dq2.outputs[0]
    assert dq1.attributes.get_int("axis") == 0 and dq1.attributes.get_int("block_size") == block_size
    g = -(-K // block_size)
    x = dq1.inputs[0].const_value
    assert x.dtype == (ir.DataType.INT4 if symmetric else ir.DataType.UINT4) and x.shape == (K, N1)
    assert dq1.inputs[1].const_value.shape == (g, N1)
    assert (len(dq1.inputs) == 2) == symmetric
    if not symmetric:
        assert dq1.inputs[2].const_value.dtype == ir.DataType.UINT4
    assert "w1" not in model.graph.initializers and "w2t" not in model.graph.initializers
    assert "com.microsoft" not in model.opset_imports
    _check(model)

    w1_q, w2_q = _decode_dq(dq1), _decode_dq(dq2)
    np.testing.assert_array_equal(w1_q.astype(np.float32), quantize_int4_weight(W1, block_size, symmetric).dequantize())
    ref = _reference(w1_q, w2_q)
    # onnxruntime fuses DequantizeLinear(int4, blockwise) + MatMul into its MatMulNBits kernel,
    # by default at accuracy level 4 (int8 activations): the loose bound. At level 0 the
    # dequantization is exact and the MatMul fp32: summation order only, the tight bound.
    got = _run(model, **{"session.qdq_matmulnbits_accuracy_level": "0"})
    for name in ("y1", "y2"):
        np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=TIGHT * np.abs(ref[name]).max())
    got = _run(model)
    for name in ("y1", "y2"):
        assert np.linalg.norm(got[name] - ref[name]) / np.linalg.norm(ref[name]) < LOOSE_REL_L2
    assert ctx.pass_reports["quantize_int4"]["linears"][0]["form"] == "DequantizeLinear + MatMul"


def test_portable_runs_in_onnx_reference(make_ctx):
    """Standard ops only: onnx's reference evaluator runs it too (no onnxruntime fusion)."""
    from onnx.reference import ReferenceEvaluator

    model = _model(opset=21)
    ctx = make_ctx(model, _scheme(64, symmetric=False), target="portable")
    model = QuantizeInt4.from_dict(ctx, {})(model).model
    dq1, _, _, dq2, _ = list(model.graph)
    ref = _reference(_decode_dq(dq1), _decode_dq(dq2))
    y1, y2 = ReferenceEvaluator(ir.serde.serialize_model(model)).run(None, {"x": X})
    np.testing.assert_allclose(y1, ref["y1"], rtol=0, atol=TIGHT * np.abs(ref["y1"]).max())
    np.testing.assert_allclose(y2, ref["y2"], rtol=0, atol=TIGHT * np.abs(ref["y2"]).max())


def test_portable_needs_opset_21(make_ctx):
    model = _model(opset=17)
    ctx = make_ctx(model, _scheme(), target="portable")
    with pytest.raises(UsageError, match="opset 17.*canonicalize"):
        QuantizeInt4.from_dict(ctx, {})(model)


def test_bad_block_size(make_ctx):
    model = _model()
    ctx = make_ctx(model, _scheme(block_size=48))
    with pytest.raises(SchemeError, match="block_size"):
        QuantizeInt4.from_dict(ctx, {})(model)


# --- graphs it must leave alone ---------------------------------------------------------------------

LEAVE_ALONE = f"""
<ir_version: 10, opset_import: ["" : 21]>
g (float[B,{K}] x, float[{K},{N1}] w_runtime) => (float[B,{N1}] y1, float[B,{N1}] y2)
  <int8[{K},{N1}] wq = {{{",".join(["1"] * (K * N1))}}}, float s = {{0.5}}> {{
  y1 = MatMul(x, w_runtime)
  w = DequantizeLinear(wq, s)
  y2 = MatMul(x, w)
}}
"""


def test_leaves_non_constant_and_dequantized_weights_alone(make_ctx):
    model = ir.from_proto(onnx.parser.parse_model(LEAVE_ALONE))
    before = ir.serde.serialize_model(model).SerializeToString()
    ctx = make_ctx(model, _scheme())
    assert ctx.roles.linears == []
    result = QuantizeInt4.from_dict(ctx, {})(model)
    assert not result.modified
    assert ir.serde.serialize_model(result.model).SerializeToString() == before


def test_leaves_linears_planned_in_other_formats_alone(make_ctx):
    model = _model()
    before = ir.serde.serialize_model(model).SerializeToString()
    scheme = _scheme()
    scheme.roles["linear"] = {"format": "keep"}
    ctx = make_ctx(model, scheme)
    result = QuantizeInt4.from_dict(ctx, {})(model)
    assert not result.modified
    assert ir.serde.serialize_model(result.model).SerializeToString() == before


# --- a whole (tiny) transformer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert_path(tmp_path_factory):
    from models.tiny_bert import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("int4") / "tiny_bert.onnx", opset=17)


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_tiny_bert_end_to_end(make_ctx, tiny_bert_path, target):
    """Every linear of tiny BERT becomes int4; its output names survive; the encoder stays close.

    Bound: per-token cosine of last_hidden_state with FP32 >= 0.97 on average (measured 0.987
    asymmetric block 32; random Gaussian weights, weight error 7.7 %).
    """
    from models.tiny_bert import example_inputs
    from qcompiler.passes.canonicalize import Canonicalize

    feeds = example_inputs(2, 12)

    def run(m: ir.Model) -> np.ndarray:
        proto = ir.serde.serialize_model(m).SerializeToString()
        return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    model = ir.load(tiny_bert_path)
    ref = run(model)
    Canonicalize(None, Canonicalize.Options(target_opset=21))(model)   # portable int4 needs 21
    ctx = make_ctx(model, _scheme(32, symmetric=False), target=target)
    outputs = [lin.output.name for lin in ctx.roles.linears]
    assert len(outputs) == 12
    model = QuantizeInt4.from_dict(ctx, {})(model).model
    _check(model)
    produced = {v.name for node in model.graph for v in node.outputs}
    assert set(outputs) <= produced
    assert not any(n.op_type == "MatMul" and n.inputs[1].is_initializer() for n in model.graph)
    y = run(model)
    a, b = ref.reshape(-1, ref.shape[-1]), y.reshape(-1, y.shape[-1])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() >= 0.97


# --- calibrated recovery (GPTQ) with FP16 outlier rows -------------------------------------------


def _gptq_scheme(n_outliers: int = 2) -> Scheme:
    return Scheme(name="int4-gptq-test", summary="", passes=["quantize_int4"],
                  weights={"format": "int4", "block_size": 32, "symmetric": False, "recovery": "gptq",
                           "n_outliers": n_outliers},
                  roles={}, embeddings={}, options={}, source="<test>")


def _calibration_rows() -> np.ndarray:
    x = np.random.default_rng(7).standard_normal((512, K)).astype(np.float32)
    x[:, 11] *= 40.0                  # one input channel with a dominant activation energy
    return x


def _gptq_stats(x: np.ndarray) -> dict:
    from qcompiler.calibration import ActivationStats

    return {"x": ActivationStats(np.abs(x).max(0), (x ** 2).sum(0), x.min(0), x.max(0), len(x), None,
                                 x.astype(np.float64).T @ x)}


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_gptq_recovery_with_outlier_rows(make_ctx, target):
    """With statistics: GPTQ codes, the dominant channel kept in FP16 through a side path, the
    outputs keep their names, and the output error on the calibration rows beats plain rounding."""
    x = _calibration_rows()
    model = _model(21)
    ctx = make_ctx(model, _gptq_scheme(), target=target)
    p = QuantizeInt4(ctx)
    assert p.needs_stats and p.needs_gram
    ctx.stats = _gptq_stats(x)
    p(model)
    _check(model)
    linears = ctx.pass_reports["quantize_int4"]["linears"]
    assert [e["method"] for e in linears] == ["gptq", "gptq"]     # both read x
    assert all(e["n_outliers"] == 2 for e in linears)
    assert all("outlier rows" in e["form"] for e in linears)
    gathers = [n for n in model.graph if n.op_type == "Gather"]
    assert all(11 in n.inputs[1].const_value.numpy().tolist() for n in gathers)

    # Sanity on other inputs: int4 codes of a Gaussian weight leave ~10 % relative output error
    # (4-bit, block 32); the bound 0.2 catches a broken side path or a lost bias, not rounding.
    got = _run(model)
    for name, w in (("y1", W1), ("y2", W2T.T)):
        ref = X.astype(np.float64) @ w + (B1 if name == "y1" else 0)
        rel = np.linalg.norm(got[name] - ref) / np.linalg.norm(ref)
        assert rel < 0.2, rel
    plain = _model(21)
    QuantizeInt4(make_ctx(plain, _scheme(32, symmetric=False), target=target))(plain)
    # the recovered model beats plain rounding on the calibration distribution (output error)
    so = ort.SessionOptions()
    sess = lambda m: ort.InferenceSession(ir.serde.serialize_model(m).SerializeToString(), so,  # noqa: E731
                                          providers=["CPUExecutionProvider"])
    feeds = {"x": x[None, :256]}
    ref1 = x[None, :256].astype(np.float64) @ W1 + B1
    err_gptq = np.linalg.norm(sess(model).run(["y1"], feeds)[0] - ref1)
    err_plain = np.linalg.norm(sess(plain).run(["y1"], feeds)[0] - ref1)
    assert err_gptq < err_plain, (err_gptq, err_plain)


def test_gptq_without_statistics_falls_back_to_plain(make_ctx):
    model = _model(21)
    ctx = make_ctx(model, _gptq_scheme())
    QuantizeInt4(ctx)(model)
    methods = {e["method"] for e in ctx.pass_reports["quantize_int4"]["linears"]}
    assert methods == {"plain (no calibration statistics)"}
    assert not any(n.op_type == "Gather" for n in model.graph)


def test_unknown_recovery_is_a_scheme_error(make_ctx):
    model = _model(21)
    scheme = _gptq_scheme()
    scheme.weights["recovery"] = "magic"
    with pytest.raises(SchemeError, match="recovery"):
        QuantizeInt4(make_ctx(model, scheme))(model)
