"""The shape every qcompiler pass has: an onnx_ir in-place pass with an options dataclass.

A pass is constructed with the compile context (roles, plan, calibration stats,
report) and its options; `call(model)` returns `PassResult(model, modified)`.
`stage` tells the pipeline where it runs: "canonical" passes run before the
roles are analyzed, "transform" passes after planning and calibration, and
"final" passes last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from qcompiler.errors import SchemeError


@dataclasses.dataclass
class NoOptions:
    pass


class QPass(ir.passes.InPlacePass):
    name: ClassVar[str] = ""
    stage: ClassVar[str] = "transform"
    Options: ClassVar[type] = NoOptions

    def __init__(self, ctx: Any = None, options: Any = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_dict(cls, ctx: Any, values: dict[str, Any]) -> "QPass":
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = set(values) - fields
        if unknown:
            raise SchemeError(f"pass '{cls.name}': unknown options {sorted(unknown)} (known: {sorted(fields)})")
        return cls(ctx, cls.Options(**values))

    def report(self, key: str, value: Any) -> None:
        if self.ctx is not None:
            self.ctx.note(self.name, key, value)

    def report_append(self, key: str, value: Any) -> None:
        if self.ctx is not None:
            self.ctx.append(self.name, key, value)


def fresh_name(base: str, taken) -> str:
    """`base`, or the first of base_2, base_3, ... that is not in `taken` (any container of names)."""
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def add_initializer(graph: ir.Graph, name: str, value) -> ir.Value:
    """Register `value` (a numpy array or an onnx-ir tensor) as an initializer of `graph` named
    `name`, or `name`_2, ... when an initializer of that name exists already."""
    if isinstance(value, np.ndarray):   # 0-d arrays are contiguous (ascontiguousarray would make them 1-d)
        value = ir.tensor(value if value.flags.c_contiguous else np.ascontiguousarray(value))
    tensor = value
    v = ir.Value(name=fresh_name(name, graph.initializers), shape=ir.Shape(tensor.shape),
                 type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(v)
    return v


def bias_input(graph: ir.Graph, lin: Any, n: int) -> tuple[ir.Value, bool]:
    """The float32 [N] bias input of an ai.qcompiler op replacing `lin`: its own bias when it is a
    constant of N values (reshaped / cast as needed; folded: True), else a zero bias (its Add, if
    any, stays after the op)."""
    bias = lin.bias
    if bias is None or bias.const_value is None or bias.const_value.size != n:
        return add_initializer(graph, f"{lin.weight.name}_zero_bias", np.zeros(n, np.float32)), False
    arr = bias.const_value.numpy()
    if arr.shape != (n,) or arr.dtype != np.float32:
        bias = add_initializer(graph, f"{bias.name}_1d", arr.reshape(n).astype(np.float32))
    return bias, True


def replace_linear(lin: Any, node: ir.Node, folded: bool) -> str:
    """Put `node` in place of the linear's MatMul (and its bias Add when the bias was folded into
    `node`), its output taking over the replaced output's uses; returns the report's form suffix."""
    if folded:
        old_nodes, old_out = [lin.node, lin.bias_node], lin.output
    else:
        old_nodes, old_out = [lin.node], lin.node.outputs[0]
    ir.convenience.replace_nodes_and_values(lin.node.graph, old_nodes[-1], old_nodes, [node], [old_out],
                                            [node.outputs[0]])
    if lin.bias_node is None:
        return ""
    return " (bias folded)" if folded else " + Add"


def planned_linears(ctx: Any, formats) -> list:
    """(linear, plan) of every linear planned in one of `formats`, except tied LM heads (the
    weight is an embedding table: quantize_embeddings owns it)."""
    if ctx is None or ctx.roles is None or ctx.plan is None:
        return []
    tables = {id(e.table) for e in ctx.roles.embeddings}
    out = []
    for lin in ctx.roles.linears:
        plan = ctx.plan.get(lin.name)
        if plan is None or plan.format not in formats or plan.role == "embedding" or id(lin.weight) in tables:
            continue
        out.append((lin, plan))
    return out


def consumer_grams(linears, stats: dict) -> Mapping:
    """{weight name: X^T X summed over every linear reading it} for the given linears (those
    that asked for recovery); a shared weight is recovered on all its consumers' inputs.
    Summed when a weight's is asked for, not before: a streaming compile keeps its Grams on disk
    (memory-mapped), and holding all of them at once is what it must not do."""
    parts: dict = {}
    for lin in linears:
        st = stats.get(lin.node.inputs[0].name)
        if st is not None and getattr(st, "gram", None) is not None:
            parts.setdefault(lin.name, []).append(st.gram)
    return _SummedGrams(parts)


def consumer_rows(linears, stats: dict) -> dict[str, int]:
    """{weight name: calibration rows behind its consumer_grams Gram} (rows summed over consumers)."""
    rows: dict[str, int] = {}
    for lin in linears:
        st = stats.get(lin.node.inputs[0].name)
        if st is not None and getattr(st, "gram", None) is not None:
            rows[lin.name] = rows.get(lin.name, 0) + int(st.rows_seen)
    return rows


class _SummedGrams(Mapping):
    def __init__(self, parts: dict) -> None:
        self._parts = parts

    def __getitem__(self, name: str):
        first, *rest = self._parts[name]
        return first if not rest else sum(rest, np.array(first, np.float64))

    def __iter__(self):
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)


def drop_unused_weights(graph: ir.Graph, linears) -> None:
    """Remove the FP32 weights and biases of rewritten linears (and Transposes of them) that
    no node reads any more; a weight still read elsewhere stays."""
    for lin in linears:
        for use in list(lin.weight.uses()):
            user = use.node
            if user.op_type == "Transpose" and not any(o.uses() or o.is_graph_output() for o in user.outputs):
                user.graph.remove(user, safe=True)
        for value in (lin.weight, lin.bias):
            if value is not None and value.name in graph.initializers and not list(value.uses()) \
                    and not value.is_graph_output():
                graph.initializers.pop(value.name)
