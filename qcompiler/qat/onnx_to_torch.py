"""ONNX graph -> torch nn.Module: runs the standard ops transformer exports use (qcompiler.qat.torch_ops,
plus If here) with torch, so autograd flows.

The module runs the graph's nodes in order, reading each initializer as a constant, except the ones
given as `weights` (trainable FakeQuantWeight modules [K, N], read transposed when the graph stores
[N, K]) and `overrides` (frozen replacement arrays, e.g. dequantized embedding tables). An op it
does not know ends in UnsupportedOp (one line); `first_unsupported(model)` finds it without building.
It records the outputs of LayerNormalization/RMSNormalization nodes (hidden states) and of
Softmax nodes (attention probabilities) for distillation (`taps` after each call).
We wrote our own rather than use onnx2torch: that one pulls torchvision (which does not load
beside the pinned torch), lacks opset-17 converters and stores weights as buffers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from qcompiler.qat.torch_ops import OPS, UnsupportedOp, torch_dtype

__all__ = ["OnnxModule", "UnsupportedOp", "torch_dtype", "SUPPORTED_OPS", "first_unsupported"]

CONTROL_OPS = ("If",)
SUPPORTED_OPS = tuple(sorted((*OPS, *CONTROL_OPS)))
_HIDDEN_OPS = ("LayerNormalization", "RMSNormalization")


def _graphs_of(node: ir.Node):
    for a in node.attributes.values():
        if a.type == ir.AttributeType.GRAPH:
            yield a.name, a.value
        elif a.type == ir.AttributeType.GRAPHS:
            for g in a.value:
                yield a.name, g


def first_unsupported(graph) -> ir.Node | None:
    """The first node (If branches included) whose op the evaluator does not run, else None."""
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            return node
        for _, sub in _graphs_of(node):
            found = first_unsupported(sub)
            if found is not None:
                return found
    return None


def unsupported_message(node: ir.Node) -> str:
    where = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
    return (f"ONNX-to-torch: op {where}{node.op_type} (node {node.name or '?'}) is not supported "
            f"(supported: {', '.join(SUPPORTED_OPS)})")


def _compile(graph) -> list:
    """A snapshot of the graph: (node, inputs, outputs, {branch: (program, outputs)}) per node."""
    program = []
    for node in graph:
        branches = {name: (_compile(sub), list(sub.outputs)) for name, sub in _graphs_of(node)}
        program.append((node, list(node.inputs), list(node.outputs), branches))
    return program


def _subgraph_initializers(graph, out: list) -> list:
    for node in graph:
        for _, sub in _graphs_of(node):
            out.extend(sub.initializers.values())
            _subgraph_initializers(sub, out)
    return out


class OnnxModule(nn.Module):
    """Runs an onnx_ir graph with torch. forward(**inputs) -> list of output tensors (graph order)."""

    def __init__(self, model: ir.Model, weights: dict[str, nn.Module] | None = None,
                 transposed: dict[str, bool] | None = None, overrides: dict[str, np.ndarray] | None = None):
        super().__init__()
        graph = model.graph
        bad = first_unsupported(graph)
        if bad is not None:
            raise UnsupportedOp(unsupported_message(bad))
        self._opset = int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1)))
        # a snapshot: the module keeps computing this graph even after passes rewrite the model
        self._program = _compile(graph)
        self._initializers = [*graph.initializers.values(), *_subgraph_initializers(graph, [])]
        self._graph_inputs, self._graph_outputs = list(graph.inputs), list(graph.outputs)
        self._weight_names = {k: f"w{i}" for i, k in enumerate(weights or {})}
        self.weights = nn.ModuleDict({self._weight_names[k]: m for k, m in (weights or {}).items()})
        self._transposed = dict(transposed or {})
        self._consts: dict[str, torch.Tensor] = {}
        overrides = overrides or {}
        for value in self._initializers:
            name = value.name
            if name in self._weight_names or value.const_value is None:
                continue
            array = overrides[name] if name in overrides else value.const_value.numpy()
            self._consts[name] = torch.from_numpy(np.array(array))
        self.input_names = [v.name for v in graph.inputs]
        self.output_names = [v.name for v in graph.outputs]
        self.taps: dict[str, list[torch.Tensor]] = {"hidden": [], "attention": []}

    def forward(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        env: dict[int, torch.Tensor] = {}
        for value in self._initializers:
            name = value.name
            if name in self._weight_names:
                w = self.weights[self._weight_names[name]]()
                env[id(value)] = w.T if self._transposed.get(name) else w
            elif name in self._consts:
                env[id(value)] = self._consts[name]
        for v in self._graph_inputs:
            if v.name not in inputs:
                raise UnsupportedOp(f"ONNX-to-torch: missing input {v.name}")
            env[id(v)] = torch.as_tensor(inputs[v.name])
        hidden, attention = [], []
        self._run(self._program, env, hidden, attention)
        self.taps = {"hidden": hidden, "attention": attention}
        return [env[id(v)] for v in self._graph_outputs]

    def _run(self, program, env: dict, hidden: list, attention: list) -> None:
        for node, node_inputs, node_outputs, branches in program:
            args = [None if v is None else env[id(v)] for v in node_inputs]
            if node.op_type == "If":
                body, outputs = branches["then_branch" if bool(args[0].reshape(-1)[0]) else "else_branch"]
                self._run(body, env, hidden, attention)
                outs = tuple(env[id(v)] for v in outputs)
            else:
                out = OPS[node.op_type](node, self._opset, *args)
                outs = out if isinstance(out, tuple) else (out,)
            for value, tensor in zip(node_outputs, outs):
                env[id(value)] = tensor
            if node.op_type in _HIDDEN_OPS:
                hidden.append(outs[0])
            elif node.op_type == "Softmax":
                attention.append(outs[0])
