"""ONNX graph -> torch nn.Module: a small evaluator of the standard ops transformer exports use.

The module runs the graph's nodes in order with torch ops (so autograd flows), reading each
initializer as a constant, except the ones given as `weights` (trainable FakeQuantWeight modules
[K, N], read transposed when the graph stores [N, K]) and `overrides` (frozen replacement arrays,
e.g. dequantized embedding tables). An op it does not know ends in UnsupportedOp (one line).
It records the outputs of LayerNormalization/RMSNormalization nodes (hidden states) and of
Softmax nodes (attention probabilities) for distillation (`taps` after each call).
We wrote our own rather than use onnx2torch: that one pulls torchvision (which does not load
beside the pinned torch), lacks opset-17 converters and stores weights as buffers.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from qcompiler.errors import QCompilerError

__all__ = ["OnnxModule", "UnsupportedOp", "torch_dtype", "SUPPORTED_OPS"]


class UnsupportedOp(QCompilerError):
    """The graph uses an op the evaluator does not implement."""


_DTYPES = {
    ir.DataType.FLOAT: torch.float32, ir.DataType.DOUBLE: torch.float64, ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16, ir.DataType.INT64: torch.int64, ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16, ir.DataType.INT8: torch.int8, ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
}


def torch_dtype(dt) -> torch.dtype:
    dt = ir.DataType(int(dt))
    if dt not in _DTYPES:
        raise UnsupportedOp(f"data type {dt.name} is not supported by the ONNX-to-torch evaluator")
    return _DTYPES[dt]


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    if a is None:
        return default
    v = a.value
    if isinstance(v, ir.TensorProtocol):
        return torch.from_numpy(np.array(v.numpy()))
    return v


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axes(node: ir.Node, args: list, position: int) -> list[int] | None:
    """Axes from the input at `position` (newer opsets) or the `axes` attribute (older)."""
    if len(args) > position and args[position] is not None:
        return _ints(args[position])
    a = _attr(node, "axes")
    return None if a is None else list(a)


def _binary(fn):
    return lambda node, a, b: fn(a, b)


def _div(node, a, b):
    if not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _gemm(node, a, b, c=None):
    if _attr(node, "transA", 0):
        a = a.T
    if _attr(node, "transB", 0):
        b = b.T
    y = _attr(node, "alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + _attr(node, "beta", 1.0) * c
    return y


def _layer_norm(node, x, scale, bias=None):
    axis = _attr(node, "axis", -1) % x.dim()
    shape = x.shape[axis:]
    return nn.functional.layer_norm(x, shape, scale, bias, _attr(node, "epsilon", 1e-5))


def _rms_norm(node, x, scale):
    axis = _attr(node, "axis", -1) % x.dim()
    dims = tuple(range(axis, x.dim()))
    return x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + _attr(node, "epsilon", 1e-5)) * scale


def _gelu(node, x):
    return nn.functional.gelu(x, approximate="tanh" if _attr(node, "approximate", "none") == "tanh" else "none")


def _softmax(node, x):
    return torch.softmax(x, dim=_attr(node, "axis", -1))


def _gather(node, x, idx):
    axis = _attr(node, "axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


def _reshape(node, x, shape):
    shape = _ints(shape)
    if not _attr(node, "allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _transpose(node, x):
    perm = _attr(node, "perm")
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


def _concat(node, *xs):
    return torch.cat([x for x in xs if x is not None], dim=_attr(node, "axis"))


def _unsqueeze(node, x, axes=None):
    axes = _axes(node, [x, axes], 1)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(node, x, axes=None):
    axes = _axes(node, [x, axes], 1)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _shape(node, x):
    dims = list(x.shape)
    start, end = _attr(node, "start", 0), _attr(node, "end", None)
    return torch.tensor(dims[start:end], dtype=torch.int64)


def _slice(node, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise UnsupportedOp("Slice with a non-positive step is not supported by the ONNX-to-torch evaluator")
        dim = x.shape[a]
        s = max(0, min(dim, s + dim if s < 0 else s))
        e = max(0, min(dim, e + dim if e < 0 else e))
        index[a % x.dim()] = slice(s, e, st)
    return x[tuple(index)]


def _cast(node, x):
    return x.to(torch_dtype(_attr(node, "to")))


def _reduce(fn):
    def run(node, x, axes=None):
        axes = _axes(node, [x, axes], 1)
        keep = bool(_attr(node, "keepdims", 1))
        if not axes:
            if _attr(node, "noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=tuple(a % x.dim() for a in axes), keepdim=keep)
    return run


def _expand(node, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


def _constant_of_shape(node, shape):
    value = _attr(node, "value")
    value = torch.zeros(1, dtype=torch.float32) if value is None else value
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype)


def _constant(node):
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        v = _attr(node, key)
        if v is not None:
            return v if isinstance(v, torch.Tensor) else torch.tensor(v)
    raise UnsupportedOp("Constant without a value/value_float(s)/value_int(s) attribute is not supported")


def _range(node, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _split(node, x, split=None):
    axis = _attr(node, "axis", 0)
    sizes = _ints(split) if split is not None else _attr(node, "split")
    if sizes is None:
        n = len(node.outputs)
        sizes = [math.ceil(x.shape[axis] / n)] * n
    return tuple(torch.split(x, list(sizes), dim=axis))


def _flatten(node, x):
    axis = _attr(node, "axis", 1)
    axis = axis + x.dim() if axis < 0 else axis          # axis may equal the rank: [prod(all), 1]
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def _clip(node, x, lo=None, hi=None):
    return torch.clamp(x, None if lo is None else lo.item(), None if hi is None else hi.item())


OPS: dict[str, Callable] = {
    "MatMul": _binary(torch.matmul), "Gemm": _gemm,
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _div,
    "Pow": _binary(torch.pow), "Sqrt": lambda n, x: torch.sqrt(x), "Erf": lambda n, x: torch.erf(x),
    "Tanh": lambda n, x: torch.tanh(x), "Relu": lambda n, x: torch.relu(x), "Sigmoid": lambda n, x: torch.sigmoid(x),
    "Exp": lambda n, x: torch.exp(x), "Log": lambda n, x: torch.log(x), "Neg": lambda n, x: -x,
    "Abs": lambda n, x: x.abs(), "Reciprocal": lambda n, x: 1.0 / x, "Sign": lambda n, x: torch.sign(x),
    "Gelu": _gelu, "LayerNormalization": _layer_norm, "RMSNormalization": _rms_norm, "Softmax": _softmax,
    "Gather": _gather, "Reshape": _reshape, "Transpose": _transpose, "Concat": _concat,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Shape": _shape, "Slice": _slice,
    "Where": lambda n, c, a, b: torch.where(c, a, b), "Cast": _cast, "Identity": lambda n, x: x,
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum), "ReduceMax": _reduce(torch.amax),
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt),
    "LessOrEqual": _binary(torch.le), "GreaterOrEqual": _binary(torch.ge), "Not": lambda n, x: ~x,
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or),
    "Min": lambda n, *xs: torch.stack(torch.broadcast_tensors(*xs)).amin(0),
    "Max": lambda n, *xs: torch.stack(torch.broadcast_tensors(*xs)).amax(0),
    "Expand": _expand, "ConstantOfShape": _constant_of_shape, "Constant": _constant, "Range": _range,
    "Split": _split, "Flatten": _flatten, "Clip": _clip,
}
SUPPORTED_OPS = tuple(sorted(OPS))
_HIDDEN_OPS = ("LayerNormalization", "RMSNormalization")


class OnnxModule(nn.Module):
    """Runs an onnx_ir graph with torch. forward(**inputs) -> list of output tensors (graph order)."""

    def __init__(self, model: ir.Model, weights: dict[str, nn.Module] | None = None,
                 transposed: dict[str, bool] | None = None, overrides: dict[str, np.ndarray] | None = None):
        super().__init__()
        graph = model.graph
        for node in graph:
            if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
                where = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
                raise UnsupportedOp(f"ONNX-to-torch: op {where}{node.op_type} (node {node.name or '?'}) is not "
                                    f"supported (supported: {', '.join(SUPPORTED_OPS)})")
        # a snapshot: the module keeps computing this graph even after passes rewrite the model
        self._program = [(node, list(node.inputs), list(node.outputs)) for node in graph]
        self._initializers = list(graph.initializers.values())
        self._graph_inputs, self._graph_outputs = list(graph.inputs), list(graph.outputs)
        self._weight_names = {k: f"w{i}" for i, k in enumerate(weights or {})}
        self.weights = nn.ModuleDict({self._weight_names[k]: m for k, m in (weights or {}).items()})
        self._transposed = dict(transposed or {})
        self._consts: dict[str, torch.Tensor] = {}
        overrides = overrides or {}
        for name, value in graph.initializers.items():
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
        for node, node_inputs, node_outputs in self._program:
            args = [None if v is None else env[id(v)] for v in node_inputs]
            out = OPS[node.op_type](node, *args)
            outs = out if isinstance(out, tuple) else (out,)
            for value, tensor in zip(node_outputs, outs):
                env[id(value)] = tensor
            if node.op_type in _HIDDEN_OPS:
                hidden.append(outs[0])
            elif node.op_type == "Softmax":
                attention.append(outs[0])
        self.taps = {"hidden": hidden, "attention": attention}
        return [env[id(v)] for v in self._graph_outputs]

