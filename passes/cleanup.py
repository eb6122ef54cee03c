"""Cleanup: drop what the rewrites left unused, keep names readable, stamp the model.

Removes unused nodes, initializers, functions and opset imports (onnx_ir's
common passes), sorts the graph topologically, gives every unnamed node a
readable name derived from its op type, and records the producer and the scheme
in metadata_props. Constant nodes written with value_int(s)/value_float(s) (the constant
folder's and the version converter's form, subgraphs and functions included) get the
equivalent `value` tensor: onnxruntime's symbolic_shape_infer reads only that form. The IR
version is raised to the one the opsets need (opset 21 -> IR 10). Leaves a graph with nothing to
remove unchanged except for the stamp.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_common

import qcompiler
from qcompiler.passes.base import QPass


@dataclasses.dataclass
class CleanupOptions:
    stamp: bool = True


class Cleanup(QPass):
    name = "cleanup"
    stage = "final"
    Options = CleanupOptions

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for p in (
            ir_common.RemoveUnusedNodesPass(),
            ir_common.RemoveUnusedFunctionsPass(),
            ir_common.RemoveUnusedOpsetsPass(),
            ir_common.TopologicalSortPass(),
        ):
            modified |= p(model).modified
        modified |= self._name_nodes(model)
        modified |= _constants_as_tensors(model) > 0
        needed = onnx.helper.find_min_ir_version_for(
            [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()], ignore_unknown=True)
        if model.ir_version < needed:
            self.report("ir_version", {"from": model.ir_version, "to": needed})
            model.ir_version = needed
            modified = True
        if self.options.stamp:
            model.producer_name = "qcompiler"
            model.producer_version = qcompiler.__version__
            if self.ctx is not None:
                model.metadata_props["qcompiler.scheme"] = self.ctx.scheme.name
                model.metadata_props["qcompiler.scheme_source"] = self.ctx.scheme.source
            modified = True
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _name_nodes(model: ir.Model) -> bool:
        taken = {node.name for node in model.graph.all_nodes() if node.name}
        counters: dict[str, int] = {}
        modified = False
        for node in model.graph.all_nodes():
            if node.name:
                continue
            base = node.op_type
            while True:
                counters[base] = counters.get(base, 0) + 1
                candidate = f"{base}_{counters[base]}"
                if candidate not in taken:
                    break
            node.name = candidate
            taken.add(candidate)
            modified = True
        return modified


_LIST_ATTRS = {"value_int": (np.int64, False), "value_ints": (np.int64, True),
               "value_float": (np.float32, False), "value_floats": (np.float32, True)}


def _constants_as_tensors(model: ir.Model) -> int:
    """Constant(value_int(s)/value_float(s)) -> Constant(value = tensor); returns the count."""
    count = 0
    graphs = [*model.graphs(), *model.functions.values()]
    for graph in graphs:
        for node in ir.traversal.RecursiveGraphIterator(graph):
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            key = next((k for k in node.attributes if k in _LIST_ATTRS), None)
            if key is None:
                continue
            attr = node.attributes[key]
            if attr.is_ref():     # a function attribute reference: its value is not known here
                continue
            dtype, is_list = _LIST_ATTRS[key]
            array = np.asarray(list(attr.value) if is_list else attr.value, dtype=dtype)
            node.attributes.pop(key)
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array))
            count += 1
    return count
