"""quantize_int4 --target qcompiler: the int4 scheme as ai.qcompiler Int4MatMul (this project's op
library), on the same codes, scales and zero points as the MatMulNBits and DequantizeLinear forms."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from qcompiler import ops
from qcompiler.ops import contract
from qcompiler.passes.canonicalize import Canonicalize
from qcompiler.passes.quantize_int4 import QuantizeInt4
from qcompiler.schemes import Scheme



def _scheme(symmetric: bool, recovery: str = "none", n_outliers: int = 0, **weights) -> Scheme:
    return Scheme(name="int4-library-test", summary="", passes=["quantize_int4"],
                  weights={"format": "int4", "block_size": 32, "symmetric": symmetric, "recovery": recovery,
                           "n_outliers": n_outliers, **weights},
                  roles={}, embeddings={}, options={}, source="<test>")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from models.tiny_bert import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("int4lib") / "tiny_bert.onnx", opset=17)


def _run(model: ir.Model, library: bool, optimize: bool = True) -> np.ndarray:
    """optimize=False: no graph rewrites (onnxruntime fuses DequantizeLinear + MatMul into its
    int8-activation MatMulNBits otherwise)."""
    from models.tiny_bert import example_inputs

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if library:
        ops.register(so)
    proto = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(proto, so, providers=["CPUExecutionProvider"]).run(None, example_inputs(2, 12))[0]


def _compile(make_ctx, path, target: str, scheme: Scheme) -> tuple[ir.Model, dict]:
    model = ir.load(path)
    Canonicalize(None, Canonicalize.Options(target_opset=21))(model)   # the function bodies' opset
    ctx = make_ctx(model, scheme, target=target)
    model = QuantizeInt4.from_dict(ctx, {})(model).model
    return model, ctx.pass_reports["quantize_int4"]


@pytest.mark.parametrize("symmetric", [False, True])
def test_library_form_computes_the_portable_forms_weights(make_ctx, tiny_bert, symmetric):
    """Every linear becomes one Int4MatMul (bias folded, no MatMulNBits left); its function body,
    run without the library, gives the DequantizeLinear form's output (the same dequantized
    weights in fp32: allclose 1e-5 of the output's scale, summation order aside), and the library
    (int8 activations per row and group) stays within the contract's level-4 error of it
    (per-token cosine >= 0.999; measured 0.9995)."""
    lib, report = _compile(make_ctx, tiny_bert, "qcompiler", _scheme(symmetric))
    portable, _ = _compile(make_ctx, tiny_bert, "portable", _scheme(symmetric))
    onnx.checker.check_model(ir.serde.serialize_model(lib), full_check=True)
    types = [n.op_type for n in lib.graph]
    assert types.count("Int4MatMul") == 12 and "MatMulNBits" not in types
    assert all(e["form"].startswith("Int4MatMul") for e in report["linears"])
    ref = _run(portable, library=False, optimize=False)
    fallback = _run(lib, library=False)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(fallback, ref, rtol=0, atol=1e-5 * scale)
    native = _run(lib, library=True)
    a, b = ref.reshape(-1, ref.shape[-1]), native.reshape(-1, native.shape[-1])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999, cos.min()


def test_library_form_same_bytes_as_matmulnbits(make_ctx, tiny_bert):
    """The Int4MatMul initializers hold MatMulNBits' codes, scales and zero points (re-laid-out):
    one packed weight dequantizes to the same fp32 matrix in both forms; sizes within 1%."""
    lib, rep_lib = _compile(make_ctx, tiny_bert, "qcompiler", _scheme(False))
    nbits, rep_nbits = _compile(make_ctx, tiny_bert, "ort", _scheme(False))
    node = next(n for n in lib.graph if n.op_type == "Int4MatMul")
    ref = next(n for n in nbits.graph if n.op_type == "MatMulNBits" and n.name.replace("MatMulNBits", "")
               == node.name.replace("Int4MatMul", ""))
    k, n, bs = node.attributes["K"].value, node.attributes["N"].value, node.attributes["group_size"].value
    w = contract.dequantize("Int4MatMul", node.inputs[1].const_value.numpy(), node.inputs[2].const_value.numpy(),
                            K=k, N=n, group_size=bs, zero_points=node.inputs[6].const_value.numpy())
    b = ref.inputs[1].const_value.numpy().reshape(n, -1)            # [N, G * bs / 2]
    codes = np.stack([b & 15, b >> 4], -1).reshape(n, -1)[:, :k].astype(np.float32)
    g = -(-k // bs)
    zp = ref.inputs[3].const_value.numpy().reshape(n, -1)
    zp = np.stack([zp & 15, zp >> 4], -1).reshape(n, -1)[:, :g].astype(np.float32)
    s = ref.inputs[2].const_value.numpy().reshape(n, g)
    grp = np.arange(k) // bs
    np.testing.assert_array_equal(w, (s[:, grp] * (codes - zp[:, grp])).T.astype(np.float32))
    assert abs(rep_lib["bytes_after"] / rep_nbits["bytes_after"] - 1) < 0.01


def test_outlier_rows_are_the_ops_own_inputs(make_ctx):
    """GPTQ with FP16 outlier rows: the rows ride in Int4MatMul's outlier inputs (no side Gather /
    MatMul), the dominant channel among them."""
    from tests.passes.test_quantize_int4 import B1, W1, W2T, X, _calibration_rows, _gptq_stats, _model

    model = _model(21)
    ctx = make_ctx(model, _scheme(False, "gptq", 2), target="qcompiler")
    p = QuantizeInt4(ctx)
    ctx.stats = _gptq_stats(_calibration_rows())
    model = p(model).model
    assert [n.op_type for n in model.graph if n.op_type in ("Gather", "MatMul")] == []
    nodes = [n for n in model.graph if n.op_type == "Int4MatMul"]
    assert len(nodes) == 2 and all(11 in n.inputs[4].const_value.numpy().tolist() for n in nodes)
    so = ort.SessionOptions()
    ops.register(so)
    sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    got = dict(zip(["y1", "y2"], sess.run(["y1", "y2"], {"x": X})))
    # int4 codes of a Gaussian weight leave ~10 % relative output error; 0.2 catches a lost
    # bias or outlier row, not rounding
    for name, w in (("y1", W1), ("y2", W2T.T)):
        ref = X.astype(np.float64) @ w + (B1 if name == "y1" else 0)
        assert np.linalg.norm(got[name] - ref) / np.linalg.norm(ref) < 0.2


@pytest.mark.parametrize("target, rows", [("qcompiler", 3), ("ort", 0)])
def test_native_outlier_count_follows_the_form(make_ctx, target, rows):
    """n_outliers_native applies where the op carries the rows (Int4MatMul), n_outliers where a side
    path would (MatMulNBits): 3 rows in each Int4MatMul, none and no side path on the ort form."""
    from tests.passes.test_quantize_int4 import _calibration_rows, _gptq_stats, _model

    model = _model(21)
    ctx = make_ctx(model, _scheme(False, "gptq", 0, n_outliers_native=3), target=target)
    p = QuantizeInt4(ctx)
    ctx.stats = _gptq_stats(_calibration_rows())
    model = p(model).model
    assert [n.op_type for n in model.graph if n.op_type in ("Gather", "MatMul")] == []
    assert [r["n_outliers"] for r in ctx.pass_reports["quantize_int4"]["linears"]] == [rows, rows]
    if target == "qcompiler":
        assert all(n.inputs[4].const_value.numpy().size == rows for n in model.graph if n.op_type == "Int4MatMul")
