"""ONNX FunctionProto bodies (standard ops only) for the ai.qcompiler ops, plus node/model builders.

Every model that uses an op carries its function, so stock onnxruntime and onnx.reference run it
without the native library; with the library registered onnxruntime runs the native kernel.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .formats import DOMAIN, FORMAT_VERSION, MATMUL_OPS, OPS, OPSET_VERSION, STANDARD_OPSET, ContractError

__all__ = ["make_function", "make_node", "node_attributes", "make_model", "attach_functions", "opset_imports"]

_U32 = TensorProto.UINT32
_I64 = TensorProto.INT64
_F32 = TensorProto.FLOAT


_INT64_MAX = 2**63 - 1
_MAX_DIM = 2**31  # K, N, D beyond this are refused, as by the native library
# Defaults of the function's attributes: a missing K / N / D / bits reads as 0 and fails the checks
# (as the library refuses it); a missing group_size reads as one group per row (the library's
# default group_size = K or D gives the same groups).
_ATTR_DEFAULTS = {"K": 0, "N": 0, "D": 0, "bits": 0, "group_size": _INT64_MAX, "format_version": FORMAT_VERSION,
                  "accuracy_level": 0}


class _Body:
    """Tiny helper that names intermediate values, collects nodes and the body's contract checks."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0
        self.checks: list[str] = []
        self._delta: str | None = None

    def __call__(self, op: str, *inputs: str, **attrs) -> str:
        self.count += 1
        out = f"_{op.lower()}{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def const(self, value, dtype=np.int64) -> str:
        return self("Constant", value=numpy_helper.from_array(np.array(value, dtype=dtype)))

    def attr_int(self, name: str) -> str:
        """Scalar int64 from a node attribute (attribute reference)."""
        self.count += 1
        out = f"_attr_{name}{self.count}"
        node = helper.make_node("Constant", [], [out])
        ref = onnx.AttributeProto()
        ref.name = "value_int"
        ref.ref_attr_name = name
        ref.type = onnx.AttributeProto.INT
        node.attribute.append(ref)
        self.nodes.append(node)
        return out

    # ---- the contract checks (mirror formats.validate and the native library's validate.cc)
    def check(self, cond: str) -> None:
        """A scalar bool that must hold; all of them gate the body's Range ops (see guard)."""
        self.checks.append(cond)

    def all_true(self, cond: str) -> str:
        """Scalar bool: every element of cond holds (true for an empty cond)."""
        bad = self("ReduceSum", self("Cast", self("Not", cond), to=_I64), keepdims=0)
        return self("Equal", bad, self.const(0))

    def in_range(self, x: str, lo: int, hi: int) -> str:
        return self("And", self("GreaterOrEqual", x, self.const(lo)), self("LessOrEqual", x, self.const(hi)))

    def last_dim(self, x: str) -> str:
        return self("Squeeze", self("Shape", x, start=-1))

    def check_shape(self, x: str, dims: list[str]) -> None:
        """x has exactly the shape [dims] (scalar int64 values); a rank mismatch fails too."""
        self.check(self("Equal", self("Size", self("Shape", x)), self.const(len(dims))))
        want = self("Concat", *[self("Unsqueeze", d, self.const([0])) for d in dims], axis=0)
        self.check(self.all_true(self("Equal", self("Shape", x), want)))

    def first_element(self, x: str) -> str:
        """At most one element of x: a cheap operand for the type checks."""
        return self("Slice", self("Reshape", x, self.const([-1])), self.const([0]), self.const([1]))

    def check_dtype(self, x: str, dtype) -> None:
        """Type inference fails at load unless x has exactly this element type (Where's X and Y)."""
        self("Where", self.const(True, np.bool_), self.first_element(x), self.const(0, dtype))

    def check_float32_or_16(self, x: str) -> None:
        """Round takes float16/float/double and QuantizeLinear float/float16/bfloat16/int32: both
        accept x only when it is float32 or float16 (type inference, at load)."""
        x1 = self.first_element(x)
        self("Round", x1)
        self("QuantizeLinear", x1, self("CastLike", self.const(1.0, np.float32), x1))

    def guard(self) -> str:
        """The delta of every Range in the body: 1 when all checks hold, else 0, and Range refuses a
        zero delta before allocating anything (stock onnxruntime and onnx.reference alike)."""
        if self._delta is None:
            ok = self.checks[0]
            for c in self.checks[1:]:
                ok = self("And", ok, c)
            self._delta = self("Cast", ok, to=_I64)
        return self._delta


def _unpack_codes(b: _Body, packed: str, k: str, bits: str | int, straddle: bool) -> str:
    """Codes uint32 [..., len(k)] of elements k from a uint8 [..., bytes] bitstream (the bitstream rule)."""
    one, eight = b.const(1), b.const(8)
    bits_t = bits if isinstance(bits, str) else b.const(bits)
    bitpos = b("Mul", k, bits_t)
    byte = b("Div", bitpos, eight)
    shift = b("Cast", b("Mod", bitpos, eight), to=_U32)
    p = b("Cast", packed, to=_U32)
    x = b("Gather", p, byte, axis=-1)
    if straddle:
        last = b("Sub", b("Shape", p, start=-1), one)
        hi_idx = b("Min", b("Add", byte, one), b("Squeeze", last))
        hi = b("Gather", p, hi_idx, axis=-1)
        x = b("BitwiseOr", x, b("BitShift", hi, b.const(8, np.uint32), direction="LEFT"))
    mask = b("Cast", b("Sub", b("Pow", b.const(2), bits_t), one), to=_U32)
    return b("BitwiseAnd", b("BitShift", x, shift, direction="RIGHT"), mask)


def _matmul_tail(b: _Body, A: str, w_t: str, bias: str, idx: str, wout: str, k: str) -> str:
    # Packed rows of outlier channels are ignored: keep[k] = 0 where k is in outlier_idx.
    hits = b("ReduceSum", b("Cast", b("Equal", b("Unsqueeze", k, b.const([-1])), idx), to=_F32), b.const([1]),
             keepdims=0)
    keep = b("Cast", b("Less", hits, b.const(0.5, np.float32)), to=_F32)
    y0 = b("MatMul", A, b("Transpose", b("Mul", w_t, keep), perm=[1, 0]))
    y1 = b("Add", y0, b("MatMul", b("Gather", A, idx, axis=-1), b("Cast", wout, to=_F32)))
    return b("Add", y1, bias)


def _matmul_checks(b: _Body, op_type: str, A: str, packed: str, scales: str, bias: str, idx: str,
                   wout: str) -> tuple[str, str | None]:
    """The MatMul ops' contract as checks; returns (K taken from A's shape, bits or None)."""
    K, N, gs = b.attr_int("K"), b.attr_int("N"), b.attr_int("group_size")
    b.check(b("Equal", b.attr_int("format_version"), b.const(FORMAT_VERSION)))
    level = b.attr_int("accuracy_level")
    b.check(b("Or", b("Equal", level, b.const(0)), b("Equal", level, b.const(4))))
    k_a = b.last_dim(A)
    b.check(b("Equal", K, k_a))
    b.check(b.in_range(K, 1, _MAX_DIM))
    b.check(b.in_range(N, 1, _MAX_DIM))
    b.check(b("GreaterOrEqual", gs, b.const(1)))
    one = b.const(1)
    G = b("Add", b("Div", b("Sub", K, one), b("Max", gs, one)), one)  # ceil(K / gs) without overflow
    bits = None
    if op_type in ("TernaryMatMul", "Int4MatMul"):
        per_byte = 4 if op_type == "TernaryMatMul" else 2
        rb = b("Div", b("Add", K, b.const(per_byte - 1)), b.const(per_byte))
        b.check_shape(packed, [N, rb])
        b.check_shape(scales, [N, G])
        if op_type == "Int4MatMul":  # zero_points [N, ceil(G/2)] uint8
            zp = OPS[op_type].inputs[6]
            b.check_dtype(zp, np.uint8)
            b.check_shape(zp, [N, b("Div", b("Add", G, one), b.const(2))])
    else:
        bits = b.attr_int("bits")
        lo = 1 if op_type == "BinaryCodeMatMul" else 2
        b.check(b.in_range(bits, lo, 4))
        if op_type == "BinaryCodeMatMul":
            rb = b("Div", b("Add", K, b.const(7)), b.const(8))
            b.check_shape(packed, [bits, N, rb])
            b.check_shape(scales, [bits, N, G])
        else:
            rb = b("Div", b("Add", b("Mul", K, bits), b.const(7)), b.const(8))
            entries = b("Gather", b.const([1, 2, 4, 8, 16]), b("Clip", bits, b.const(0), b.const(4)))
            b.check_shape(packed, [N, rb])
            b.check_shape(scales, [N, entries])
    b.check_dtype(packed, np.uint8)
    b.check_float32_or_16(scales)
    b.check_shape(bias, [N])
    b.check(b("Equal", b("Size", b("Shape", idx)), one))  # outlier_idx 1-D, each 0 <= idx < K
    b.check(b.all_true(b("And", b("GreaterOrEqual", idx, b.const(0)), b("Less", idx, K))))
    b.check_shape(wout, [b("Size", idx), N])
    b.check_dtype(wout, np.float16)
    return k_a, bits


def _packed_gather_body(b: _Body, table: str, offsets: str, row_bits: str, scales: str, indices: str) -> str:
    D, gs = b.attr_int("D"), b.attr_int("group_size")
    one, eight = b.const(1), b.const(8)
    b.check(b("Equal", b.attr_int("format_version"), b.const(FORMAT_VERSION)))
    b.check(b.in_range(D, 1, _MAX_DIM))
    b.check(b("GreaterOrEqual", gs, one))
    V = b("Size", row_bits)
    total = b("Size", table)
    b.check(b("GreaterOrEqual", V, one))
    b.check(b("Equal", b("Size", b("Shape", table)), one))
    b.check(b("Equal", b("Size", b("Shape", row_bits)), one))
    b.check_shape(offsets, [b("Add", V, one)])
    G = b("Add", b("Div", b("Sub", D, one), b("Max", gs, one)), one)
    b.check_shape(scales, [V, G])
    rb = b("Cast", row_bits, to=_I64)
    b.check(b.all_true(b("Or", b("Or", b("Equal", rb, b.const(2)), b("Equal", rb, b.const(4))),
                         b("Equal", rb, b.const(8)))))
    b.check(b.all_true(b("GreaterOrEqual", offsets, b.const(0))))
    b.check(b.all_true(b("LessOrEqual", offsets, total)))
    head = b("Slice", offsets, b.const([0]), b.const([-1]))  # row starts [V]
    tail = b("Slice", offsets, b.const([1]), b.const([_INT64_MAX]))
    b.check(b.all_true(b("GreaterOrEqual", tail, head)))  # non-decreasing
    row_len = b("Div", b("Add", b("Mul", D, rb), b.const(7)), eight)  # each row fits in the table
    b.check(b.all_true(b("LessOrEqual", row_len, b("Sub", total, head))))
    b.check_dtype(table, np.uint8)
    b.check_dtype(row_bits, np.uint8)
    b.check_dtype(offsets, np.int64)
    b.check_float32_or_16(scales)
    # Gather on row_bits refuses indices outside [-V, V) and of another type than int32/int64.
    bits_i = b("Unsqueeze", b("Cast", b("Gather", row_bits, indices), to=_I64), b.const([-1]))  # [..., 1]
    i = b("Cast", indices, to=_I64)
    i = b("Where", b("Less", i, b.const(0)), b("Add", i, V), i)
    start = b("Unsqueeze", b("Gather", offsets, i), b.const([-1]))  # [..., 1]
    d = b("Range", b.const(0), D, b.guard())  # [D], D <= 4 * table bytes once the checks hold
    bitpos = b("Mul", d, bits_i)  # [..., D]
    byte = b("Add", start, b("Div", bitpos, eight))
    shift = b("Cast", b("Mod", bitpos, eight), to=_U32)
    raw = b("Gather", b("Cast", table, to=_U32), byte)
    full = b("Pow", b.const(2), bits_i)
    mask = b("Cast", b("Sub", full, one), to=_U32)
    u = b("Cast", b("BitwiseAnd", b("BitShift", raw, shift, direction="RIGHT"), mask), to=_I64)
    half = b("Div", full, b.const(2))
    v = b("Sub", u, b("Mul", b("Cast", b("GreaterOrEqual", u, half), to=_I64), full))
    grp = b("Div", d, b("Max", gs, one))
    srow = b("Gather", b("Cast", scales, to=_F32), i)  # [..., G]
    return b("Mul", b("Cast", v, to=_F32), b("Gather", srow, grp, axis=-1))


def make_function(op_type: str) -> onnx.FunctionProto:
    """The FunctionProto (domain ai.qcompiler, same name) that defines op_type with standard ops (a copy)."""
    fn = onnx.FunctionProto()
    fn.CopyFrom(_function(op_type))
    return fn


@functools.lru_cache(maxsize=None)
def _function(op_type: str) -> onnx.FunctionProto:
    """The FunctionProto (domain ai.qcompiler, same name) that defines op_type with standard ops.

    The body first checks the contract (attributes, shapes, element types, row offsets and bit
    widths, outlier indices) and refuses a model that breaks it, as the native library does: type
    checks fail at load, the others make every Range in the body refuse before it allocates; the
    sizes it then allocates derive from the input tensors (K is A's last dimension, D is bounded by
    the table's size)."""
    if op_type not in OPS:
        raise ContractError(f"unknown op {op_type}")
    fmt = OPS[op_type]
    b = _Body()
    if op_type in MATMUL_OPS:
        A, packed, scales, bias, idx, wout = fmt.inputs[:6]
        k_a, bits = _matmul_checks(b, op_type, A, packed, scales, bias, idx, wout)
        k_range = b("Range", b.const(0), k_a, b.guard())
        grp = b("Div", k_range, b("Max", b.attr_int("group_size"), b.const(1)))
        s = b("Cast", scales, to=_F32)
        if op_type == "TernaryMatMul":
            codes = _unpack_codes(b, packed, k_range, 2, straddle=False)  # [N, K]
            vals = b("Gather", b.const([0.0, 1.0, 0.0, -1.0], np.float32), b("Cast", codes, to=_I64))
            w_t = b("Mul", vals, b("Gather", s, grp, axis=1))
        elif op_type == "BinaryCodeMatMul":
            codes = _unpack_codes(b, packed, k_range, 1, straddle=False)  # [bits, N, K]
            signs = b("Sub", b("Mul", b("Cast", codes, to=_F32), b.const(2.0, np.float32)), b.const(1.0, np.float32))
            w_t = b("ReduceSum", b("Mul", signs, b("Gather", s, grp, axis=2)), b.const([0]), keepdims=0)
        elif op_type == "Int4MatMul":  # scale * (code - zero point), as DequantizeLinear computes it
            zp = fmt.inputs[6]
            codes = _unpack_codes(b, packed, k_range, 4, straddle=False)  # [N, K]
            zps = _unpack_codes(b, zp, grp, 4, straddle=False)            # [N, K]: each element's group's
            vals = b("Cast", b("Sub", b("Cast", codes, to=_I64), b("Cast", zps, to=_I64)), to=_F32)
            w_t = b("Mul", b("Gather", s, grp, axis=1), vals)
        else:
            codes = _unpack_codes(b, packed, k_range, bits, straddle=True)  # [N, K]
            w_t = b("GatherElements", s, b("Cast", codes, to=_I64), axis=1)
        _matmul_tail(b, A, w_t, bias, idx, wout, k_range)
    else:  # PackedGather
        _packed_gather_body(b, *fmt.inputs)
    b.nodes[-1].output[0] = "Y"
    defaults = [helper.make_attribute(a, _ATTR_DEFAULTS[a]) for a in fmt.attributes]
    return helper.make_function(
        DOMAIN, op_type, list(fmt.inputs), ["Y"], b.nodes,
        opset_imports=[helper.make_opsetid("", STANDARD_OPSET)],
        attributes=[], attribute_protos=defaults,
        doc_string=f"{op_type} (format_version {FORMAT_VERSION}): {fmt.element_meaning}",
    )


def node_attributes(op_type: str, *, K: int | None = None, N: int | None = None, group_size: int | None = None,
                    bits: int | None = None, accuracy_level: int = 0, D: int | None = None) -> dict:
    """The attribute dict of one node (validated against the table)."""
    fmt = OPS[op_type]
    if op_type == "PackedGather":
        return {"D": int(D), "group_size": int(group_size or D), "format_version": FORMAT_VERSION}
    attrs = {"K": int(K), "N": int(N), "group_size": int(group_size or K),
             "format_version": FORMAT_VERSION, "accuracy_level": int(accuracy_level)}
    if "bits" in fmt.attributes:
        if bits not in fmt.allowed_bits:
            raise ContractError(f"{op_type}: bits must be one of {fmt.allowed_bits}, got {bits}")
        attrs["bits"] = int(bits)
    if accuracy_level not in (0, 4):
        raise ContractError("accuracy_level must be 0 or 4")
    return attrs


def make_node(op_type: str, inputs: list[str], output: str, name: str | None = None, **attrs) -> onnx.NodeProto:
    """A NodeProto of the op (domain ai.qcompiler); attrs as for node_attributes()."""
    return helper.make_node(op_type, list(inputs), [output], name=name, domain=DOMAIN,
                            **node_attributes(op_type, **attrs))


def opset_imports() -> list[onnx.OperatorSetIdProto]:
    return [helper.make_opsetid("", STANDARD_OPSET), helper.make_opsetid(DOMAIN, OPSET_VERSION)]


def attach_functions(model, op_types=None):
    """Add the FunctionProtos (and the opset import) of the ai.qcompiler ops used in a model.

    Works on an onnx.ModelProto or an onnx_ir.Model; op_types defaults to the ops the graph uses.
    """
    if isinstance(model, onnx.ModelProto):
        used = set(op_types or [n.op_type for n in _all_nodes(model.graph) if n.domain == DOMAIN])
        have = {(f.domain, f.name) for f in model.functions}
        for op in sorted(used):
            if (DOMAIN, op) not in have:
                model.functions.append(make_function(op))
        if used and not any(o.domain == DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
        return model
    import onnx_ir as ir  # an onnx_ir.Model

    used = set(op_types or [n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)
                            if n.domain == DOMAIN])
    for op in sorted(used):
        if (DOMAIN, op, "") not in model.functions:
            fn = ir.serde.deserialize_function(make_function(op))
            model.functions[fn.identifier()] = fn
    if used:
        model.opset_imports.setdefault(DOMAIN, OPSET_VERSION)
    return model


def _all_nodes(graph):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.g is not None and a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)


def make_model(op_type: str, weights: dict[str, np.ndarray], *, M: int | str = "M", batch: tuple = (),
               indices_shape: tuple | None = None, indices_dtype=np.int64, with_function: bool = True,
               weights_as_inputs: bool = False, **attrs) -> onnx.ModelProto:
    """A single-op model: A (or indices) is the graph input, the rest are initializers.

    weights maps the op's input names (formats.OPS[op].inputs) to arrays; absent optional ones are
    left out (empty name). weights_as_inputs makes them graph inputs (non-constant, for tests).
    """
    fmt = OPS[op_type]
    na = node_attributes(op_type, **attrs)
    inits, graph_inputs, names = [], [], []
    if op_type == "PackedGather":
        ishape = list(indices_shape) if indices_shape is not None else ["n"]
        dyn_name, dyn_type = "indices", helper.np_dtype_to_tensor_dtype(np.dtype(indices_dtype))
        dyn_shape, out_shape = ishape, ishape + [na["D"]]
    else:
        dyn_name, dyn_type = "A", _F32
        dyn_shape, out_shape = [*batch, M, na["K"]], [*batch, M, na["N"]]
    graph_inputs.append(helper.make_tensor_value_info(dyn_name, dyn_type, dyn_shape))
    for name in fmt.inputs:
        if name == dyn_name:
            names.append(name)
        elif name in weights and weights[name] is not None:
            arr = np.asarray(weights[name])
            if weights_as_inputs:
                graph_inputs.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
            else:
                inits.append(numpy_helper.from_array(arr, name))
            names.append(name)
        else:
            names.append("")
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(op_type, names, ["Y"], domain=DOMAIN, name=f"{op_type}_0", **na)
    graph = helper.make_graph([node], f"{op_type}_single", graph_inputs,
                              [helper.make_tensor_value_info("Y", _F32, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=opset_imports(), ir_version=10,
                              functions=[make_function(op_type)] if with_function else [])
    return model
