"""Find the roles of a transformer's weights from the graph's structure, not node names.

A *linear* is a MatMul whose second input is a constant [K, N] weight (directly, or
through a Transpose of a constant, as a tied LM head is), with an optional following
Add of a constant [N] bias. An *embedding* is a Gather on a constant 2-D table with
runtime indices. Roles come from the dataflow around them:

- attention: a MatMul of two activations. If its first input comes from a Softmax it is
  probs @ V (the linear feeding its second input is `attn_v`, the linear reading its
  output is `attn_out`); otherwise it is Q @ K^T (`attn_q` feeds the first input,
  `attn_k` the second). One linear feeding several of them (then Split) is `attn_qkv`.
- FFN: a linear whose output goes through an activation (Gelu, Erf, Relu, Sigmoid, Tanh,
  SiLU) is `ffn_up`; a linear reached from it through elementwise ops only is `ffn_down`.
- `lm_head`: a linear whose weight is an embedding table, or whose output is a graph
  output with a vocabulary-sized N. Anything else is `linear`.

A compiled file fed back (ours or another tool's) keeps what is already compiled: the ops that
consume packed weights (`compiled_ops`), the FP32 outlier-row MatMul beside such an op (its input
is a channel Gather of the compiled op's input), and the scale table gathered beside an integer
table of a quantized embedding are neither linears nor embeddings here.

Subgraphs (If / Loop / Scan bodies) are searched too: a merged decoder's two branches read the
same main-graph weights, and each MatMul reading one is a linear of its own (the plan, keyed by
weight name, quantizes the weight once). Layers are counted within each graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

ROLES = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_out",
    "ffn_up",
    "ffn_down",
    "lm_head",
    "linear",
    "embedding",
)

# Ops that move or rescale data without mixing tokens or channels in a learned way.
_SHAPE_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast", "Identity", "Split", "Slice",
              "Flatten", "Concat", "Expand", "Gather"}
_SCALE_OPS = {"Add", "Mul", "Div", "Sub", "Where"}
_ACTIVATIONS = {"Gelu", "Erf", "Relu", "Sigmoid", "Tanh", "FastGelu", "BiasGelu", "Softplus", "Elu",
                "LeakyRelu", "HardSigmoid", "Mish", "QuickGelu"}
_ELEMENTWISE = _ACTIVATIONS | {"Mul", "Add", "Div", "Sub", "Pow", "Cast", "Sqrt", "Neg", "Abs", "Identity"}


@dataclasses.dataclass
class Linear:
    """One MatMul with a constant weight, and the Add of its bias if there is one."""

    node: ir.Node
    weight: ir.Value          # the initializer holding the weight
    transposed: bool          # True when the MatMul reads Transpose(weight) ([N, K] stored)
    bias_node: ir.Node | None
    bias: ir.Value | None
    role: str = "linear"
    layer: int | None = None

    @property
    def name(self) -> str:
        return self.weight.name

    @property
    def output(self) -> ir.Value:
        """The linear's final output: after the bias Add when there is one."""
        return (self.bias_node or self.node).outputs[0]

    @property
    def shape_kn(self) -> tuple[int, int]:
        shape = self.weight.const_value.shape
        k, n = int(shape[0]), int(shape[1])
        return (n, k) if self.transposed else (k, n)


@dataclasses.dataclass
class Embedding:
    node: ir.Node
    table: ir.Value
    role: str = "embedding"
    tied_linears: list[Linear] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.table.name


@dataclasses.dataclass
class RoleMap:
    linears: list[Linear]
    embeddings: list[Embedding]

    def by_role(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in [*self.linears, *self.embeddings]:
            counts[item.role] = counts.get(item.role, 0) + 1
        return counts

    @property
    def num_layers(self) -> int:
        layers = [lin.layer for lin in self.linears if lin.layer is not None]
        return max(layers) + 1 if layers else 0


def _const(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The constant tensor of an initializer; None for activations and for an initializer that is
    also a graph input (a default the caller may override at run time: packing it would ignore the feed)."""
    if value is None:
        return None
    if value.const_value is not None and value.is_initializer() and not value.is_graph_input():
        return value.const_value
    return None


# (domain, op) of nodes that already multiply by packed or integer weights.
_COMPILED_LINEARS = {("ai.qcompiler", "TernaryMatMul"), ("ai.qcompiler", "BinaryCodeMatMul"),
                     ("ai.qcompiler", "CodebookMatMul"), ("com.microsoft", "MatMulNBits"),
                     ("com.microsoft", "DynamicQuantizeMatMul"), ("com.microsoft", "MatMulIntegerToFloat"),
                     ("", "MatMulInteger"), ("", "QLinearMatMul"), ("com.microsoft", "QAttention")}
_QUANTIZERS = {"DynamicQuantizeLinear", "QuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
_INT_TYPES = (ir.DataType.UINT8, ir.DataType.INT8, ir.DataType.UINT4, ir.DataType.INT4, ir.DataType.INT32,
              ir.DataType.UINT16, ir.DataType.INT16)


def _domain(node: ir.Node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _is_compiled_linear(node: ir.Node) -> bool:
    if (_domain(node), node.op_type) in _COMPILED_LINEARS:
        return True
    if node.op_type == "MatMul" and _domain(node) == "" and len(node.inputs) == 2 and node.inputs[1] is not None:
        return any(p.op_type == "DequantizeLinear" for p in _walk_back(node.inputs[1], {"Transpose", "Reshape", "Cast"}, 3))
    return False


def compiled_ops(model: ir.Model) -> dict[str, int]:
    """What a compiled file already holds: {"TernaryMatMul": 12, "PackedGather": 1, ...}. MatMuls on a
    DequantizeLinear weight count as "MatMul on DequantizeLinear", Gathers of integer tables as
    "Gather of an integer table" (a quantized embedding)."""
    counts: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        key = None
        if _is_compiled_linear(node):
            key = "MatMul on DequantizeLinear" if node.op_type == "MatMul" else node.op_type
        elif _domain(node) == "ai.qcompiler":
            key = node.op_type
        elif node.op_type == "Gather" and _domain(node) == "" and _int_table(node.inputs[0]):
            key = "Gather of an integer table"
        if key:
            counts[key] = counts.get(key, 0) + 1
    return counts


def _int_table(value: ir.Value | None) -> bool:
    tensor = _const(value)
    return tensor is not None and tensor.dtype in _INT_TYPES and len(tensor.shape) == 2


def _outlier_path(node: ir.Node) -> bool:
    """A MatMul of a channel selection Gather(x, const idx, last axis) where x also goes (through a
    mask Mul or a Cast) into a compiled linear or a quantizer: the FP32 outlier rows of that linear."""
    sel = node.inputs[0].producer() if node.inputs[0] is not None else None
    if sel is None or sel.op_type != "Gather" or _domain(sel) != "" or _const(sel.inputs[1]) is None:
        return False
    x = sel.inputs[0]
    axis = sel.attributes.get_int("axis", 0)
    rank = len(x.shape) if x is not None and x.shape is not None else None
    if x is None or not (axis == -1 or (rank is not None and axis == rank - 1)):
        return False
    return any(_is_compiled_linear(n) or n.op_type in _QUANTIZERS
               for n in _walk_forward(x, {"Mul", "Cast", "Where", "Reshape", "Identity"}, 3))


def _scale_table(node: ir.Node) -> bool:
    """A Gather whose indices also gather rows of an integer table: the scales of a quantized embedding."""
    ids = node.inputs[1]
    return ids is not None and any(u.node is not node and u.node.op_type == "Gather" and u.idx == 1
                                   and _int_table(u.node.inputs[0]) for u in ids.uses())


def runtime_weights(model: ir.Model) -> list[str]:
    """Names of 2-D MatMul/Gemm weights that are graph inputs (with or without an initializer
    default): they are fed at run time, so the compiler leaves them alone."""
    found = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in ("MatMul", "Gemm") and node.domain in ("", "ai.onnx") and len(node.inputs) >= 2:
            w = node.inputs[1]
            if w is not None and w.is_graph_input() and w.shape is not None and len(w.shape) == 2 \
                    and w.name not in found:
                found.append(w.name)
    return found


def _weight_source(value: ir.Value) -> tuple[ir.Value, bool] | None:
    """The initializer a MatMul weight input reads, and whether through a 2-D Transpose."""
    if _const(value) is not None and len(value.const_value.shape) == 2:
        return value, False
    producer = value.producer()
    if producer is not None and producer.op_type == "Transpose" and producer.domain in ("", "ai.onnx"):
        src = producer.inputs[0]
        perm = producer.attributes.get_ints("perm", None)
        if _const(src) is not None and len(src.const_value.shape) == 2 and perm in (None, [1, 0], (1, 0)):
            return src, True
    return None


def _bias_of(node: ir.Node, n: int) -> tuple[ir.Node, ir.Value] | tuple[None, None]:
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None, None
    consumer = uses[0].node
    if consumer.op_type != "Add" or consumer.domain not in ("", "ai.onnx"):
        return None, None
    other = consumer.inputs[1] if consumer.inputs[0] is out else consumer.inputs[0]
    tensor = _const(other)
    if tensor is None or tensor.shape is None or tuple(tensor.shape) not in ((n,), (1, n)):
        return None, None
    return consumer, other


def _nodes(graph: ir.Graph, recursive: bool):
    return ir.traversal.RecursiveGraphIterator(graph) if recursive else iter(graph)


def find_linears(graph: ir.Graph, recursive: bool = True) -> list[Linear]:
    linears = []
    for node in _nodes(graph, recursive):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        if _const(node.inputs[0]) is not None:
            continue
        src = _weight_source(node.inputs[1])
        if src is None:
            continue
        weight, transposed = src
        if weight.const_value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            continue
        if _outlier_path(node):
            continue
        lin = Linear(node, weight, transposed, None, None)
        lin.bias_node, lin.bias = _bias_of(node, lin.shape_kn[1])
        linears.append(lin)
    return linears


def find_embeddings(graph: ir.Graph, recursive: bool = True) -> list[Embedding]:
    found = []
    for node in _nodes(graph, recursive):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        table = node.inputs[0]
        tensor = _const(table)
        if tensor is None or len(tensor.shape) != 2 or _const(node.inputs[1]) is not None:
            continue
        if node.attributes.get_int("axis", 0) != 0:
            continue
        if tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
            continue
        if _scale_table(node):
            continue
        found.append(Embedding(node, table))
    return found


def _walk_back(value: ir.Value, through: set[str], limit: int = 12) -> Iterable[ir.Node]:
    """Producers reached backwards from value through the given op types."""
    stack, seen = [(value, 0)], set()
    while stack:
        v, depth = stack.pop()
        node = v.producer()
        if node is None or id(node) in seen or depth > limit:
            continue
        seen.add(id(node))
        yield node
        if node.op_type in through:
            for inp in node.inputs:
                if inp is not None and _const(inp) is None:
                    stack.append((inp, depth + 1))


def _walk_forward(value: ir.Value, through: set[str], limit: int = 12) -> Iterable[ir.Node]:
    stack, seen = [(value, 0)], set()
    while stack:
        v, depth = stack.pop()
        for use in v.uses():
            node = use.node
            if id(node) in seen or depth > limit:
                continue
            seen.add(id(node))
            yield node
            if node.op_type in through:
                for out in node.outputs:
                    stack.append((out, depth + 1))


def analyze(model: ir.Model) -> RoleMap:
    """Assign a role and a layer index to every linear and embedding, subgraphs included."""
    graph = model.graph
    linears = find_linears(graph)
    embeddings = find_embeddings(graph)
    by_node = {id(lin.node): lin for lin in linears}
    by_bias = {id(lin.bias_node): lin for lin in linears if lin.bias_node is not None}

    def linear_of(node: ir.Node) -> Linear | None:
        return by_node.get(id(node)) or by_bias.get(id(node))

    def linears_back(value: ir.Value) -> list[Linear]:
        hits = []
        for node in _walk_back(value, _SHAPE_OPS | _SCALE_OPS):
            lin = linear_of(node)
            if lin is not None and lin not in hits:
                hits.append(lin)
        return hits

    qkv_hits: dict[int, set[str]] = {}
    for node in _nodes(graph, True):
        if node.op_type != "MatMul" or id(node) in by_node or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if _const(a) is not None or _const(b) is not None:
            continue
        from_softmax = any(n.op_type == "Softmax" for n in _walk_back(a, _SHAPE_OPS | _SCALE_OPS | {"Softmax"}, 4))
        if from_softmax:
            for lin in linears_back(b):
                qkv_hits.setdefault(id(lin), set()).add("attn_v")
            for user in _walk_forward(node.outputs[0], _SHAPE_OPS):
                lin = by_node.get(id(user))
                if lin is not None and user.inputs[0] is not None:
                    lin.role = "attn_out"
        else:
            for lin in linears_back(a):
                qkv_hits.setdefault(id(lin), set()).add("attn_q")
            for lin in linears_back(b):
                qkv_hits.setdefault(id(lin), set()).add("attn_k")
    for lin in linears:
        hits = qkv_hits.get(id(lin))
        if hits and lin.role == "linear":
            lin.role = hits.pop() if len(hits) == 1 else "attn_qkv"

    for lin in linears:
        if lin.role != "linear":
            continue
        for user in _walk_forward(lin.output, {"Cast", "Identity"}, 3):
            if user.op_type in _ACTIVATIONS or (user.op_type == "Div" and _feeds_erf(user)):
                lin.role = "ffn_up"
                break
            if user.op_type == "Mul" and _is_silu(user, lin.output):
                lin.role = "ffn_up"
                break
    for lin in linears:
        if lin.role != "ffn_up":
            continue
        for user in _walk_forward(lin.output, _ELEMENTWISE):
            other = by_node.get(id(user))
            if other is not None and other.role == "linear":
                other.role = "ffn_down"

    tables = {id(e.table): e for e in embeddings}
    graph_outputs = {id(v) for g in model.graphs() for v in g.outputs}
    vocab = max((int(e.table.const_value.shape[0]) for e in embeddings), default=0)
    for lin in linears:
        emb = tables.get(id(lin.weight))
        if emb is not None:
            lin.role = "lm_head"
            emb.tied_linears.append(lin)
        elif lin.role == "linear" and vocab >= 1000 and lin.shape_kn[1] == vocab:
            reaches_output = any(id(o) in graph_outputs for n in _walk_forward(lin.output, _SHAPE_OPS, 4)
                                 for o in n.outputs) or lin.output.is_graph_output()
            if reaches_output:
                lin.role = "lm_head"

    # A layer starts at the first attention after an FFN: a decoder layer's cross-attention
    # (a second attn_q before the FFN) stays in its layer.
    has_ffn = any(lin.role in ("ffn_up", "ffn_down") for lin in linears)
    for g in model.graphs():   # each branch of a merged decoder counts its own layers
        layer, ffn_seen = -1, True
        for node in g:  # graph iteration is topological after canonicalize
            lin = by_node.get(id(node))
            if lin is None:
                continue
            if lin.role in ("attn_q", "attn_qkv") and (ffn_seen or not has_ffn):
                layer += 1
                ffn_seen = False
            ffn_seen = ffn_seen or lin.role in ("ffn_up", "ffn_down")
            lin.layer = max(layer, 0) if layer >= 0 or lin.role != "lm_head" else None
    for lin in linears:
        if lin.role == "lm_head":
            lin.layer = None
    return RoleMap(linears, embeddings)


def _feeds_erf(node: ir.Node) -> bool:
    return any(u.node.op_type == "Erf" for u in node.outputs[0].uses())


def _is_silu(mul: ir.Node, x: ir.Value) -> bool:
    other = mul.inputs[1] if mul.inputs[0] is x else mul.inputs[0]
    producer = other.producer() if other is not None else None
    return producer is not None and producer.op_type == "Sigmoid" and producer.inputs[0] is x


def weight_array(lin: Linear) -> np.ndarray:
    """The weight as float32 [K, N] (MatMul orientation), whatever its storage."""
    array = lin.weight.const_value.numpy().astype(np.float32, copy=False)
    return array.T if lin.transposed else array
