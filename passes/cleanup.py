"""Cleanup: drop what the rewrites left unused, keep names readable, stamp the model.

Removes unused nodes, initializers, functions and opset imports (onnx_ir's
common passes), sorts the graph topologically, gives every unnamed node a
readable name derived from its op type, and records the producer and the scheme
in metadata_props. Leaves a graph with nothing to remove unchanged except for
the stamp.
"""

from __future__ import annotations

import dataclasses

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
