"""The hostile-file findings of issue 18, one regression test each: the group_size overflow that
crashed the library, the fallback's memory bomb, the files the fallback used to accept against
the contract, rank-0 PackedGather indices, and NaN/Inf propagation at every accuracy level.

Each case runs with the native library and on stock onnxruntime with only the function fallback;
both must give the verdict (and output) stated here."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from cases import Case, gather_case, matmul_case
from hostile_corpus import Hostile
from qcompiler import ops
from qcompiler.ops import contract as C
from test_hostile_verdicts import check_corpus

I64_MAX = 2**63 - 1


def _run(model: onnx.ModelProto, feed: dict, library: bool):
    so = ort.SessionOptions()
    so.log_severity_level = 4
    if library:
        ops.register(so)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sess.run(None, feed)[0]
    except Exception as exc:   # noqa: BLE001
        assert type(exc).__module__.startswith("onnxruntime"), repr(exc)
        return str(exc)


def _both(model, feed):
    return _run(model, feed, True), _run(model, feed, False)


def _refused_by_both(model, feed, match_library: str = "") -> None:
    lib, fb = _both(model, feed)
    assert isinstance(lib, str), "the library accepted it"
    assert isinstance(fb, str), "the function fallback accepted it"
    assert match_library in lib, lib


def _set_attrs(model, **attrs):
    node = model.graph.node[0]
    for name, value in attrs.items():
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        if value is not None:
            node.attribute.append(helper.make_attribute(name, value))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.ClearField("shape")
    return model


def _with(case: Case, attrs=None, **inputs) -> Case:
    return Case(case.name, case.op, {**case.inputs, **inputs}, {**case.attrs, **(attrs or {})})


def _model(case: Case, as_inputs=False, **attrs):
    return _set_attrs(case.model(weights_as_inputs=as_inputs), **attrs)


def _feed(case: Case, as_inputs=False):
    return dict(case.inputs) if as_inputs else case.feed()


# ------------------------------------------------------------- 1. group_size overflow (crashes)
@pytest.mark.parametrize("gs", [I64_MAX, I64_MAX - 1, 2**62 + 1])
@pytest.mark.parametrize("op,bits,scales", [("TernaryMatMul", None, "scales"), ("BinaryCodeMatMul", 2, "alphas")])
@pytest.mark.parametrize("as_inputs", [False, True], ids=["initializers", "graph-inputs"])
def test_group_size_overflow_matmul(op, bits, scales, gs, as_inputs):
    """ceil(K / group_size) wrapped to 0, so scales [N, 0] passed and the outlier epilogue wrote
    into a 0-byte buffer (heap overflow); now [N, 0] is refused and [N, 1] is the per-channel op."""
    case = matmul_case(op, 40, 12, 16, 2, bits=bits, n_out=2)
    bad = _with(case, {"group_size": gs}, **{scales: case.inputs[scales][..., :0]})
    _refused_by_both(_model(bad, as_inputs, group_size=gs), _feed(bad, as_inputs), "has shape")
    per_channel = matmul_case(op, 40, 12, 40, 2, bits=bits, n_out=2)
    good = _with(per_channel, {"group_size": gs})
    lib, fb = _both(_model(good, as_inputs, group_size=gs), _feed(good, as_inputs))
    ref = per_channel.reference()
    np.testing.assert_allclose(lib, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fb, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gs", [I64_MAX, I64_MAX - 7])
@pytest.mark.parametrize("as_inputs", [False, True], ids=["initializers", "graph-inputs"])
def test_group_size_overflow_packed_gather(gs, as_inputs):
    """PackedGather read scales [V, 0] through a null pointer (SIGSEGV every time)."""
    case = gather_case(V=7, D=13, gs=8, idx_shape=(2, 3))
    bad = _with(case, {"group_size": gs}, scales=case.inputs["scales"][:, :0])
    _refused_by_both(_model(bad, as_inputs, group_size=gs), _feed(bad, as_inputs), "scales")
    good = _with(gather_case(V=7, D=13, gs=13, idx_shape=(2, 3)), {"group_size": gs})
    lib, fb = _both(_model(good, as_inputs, group_size=gs), _feed(good, as_inputs))
    assert np.array_equal(lib, good.reference()) and np.array_equal(fb, lib)


# ------------------------------------------------------------------- 3. the fallback's memory bomb
def test_huge_K_or_D_refused_without_allocating(tmp_path):
    """K or D = 2^31 on a 3 KB model made the fallback's Range allocate > 14 GB (OOM-killed); now
    both refuse, in a child process under an address-space limit, within the peak-memory bound."""
    hostile = []
    for value in (2**31, 2**31 - 1, 2**40):
        for name, case, attr in [("ternary", matmul_case("TernaryMatMul", 40, 12, 16, 2, n_out=2), "K"),
                                 ("kmeans", matmul_case("CodebookMatMul", 30, 11, 30, 2, bits=3, n_out=1), "K"),
                                 ("ternary-N", matmul_case("TernaryMatMul", 40, 12, 16, 2, n_out=2), "N"),
                                 ("gather", gather_case(V=7, D=13, gs=8, idx_shape=(2, 3)), "D")]:
            model = _model(case, **{attr: value})
            hostile.append(Hostile(f"{name}/{attr}={value}", name, case.op, model.SerializeToString(),
                                   case.feed(), 0))
    results = check_corpus(hostile, tmp_path)
    assert all(r["library"][0] == "refuse" for r in results)


# ----------------------------------------------------- 4. what the fallback accepted against the contract
BASE_T = lambda: matmul_case("TernaryMatMul", 40, 12, 16, 2, n_out=2)   # noqa: E731
BASE_G = lambda: gather_case(V=7, D=13, gs=8, idx_shape=(2, 3))   # noqa: E731


@pytest.mark.parametrize("attrs,match", [
    ({"format_version": 0}, "format_version"), ({"format_version": 2}, "format_version"),
    ({"format_version": -1}, "format_version"), ({"N": None}, "'N'"), ({"N": 13}, "has shape"),
    ({"accuracy_level": 1}, "accuracy_level"), ({"accuracy_level": 2}, "accuracy_level"),
    ({"accuracy_level": 3}, "accuracy_level"), ({"group_size": -16}, "group_size"), ({"K": None}, "'K'"),
])
def test_matmul_attributes_refused_by_both(attrs, match):
    case = BASE_T()
    _refused_by_both(_model(case, **attrs), case.feed(), match)


@pytest.mark.parametrize("name,value,match", [
    ("outlier_idx", np.array([-1, 3], np.int64), "outlier_idx"),
    ("W_packed", None, "packed weights"),          # as int8
    ("scales", None, "float32 or float16"),        # as float64
])
@pytest.mark.parametrize("as_inputs", [False, True], ids=["initializers", "graph-inputs"])
def test_matmul_tensors_refused_by_both(name, value, match, as_inputs):
    case = BASE_T()
    if value is None:
        value = case.inputs[name].astype(np.int8 if name == "W_packed" else np.float64)
    bad = _with(case, **{name: value})
    lib, fb = _both(_model(bad, as_inputs), _feed(bad, as_inputs))
    assert isinstance(lib, str) and isinstance(fb, str), (lib, fb)


@pytest.mark.parametrize("change", ["row_bits=3", "row_bits=7", "row_offsets<0", "format_version=2", "D=None"])
@pytest.mark.parametrize("as_inputs", [False, True], ids=["initializers", "graph-inputs"])
def test_packed_gather_refused_by_both(change, as_inputs):
    case = BASE_G()
    attrs = {}
    if change.startswith("row_bits"):
        rb = case.inputs["row_bits"].copy()
        rb[3] = int(change.split("=")[1])
        case = _with(case, row_bits=rb)
    elif change == "row_offsets<0":
        off = case.inputs["row_offsets"].copy()
        off[0] = -2
        case = _with(case, row_offsets=off)
    else:
        key, value = change.split("=")
        attrs[key] = None if value == "None" else int(value)
    _refused_by_both(_model(case, as_inputs, **attrs), _feed(case, as_inputs))


def test_rank0_indices_give_D():
    case = gather_case(V=7, D=13, gs=8, idx_shape=())
    lib, fb = _both(_model(case), case.feed())
    assert lib.shape == fb.shape == (13,)
    assert np.array_equal(lib, case.reference()) and np.array_equal(fb, lib)


@pytest.mark.slow
def test_compiled_model_with_format_version_2_refused(tiny_bert, tmp_path):
    """A compiled model whose nodes say format_version 2 no longer runs in stock onnxruntime."""
    from qcompiler.pipeline import compile_model

    out = tmp_path / "t.onnx"
    compile_model(tiny_bert, scheme="ternary", output=out, verify=False)
    model = onnx.load(str(out))
    n = 0
    for node in model.graph.node:
        if node.domain == C.DOMAIN:
            for a in node.attribute:
                if a.name == "format_version":
                    a.i = 2
                    n += 1
    assert n
    feed = {i.name: np.ones([d.dim_value or 2 for d in i.type.tensor_type.shape.dim], np.int64)
            for i in model.graph.input}
    lib, fb = _both(model, feed)
    assert isinstance(lib, str) and "format_version" in lib
    assert isinstance(fb, str)


# ------------------------------------------------------------------------ 5. NaN / Inf propagation
def _classes(y):
    return np.isnan(y), np.isposinf(y), np.isneginf(y)


def _same_classes(y, ref):
    for got, want in zip(_classes(y), _classes(ref)):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("level", [0, 4])
def test_codebook_nan_centroids(level):
    """Level 4 turned NaN centroids into finite outputs; the reference and the fallback give NaN."""
    case = matmul_case("CodebookMatMul", 64, 8, 64, 2, bits=4, level=level)
    cb = case.inputs["codebook"].copy()
    cb[2, :] = np.nan
    cb[5, 3] = np.inf
    bad = _with(case, codebook=cb)
    ref = bad.reference()
    assert np.isnan(ref).any()
    lib, fb = _both(_model(bad), bad.feed())
    _same_classes(lib, ref)
    _same_classes(fb, ref)
    fin = np.isfinite(ref)
    np.testing.assert_allclose(lib[fin], ref[fin], rtol=1e-5, atol=1e-5)   # the exact path: reference order


OPS = [("TernaryMatMul", None), ("BinaryCodeMatMul", 2), ("CodebookMatMul", 3), ("CodebookMatMul", 4)]


@pytest.mark.parametrize("level", [0, 4])
@pytest.mark.parametrize("op,bits", OPS)
@pytest.mark.parametrize("where", ["A-nan", "A-inf", "A-both-inf", "scales-inf", "scales-nan", "outlier-inf"])
def test_nan_inf_propagate_as_the_reference(op, bits, level, where):
    case = matmul_case(op, 64, 40, 32, 3, bits=bits, n_out=2, level=level, seed=3)
    inputs = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in case.inputs.items()}
    A = inputs["A"]
    scales = "scales" if op == "TernaryMatMul" else "alphas" if op == "BinaryCodeMatMul" else "codebook"
    if where == "A-nan":
        A[1, 5] = np.nan
    elif where == "A-inf":
        A[0, 7] = np.inf
        A[2, 9] = -np.inf
    elif where == "A-both-inf":
        A[1, 3], A[1, 40] = np.inf, -np.inf
    elif where == "scales-inf":
        inputs[scales].reshape(-1)[7] = np.inf
    elif where == "scales-nan":
        inputs[scales].reshape(-1)[3] = np.nan
    else:
        A[2, inputs["outlier_idx"][0]] = np.inf
    bad = Case(case.name, case.op, inputs, case.attrs)
    ref = bad.reference()
    assert not np.isfinite(ref).all()
    lib, fb = _both(_model(bad), bad.feed())
    _same_classes(lib, ref)
    _same_classes(fb, ref)
    fin = np.isfinite(ref)
    np.testing.assert_allclose(lib[fin], ref[fin], rtol=1e-5, atol=1e-4)
