"""merge_linears: quantized linears that read the same activation become one op over their
concatenated output channels, its output split back (attention's q / k / v, LLaMA's gate / up).

Each ai.qcompiler MatMul op (and com.microsoft MatMulNBits) quantizes its activation to int8 rows,
or builds lookup tables from it, before it touches a weight; three ops reading one activation do
that work three times and run three narrow products (MiniLM: 384 output channels, 12 column
blocks each, for two threads to share). One op over N = N_q + N_k + N_v does it once, over 3x the
columns. Every output channel is computed from the same activation row, the same row scale and
the same weight bytes as before, so the result is the same bit for bit (tested).

Merged when the ops have the same type and domain, read the same activation value, have equal
attributes except N, the same input dtypes and optional inputs, equal outlier channel indices
(ai.qcompiler ops: the same Gram gives the same outliers), and each weight initializer is read by
that op alone (a shared or tied weight would be stored twice), and the op was written by this
compile (a file fed back keeps its compiled ops as they are). Inside If / Loop / Scan bodies too;
the new initializers go to the main graph. The Split keeps every original output name.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qcompiler.passes.base import QPass, add_initializer, fresh_name

__all__ = ["MergeLinears", "MergeLinearsOptions", "N_AXES", "compiled_weights"]

_SAME = "same"
# (domain, op) -> {input index: axis of N in that input, or "same" (must be equal)}; input 0 is A.
N_AXES: dict[tuple[str, str], dict[int, int | str]] = {
    ("ai.qcompiler", "TernaryMatMul"): {1: 0, 2: 0, 3: 0, 4: _SAME, 5: 1},
    ("ai.qcompiler", "BinaryCodeMatMul"): {1: 1, 2: 1, 3: 0, 4: _SAME, 5: 1},
    ("ai.qcompiler", "CodebookMatMul"): {1: 0, 2: 0, 3: 0, 4: _SAME, 5: 1},
    ("ai.qcompiler", "Int4MatMul"): {1: 0, 2: 0, 3: 0, 4: _SAME, 5: 1, 6: 0},
    # B [N, blocks, blob], scales [N * blocks] or [N, blocks], zero_points [N * bytes] or [N, bytes], g_idx (never), bias [N]
    ("com.microsoft", "MatMulNBits"): {1: 0, 2: 0, 3: 0, 4: _SAME, 5: 0},
}


@dataclasses.dataclass
class MergeLinearsOptions:
    max_ops: int = 8            # at most this many linears in one merged op


def _attrs(node: ir.Node) -> dict:
    return {k: (a.value if not isinstance(a.value, (list, tuple)) else tuple(a.value))
            for k, a in node.attributes.items() if k != "N"}


def compiled_weights(model: ir.Model) -> set[str]:
    """Names of the packed weights of every mergeable op in `model` (those of a file fed back)."""
    return {n.inputs[1].name for n in ir.traversal.RecursiveGraphIterator(model.graph)
            if (n.domain, n.op_type) in N_AXES and len(n.inputs) > 1 and n.inputs[1] is not None}


def _signature(node: ir.Node, main: ir.Graph, keep: set[str]) -> tuple | None:
    """What must be equal for two nodes to merge, or None when this node cannot merge at all."""
    axes = N_AXES.get((node.domain, node.op_type))
    if axes is None or not node.inputs or node.inputs[0] is None or "N" not in node.attributes:
        return None
    if len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].name in keep:
        return None                                       # compiled before this run: left as it is
    sig = [node.op_type, node.domain, id(node.inputs[0]), tuple(sorted(_attrs(node).items()))]
    for i in range(1, max(axes) + 1):
        v = node.inputs[i] if i < len(node.inputs) else None
        if v is None:
            sig.append((i, None))
            continue
        t = v.const_value
        if t is None or v.name not in main.initializers or len(list(v.uses())) != 1 or v.is_graph_output():
            return None                                   # computed, shared or tied: leave alone
        # only the inputs that must be equal are read; the weights' bytes stay where they are (mapped)
        same = t.numpy().tobytes() if axes[i] == _SAME else None
        sig.append((i, t.dtype, len(t.shape), same))
    return tuple(sig)


class MergeLinears(QPass):
    name = "merge_linears"
    stage = "final"
    Options = MergeLinearsOptions

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        main = model.graph
        modified = False
        taken = {n.name for n in main.all_nodes() if n.name}
        opset = model.opset_imports.get("", 0)
        keep = self.ctx.compiled_at_load if self.ctx is not None else set()
        for graph in list(model.graphs()):
            groups: dict[tuple, list[ir.Node]] = {}
            for node in graph:
                sig = _signature(node, main, keep)
                if sig is not None:
                    groups.setdefault(sig, []).append(node)
            size = max(self.options.max_ops, 2)
            for nodes in groups.values():
                for start in range(0, len(nodes), size):
                    part = nodes[start:start + size]
                    if len(part) >= 2:
                        self._merge(graph, main, part, taken, opset)
                        modified = True
        return ir.passes.PassResult(model, modified)

    def _merge(self, graph: ir.Graph, main: ir.Graph, nodes: list[ir.Node], taken: set, opset: int) -> None:
        first = nodes[0]
        axes = N_AXES[(first.domain, first.op_type)]
        ns = [int(n.attributes["N"].value) for n in nodes]
        base = fresh_name(f"{first.name or first.op_type}_merged{len(nodes)}", taken)
        taken.add(base)
        inputs: list[ir.Value | None] = [first.inputs[0]]
        for i in range(1, max(axes) + 1):
            v = first.inputs[i] if i < len(first.inputs) else None
            if v is None:
                inputs.append(None)
                continue
            if axes[i] == _SAME:
                inputs.append(v)
                continue
            arrays = [n.inputs[i].const_value.numpy() for n in nodes]
            inputs.append(add_initializer(main, f"{base}_{i}", np.concatenate(arrays, axis=axes[i])))
        while inputs and inputs[-1] is None:
            inputs.pop()
        attributes = {k: a.value for k, a in first.attributes.items()}
        attributes["N"] = int(sum(ns))
        merged = ir.node(first.op_type, inputs, attributes, domain=first.domain, name=base)
        if opset >= 13:       # the split sizes are an input from opset 13 on, an attribute before
            split_inputs, split_attrs = [merged.outputs[0], add_initializer(main, f"{base}_split", np.array(ns, np.int64))], {}
        else:
            split_inputs, split_attrs = [merged.outputs[0]], {"split": ns}
        split = ir.node("Split", split_inputs, {"axis": -1, **split_attrs}, num_outputs=len(nodes),
                        name=fresh_name(f"{base}_Split", taken))
        taken.add(split.name)
        old_values = [n.outputs[0] for n in nodes]
        old_inits = [v for n in nodes for v in n.inputs[1:] if v is not None]
        ir.convenience.replace_nodes_and_values(graph, first, nodes, [merged, split], old_values, list(split.outputs))
        for v in old_inits:                          # the per-op initializers nobody reads any more
            if v.name in main.initializers and not list(v.uses()) and not v.is_graph_output():
                main.initializers.pop(v.name)
        self.report_append("merged", {"op": first.op_type, "nodes": [n.name for n in nodes], "N": ns,
                                      "into": merged.name})
