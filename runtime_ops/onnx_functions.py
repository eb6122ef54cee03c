"""ONNX FunctionProto bodies (standard ops only) for the ai.qcompiler ops, plus node/model builders.

Every model that uses an op carries its function, so stock onnxruntime and onnx.reference run it
without the native library; with the library registered onnxruntime runs the native kernel.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .formats import DOMAIN, FORMAT_VERSION, MATMUL_OPS, OPS, OPSET_VERSION, STANDARD_OPSET, ContractError

__all__ = ["make_function", "make_node", "node_attributes", "make_model", "attach_functions", "opset_imports"]

_U32 = TensorProto.UINT32
_I64 = TensorProto.INT64
_F32 = TensorProto.FLOAT


class _Body:
    """Tiny helper that names intermediate values and collects nodes."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

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


def _unpack_codes(b: _Body, packed: str, n_elems: str, bits: str | int, straddle: bool) -> str:
    """Codes uint32 [..., n_elems] from a uint8 [..., bytes] bitstream (the bitstream rule)."""
    zero, one, eight = b.const(0), b.const(1), b.const(8)
    k = b("Range", zero, n_elems, one)
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


def make_function(op_type: str) -> onnx.FunctionProto:
    """The FunctionProto (domain ai.qcompiler, same name) that defines op_type with standard ops."""
    if op_type not in OPS:
        raise ContractError(f"unknown op {op_type}")
    fmt = OPS[op_type]
    b = _Body()
    if op_type in MATMUL_OPS:
        A, packed, scales, bias, idx, wout = fmt.inputs
        K = b.attr_int("K")
        k_range = b("Range", b.const(0), K, b.const(1))
        grp = b("Div", k_range, b.attr_int("group_size"))
        s = b("Cast", scales, to=_F32)
        if op_type == "TernaryMatMul":
            codes = _unpack_codes(b, packed, K, 2, straddle=False)  # [N, K]
            vals = b("Gather", b.const([0.0, 1.0, 0.0, -1.0], np.float32), b("Cast", codes, to=_I64))
            w_t = b("Mul", vals, b("Gather", s, grp, axis=1))
        elif op_type == "BinaryCodeMatMul":
            codes = _unpack_codes(b, packed, K, 1, straddle=False)  # [bits, N, K]
            signs = b("Sub", b("Mul", b("Cast", codes, to=_F32), b.const(2.0, np.float32)), b.const(1.0, np.float32))
            w_t = b("ReduceSum", b("Mul", signs, b("Gather", s, grp, axis=2)), b.const([0]), keepdims=0)
        else:
            codes = _unpack_codes(b, packed, K, b.attr_int("bits"), straddle=True)  # [N, K]
            w_t = b("GatherElements", s, b("Cast", codes, to=_I64), axis=1)
        out = _matmul_tail(b, A, w_t, bias, idx, wout, k_range)
    else:  # PackedGather
        table, offsets, row_bits, scales, indices = fmt.inputs
        D = b.attr_int("D")
        one = b.const(1)
        V = b("Shape", row_bits)
        i = b("Cast", indices, to=_I64)
        i = b("Where", b("Less", i, b.const(0)), b("Add", i, V), i)
        start = b("Unsqueeze", b("Gather", offsets, i), b.const([-1]))  # [..., 1]
        rbits = b("Unsqueeze", b("Cast", b("Gather", row_bits, i), to=_I64), b.const([-1]))
        d = b("Range", b.const(0), D, one)  # [D]
        bitpos = b("Mul", d, rbits)  # [..., D]
        byte = b("Add", start, b("Div", bitpos, b.const(8)))
        shift = b("Cast", b("Mod", bitpos, b.const(8)), to=_U32)
        raw = b("Gather", b("Cast", table, to=_U32), byte)
        full = b("Pow", b.const(2), rbits)
        mask = b("Cast", b("Sub", full, one), to=_U32)
        u = b("Cast", b("BitwiseAnd", b("BitShift", raw, shift, direction="RIGHT"), mask), to=_I64)
        half = b("Div", full, b.const(2))
        v = b("Sub", u, b("Mul", b("Cast", b("GreaterOrEqual", u, half), to=_I64), full))
        grp = b("Div", d, b.attr_int("group_size"))
        srow = b("Gather", b("Cast", scales, to=_F32), i)  # [..., G]
        out = b("Mul", b("Cast", v, to=_F32), b("Gather", srow, grp, axis=-1))
    b.nodes[-1].output[0] = "Y"
    defaults = [helper.make_attribute("format_version", FORMAT_VERSION)]
    if op_type in MATMUL_OPS:
        defaults.append(helper.make_attribute("accuracy_level", 0))
    required = [a for a in fmt.attributes if a not in ("format_version", "accuracy_level")]
    return helper.make_function(
        DOMAIN, op_type, list(fmt.inputs), ["Y"], b.nodes,
        opset_imports=[helper.make_opsetid("", STANDARD_OPSET)],
        attributes=required, attribute_protos=defaults,
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
