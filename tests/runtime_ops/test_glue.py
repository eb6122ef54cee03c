"""Robustness of the onnxruntime glue: every malformed model or input gives an onnxruntime error,
never a crash (also run under AddressSanitizer/UBSan by `make asan`)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from qcompiler import ops
from cases import gather_case, matmul_case


def _session(model):
    so = ort.SessionOptions()
    ops.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(model, feed):
    return _session(model).run(None, feed)[0]


def _base(op="TernaryMatMul", bits=None, **kw):
    return matmul_case(op, 40, 12, 16, 2, bits=bits, n_out=2, **kw)


def _with(case, **changes):
    inputs = dict(case.inputs)
    inputs.update(changes)
    case = type(case)(case.name, case.op, inputs, dict(case.attrs))
    return case


def _set_attr(model, name, value):
    node = model.graph.node[0]
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))
    return model


def _dynamic_inputs(model):
    for vi in model.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            d.dim_param = "d"
    return model


def _expect_error(fn, match):
    with pytest.raises(Exception) as info:
        fn()
    assert type(info.value).__module__.startswith("onnxruntime"), type(info.value)
    assert match in str(info.value), str(info.value)


BAD_WEIGHTS = [
    ("truncated packed", "TernaryMatMul", None, {"W_packed": np.zeros((12, 9), np.uint8)}, "W_packed"),
    ("packed rank", "TernaryMatMul", None, {"W_packed": np.zeros((120,), np.uint8)}, "W_packed"),
    ("scales length", "TernaryMatMul", None, {"scales": np.ones((12, 4), np.float16)}, "scales"),
    ("scales dtype", "TernaryMatMul", None, {"scales": np.ones((12, 3), np.int32)}, "float32 or float16"),
    ("bias length", "TernaryMatMul", None, {"bias": np.zeros(11, np.float32)}, "bias"),
    ("outlier index", "TernaryMatMul", None, {"outlier_idx": np.array([1, 40], np.int64)}, "outlier_idx"),
    ("negative outlier", "TernaryMatMul", None, {"outlier_idx": np.array([-1, 2], np.int64)}, "outlier_idx"),
    ("outlier_w shape", "TernaryMatMul", None, {"outlier_w": np.zeros((3, 12), np.float16)}, "outlier_w"),
    ("binary planes", "BinaryCodeMatMul", 2, {"W_packed": np.zeros((3, 12, 5), np.uint8)}, "W_packed"),
    ("alphas", "BinaryCodeMatMul", 2, {"alphas": np.ones((2, 12, 2), np.float32)}, "alphas"),
    ("codebook size", "CodebookMatMul", 3, {"codebook": np.ones((12, 16), np.float32)}, "codebook"),
    ("indices bytes", "CodebookMatMul", 3, {"indices": np.zeros((12, 14), np.uint8)}, "indices"),
]


@pytest.mark.parametrize("name,op,bits,change,match", BAD_WEIGHTS, ids=[b[0] for b in BAD_WEIGHTS])
@pytest.mark.parametrize("constant", [True, False], ids=["initializer", "graph-input"])
def test_bad_weights(name, op, bits, change, match, constant):
    case = _with(_base(op, bits), **change)
    if constant:
        _expect_error(lambda: _session(case.model()), match)
    else:
        model = _dynamic_inputs(case.model(weights_as_inputs=True))
        _expect_error(lambda: _run(model, case.inputs), match)


@pytest.mark.parametrize("attr,value,match", [
    ("format_version", 2, "format_version"),
    ("K", None, "K"),
    ("group_size", 0, "group_size"),
    ("accuracy_level", 9, "accuracy_level"),
])
def test_bad_attributes(attr, value, match):
    model = _set_attr(_base().model(with_function=False), attr, value)
    _expect_error(lambda: _session(model), match)


@pytest.mark.parametrize("bits", [0, 5])
def test_bad_bits(bits):
    model = _set_attr(_base("BinaryCodeMatMul", 2).model(with_function=False), "bits", bits)
    _expect_error(lambda: _session(model), "bits")


def test_K_mismatch_and_scalar_A():
    case = _base()
    model = case.model()
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.ClearField("shape")  # any rank
    _expect_error(lambda: _run(model, {"A": np.zeros((2, 41), np.float32)}), "K=40")
    _expect_error(lambda: _run(model, {"A": np.zeros((), np.float32)}), "rank")
    assert _run(model, {"A": np.zeros((0, 40), np.float32)}).shape == (0, 12)
    assert _run(model, {"A": np.ones((40,), np.float32)}).shape == (12,)


def test_packed_gather_errors():
    case = gather_case()
    V = case.inputs["row_bits"].size
    model = case.model()
    sess = _session(model)
    _expect_error(lambda: sess.run(None, {"indices": np.full((3, 4), V, np.int64)}), "out of range")
    _expect_error(lambda: sess.run(None, {"indices": np.full((3, 4), -V - 1, np.int64)}), "out of range")
    bad = {
        "row_bits": (np.full(V, 3, np.uint8), "row_bits"),
        "row_offsets": (case.inputs["row_offsets"][::-1].copy(), "row_offsets"),
        "table": (case.inputs["table"][:-3].copy(), "table"),
        "scales": (np.ones((V, 1), np.float32), "scales"),
    }
    for name, (value, match) in bad.items():
        c = _with(case, **{name: value})
        _expect_error(lambda: _session(c.model()), match)
        dyn = _dynamic_inputs(c.model(weights_as_inputs=True))
        _expect_error(lambda: _run(dyn, c.inputs), match)
    model = _set_attr(case.model(with_function=False), "format_version", 3)
    _expect_error(lambda: _session(model), "format_version")


def test_still_fine_after_errors():
    case = _base()
    y = _run(case.model(), case.feed())
    assert np.isfinite(y).all() and y.shape == (2, 12)
