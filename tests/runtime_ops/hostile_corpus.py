"""The hostile-model corpus: single-op models of every ai.qcompiler op with one attribute or tensor
mutated (deterministic), for the library-vs-fallback verdict test and as fuzz seeds.

Each case is a model (the function fallback attached, so stock onnxruntime runs it without the
library and onnxruntime takes the native kernel when the library is registered) and its feed."""

from __future__ import annotations

import dataclasses

import numpy as np
from onnx import helper

from cases import Case, gather_case, matmul_case
from qcompiler.ops import contract as C

I64_MAX, I64_MIN = 2**63 - 1, -(2**63)

BASES = {
    "ternary": lambda: matmul_case("TernaryMatMul", 40, 12, 16, 2, n_out=2),
    "ternary_l4": lambda: matmul_case("TernaryMatMul", 64, 9, 32, 3, n_out=1, level=4),
    "bcq2": lambda: matmul_case("BinaryCodeMatMul", 48, 10, 16, 2, bits=2, n_out=2),
    "bcq3_l4": lambda: matmul_case("BinaryCodeMatMul", 33, 7, 33, 1, bits=3, level=4),
    "kmeans3": lambda: matmul_case("CodebookMatMul", 30, 11, 30, 2, bits=3, n_out=1),
    "kmeans4_l4": lambda: matmul_case("CodebookMatMul", 64, 8, 64, 2, bits=4, level=4),
    "gather": lambda: gather_case(V=7, D=13, gs=8, idx_shape=(2, 3)),
}
ATTR_VALUES = [None, 0, -1, 1, 2, 3, 4, 5, 7, 8, 2**31, 2**31 + 1, 2**62, I64_MAX, I64_MIN]
DTYPES = [np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64]


@dataclasses.dataclass
class Hostile:
    name: str
    base: str
    op: str
    model: bytes
    feed: dict
    level: int


def _dynamic(op: str) -> str:
    return "indices" if op == "PackedGather" else "A"


def _model(case: Case, *, as_inputs: bool, attrs: dict | None = None):
    model = case.model(with_function=True, weights_as_inputs=as_inputs)
    if attrs is not None:
        node = model.graph.node[0]
        for name, value in attrs.items():
            for a in list(node.attribute):
                if a.name == name:
                    node.attribute.remove(a)
            if value is not None:
                node.attribute.append(helper.make_attribute(name, value))
    for vi in list(model.graph.input) + list(model.graph.output):   # any shape: the ops must refuse
        vi.type.tensor_type.ClearField("shape")
    return model


def _feed(case: Case, as_inputs: bool) -> dict:
    if as_inputs:
        return {k: v for k, v in case.inputs.items() if v is not None}
    return case.feed()


def _with(case: Case, name: str, value) -> Case:
    inputs = dict(case.inputs)
    inputs[name] = value
    return Case(case.name, case.op, inputs, dict(case.attrs))


def _tensor_mutations(case: Case):
    """(label, new array) for every input of the case."""
    rng = np.random.default_rng(7)
    for name, old in case.inputs.items():
        old = np.asarray(old)
        for dt in DTYPES:
            if np.dtype(dt) != old.dtype:
                yield f"{name}:dtype={np.dtype(dt).name}", old.astype(dt)
        if old.ndim:
            yield f"{name}:drop_last_dim", old.reshape(*old.shape[:-2], -1) if old.ndim > 1 else old[:0]
            yield f"{name}:scalar", old.reshape(-1)[:1].reshape(()) if old.size else np.zeros((), old.dtype)
            for axis in range(old.ndim):
                shrunk = np.take(old, range(max(old.shape[axis] - 1, 0)), axis=axis)
                yield f"{name}:dim{axis}-1", shrunk
                pad = [(0, 0)] * old.ndim
                pad[axis] = (0, 1)
                yield f"{name}:dim{axis}+1", np.pad(old, pad)
        yield f"{name}:leading_1", old[None]
        if old.size:
            yield f"{name}:random_bytes", np.frombuffer(rng.bytes(old.nbytes), old.dtype).reshape(old.shape).copy()
        if old.dtype.kind == "f" and old.size:
            for v in (np.nan, np.inf, -np.inf):
                x = old.copy()
                x.flat[old.size // 2] = v
                yield f"{name}:one_{v}", x
    # the values the contract names
    if case.op == "PackedGather":
        V = case.inputs["row_bits"].size
        for v in (0, 1, 3, 7, 16, 255):
            rb = case.inputs["row_bits"].copy()
            rb[V // 2] = v
            yield f"row_bits:one={v}", rb
        off = case.inputs["row_offsets"]
        for label, change in [("first=-1", (0, -1)), ("first=1", (0, 1)), ("mid=-5", (V // 2, -5)),
                              ("mid=huge", (V // 2, I64_MAX)), ("last=-1", (V, -1)), ("last+1", (V, off[-1] + 1)),
                              ("min", (V // 2, I64_MIN))]:
            o = off.copy()
            o[change[0]] = change[1]
            yield f"row_offsets:{label}", o
        yield "row_offsets:reversed", off[::-1].copy()
        yield "row_bits:empty", case.inputs["row_bits"][:0]
        for v in (V, -V - 1, -V, V - 1, I64_MAX, I64_MIN):
            idx = case.inputs["indices"].copy()
            idx.flat[0] = v
            yield f"indices:one={v}", idx
        yield "indices:rank0", np.array(1, np.int64)
        yield "indices:empty", np.zeros((0,), np.int64)
    else:
        K = case.attrs["K"]
        for v in (-1, K, K + 1, I64_MAX, I64_MIN):
            if case.inputs["outlier_idx"].size:
                idx = case.inputs["outlier_idx"].copy()
                idx[0] = v
                yield f"outlier_idx:one={v}", idx
        if case.inputs["outlier_idx"].size:
            idx = case.inputs["outlier_idx"].copy()
            idx[-1] = idx[0]
            yield "outlier_idx:duplicate", idx
        yield "A:rank1", case.inputs["A"][0]
        yield "A:empty_rows", case.inputs["A"][:0]


def hostile_cases() -> list[Hostile]:
    out = []
    for base_name in sorted(BASES):
        case = BASES[base_name]()
        level = int(case.attrs.get("accuracy_level", 0))
        attrs = list(C.OPS[case.op].attributes) + (["bits"] if case.op == "TernaryMatMul" else [])
        for attr in attrs:
            orig = case.attrs.get(attr, C.FORMAT_VERSION if attr == "format_version" else None)
            values = list(ATTR_VALUES)
            if isinstance(orig, int):
                values += [orig - 1, orig + 1, 2 * orig]
            for value in dict.fromkeys(values):
                if value == orig:
                    continue
                model = _model(case, as_inputs=False, attrs={attr: value})
                lvl = value if attr == "accuracy_level" and value in (0, 4) else level
                out.append(Hostile(f"{base_name}/{attr}={value}", base_name, case.op, model.SerializeToString(),
                                   case.feed(), lvl))
        dyn = _dynamic(case.op)
        for label, value in _tensor_mutations(case):
            name = label.split(":")[0]
            bad = _with(case, name, value)
            modes = [False] if name == dyn else [False, True]
            for as_inputs in modes:
                model = _model(bad, as_inputs=as_inputs)
                out.append(Hostile(f"{base_name}/{label}{'/inputs' if as_inputs else ''}", base_name, case.op,
                                   model.SerializeToString(), _feed(bad, as_inputs), level))
    return out


def _node_inputs(case: Case, inputs: list[str]) -> Hostile | None:
    """The case's model with its node's input list replaced ('' = omitted), unused initializers dropped."""
    model = _model(case, as_inputs=False)
    node = model.graph.node[0]
    del node.input[:]
    node.input.extend(inputs)
    used = set(inputs)
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def optional_input_cases() -> list[Hostile]:
    """Optional inputs omitted (a shorter input list) or given as empty names, alone or with their
    partner, and required inputs given as empty names: the library, the fallback and the spec must
    agree (issue 18's missing-optional-inputs check)."""
    out = []
    for base_name in sorted(BASES):
        case = BASES[base_name]()
        level = int(case.attrs.get("accuracy_level", 0))
        names = list(C.OPS[case.op].inputs)
        if case.op == "PackedGather":
            variants = {f"no_{n}": [("" if m == n else m) for m in names] for n in names}
            variants["short"] = names[:4]
        else:
            a, w, s, b, i, o = names
            variants = {
                "no_bias_mid": [a, w, s, "", i, o], "no_outliers": [a, w, s, b], "only_required": [a, w, s],
                "empty_tail": [a, w, s, "", "", ""], "bias_empty_tail": [a, w, s, b, "", ""],
                "idx_without_w": [a, w, s, b, i], "w_without_idx": [a, w, s, b, "", o],
                "no_scales": [a, w, "", b, i, o], "no_packed": [a, "", s, b, i, o], "no_A": ["", w, s, b, i, o],
                "only_A_W": [a, w],
            }
        for label, inputs in variants.items():
            model = _node_inputs(case, inputs)
            feed = {k: v for k, v in case.feed().items() if k in inputs}
            out.append(Hostile(f"{base_name}/inputs:{label}", base_name, case.op, model.SerializeToString(), feed, level))
    return out
