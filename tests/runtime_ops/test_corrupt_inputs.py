"""Random corruption of every native op's packed tensors and attributes: an onnxruntime error or a
normal result, never a crash or an out-of-bounds access (`make asan` runs this file too).

test_glue.py checks named, hand-made faults with their messages; here hypothesis (derandomized,
bounded, no example database) draws the faults: another shape, another dtype, random bytes of
the right shape (codes, offsets, row bit widths, indices, NaN scales), an attribute set to any
integer or removed, and a mismatched activation. Weights go in as initializers (checked when the
session is made) and as graph inputs (checked on every run)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from qcompiler import ops
from cases import gather_case, matmul_case
from qcompiler.ops import contract as C

CORRUPT = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BASES = {
    "ternary": lambda: matmul_case("TernaryMatMul", 40, 12, 16, 2, n_out=2),
    "ternary_l4": lambda: matmul_case("TernaryMatMul", 64, 9, 32, 3, n_out=1, level=4),
    "bcq2": lambda: matmul_case("BinaryCodeMatMul", 48, 10, 16, 2, bits=2, n_out=2),
    "bcq3_l4": lambda: matmul_case("BinaryCodeMatMul", 33, 7, 33, 1, bits=3, level=4),
    "kmeans3": lambda: matmul_case("CodebookMatMul", 30, 11, 30, 2, bits=3, n_out=1),
    "kmeans4_l4": lambda: matmul_case("CodebookMatMul", 64, 8, 64, 2, bits=4, level=4),
    "int4": lambda: matmul_case("Int4MatMul", 40, 12, 16, 2, n_out=2),
    "int4_l4": lambda: matmul_case("Int4MatMul", 64, 9, 32, 3, n_out=1, level=4),
    "gather": lambda: gather_case(V=7, D=13, gs=8, idx_shape=(2, 3)),
}
DTYPES = [np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]


def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 4
    ops.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _dynamic_name(case) -> str:
    return "indices" if case.op == "PackedGather" else "A"


def _outcome(model, feed) -> None:
    """Run; an onnxruntime exception is fine, anything else (a crash kills the process) is not."""
    try:
        y = _session(model).run(None, feed)[0]
    except Exception as exc:   # noqa: BLE001 - only onnxruntime's own errors are acceptable
        assert type(exc).__module__.startswith("onnxruntime"), repr(exc)
        return
    assert isinstance(y, np.ndarray)


def _random_array(data, shape, dtype) -> np.ndarray:
    size = int(np.prod(shape)) if shape else 1
    raw = data.draw(st.binary(min_size=size * np.dtype(dtype).itemsize, max_size=size * np.dtype(dtype).itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


@CORRUPT
@given(base=st.sampled_from(sorted(BASES)), kind=st.sampled_from(["shape", "dtype", "content"]),
       as_inputs=st.booleans(), data=st.data())
def test_corrupt_weight(base, kind, as_inputs, data):
    case = BASES[base]()
    names = [n for n in case.inputs if n != _dynamic_name(case)]
    name = data.draw(st.sampled_from(names))
    old = np.asarray(case.inputs[name])
    if kind == "shape":
        shape = tuple(data.draw(st.lists(st.integers(0, 24), min_size=0, max_size=3)))
        new = _random_array(data, shape, old.dtype)
    elif kind == "dtype":
        dtype = data.draw(st.sampled_from([d for d in DTYPES if np.dtype(d) != old.dtype]))
        new = _random_array(data, old.shape, dtype)
    else:
        new = _random_array(data, old.shape, old.dtype)
    inputs = dict(case.inputs)
    inputs[name] = new
    bad = type(case)(case.name, case.op, inputs, dict(case.attrs))
    if as_inputs:
        model = bad.model(with_function=False, weights_as_inputs=True)
        for vi in model.graph.input:   # any shape: the kernel, not the type checker, must refuse
            vi.type.tensor_type.ClearField("shape")
        feed = {k: v for k, v in inputs.items()}
    else:
        model = bad.model(with_function=False)
        feed = bad.feed()
    _outcome(model, feed)


@CORRUPT
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_wrong_attributes(base, data):
    case = BASES[base]()
    model = case.model(with_function=False)
    node = model.graph.node[0]
    attr = data.draw(st.sampled_from(sorted({a.name for a in node.attribute} | {"bits", "K", "N", "D"})))
    value = data.draw(st.one_of(st.none(), st.integers(-3, 70), st.integers(-(2**63), 2**63 - 1)))
    for a in list(node.attribute):
        if a.name == attr:
            node.attribute.remove(a)
    if value is not None:
        node.attribute.append(helper.make_attribute(attr, value))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.ClearField("shape")
    _outcome(model, case.feed())


@CORRUPT
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_mismatched_activation(base, data):
    """A / indices of any rank, size and dtype fed to a well-formed op."""
    case = BASES[base]()
    model = case.model(with_function=False)
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.ClearField("shape")
    name = _dynamic_name(case)
    # at most 8192 elements: the faults are in the shape, not in the size
    shape = tuple(data.draw(st.lists(st.integers(0, 70), min_size=0, max_size=4).filter(
        lambda dims: int(np.prod(dims)) <= 8192)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if name == "indices":
        x = rng.integers(-(2**40), 2**40, shape, dtype=np.int64)
        x.flat[::2] = rng.integers(-10, 10, (x.size + 1) // 2)   # half of them in range
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    _outcome(model, {name: x})


@pytest.mark.parametrize("base", sorted(BASES))
def test_still_correct_after_corruption(base):
    """The library keeps no state a bad model could damage: the clean case still matches its reference."""
    case = BASES[base]()
    y = _session(case.model(with_function=False)).run(None, case.feed())[0]
    ref = case.reference()
    tol = 0.05 * float(np.abs(ref).max() + 1e-6) if case.attrs.get("accuracy_level") else 1e-3 * float(np.abs(ref).max() + 1)
    np.testing.assert_allclose(y, ref, atol=tol)   # level 4 quantizes activations to int8: a loose bound


def test_contract_lists_every_op():
    """A new op must be added to BASES above, or it escapes these tests."""
    covered = {BASES[b]().op for b in BASES}
    assert covered == set(C.OPS)
