"""The standard ONNX ops as torch functions (autograd flows through them): the table OPS that
qcompiler.qat.onnx_to_torch runs graphs with. Each entry is fn(node, opset, *inputs) -> tensor or
tuple; a missing optional input is None. Checked against the ONNX backend node tests
(tests/qat/test_onnx_to_torch_ops.py). Control flow (If) lives in onnx_to_torch.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from qcompiler.errors import QCompilerError

__all__ = ["OPS", "UnsupportedOp", "torch_dtype", "attr"]


class UnsupportedOp(QCompilerError):
    """The graph uses an op (or an op feature, or a data type) the evaluator does not implement."""


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


def attr(node: ir.Node, name: str, default=None):
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
    a = attr(node, "axes")
    return None if a is None else list(a)


def _unsupported(node: ir.Node, what: str):
    raise UnsupportedOp(f"ONNX-to-torch: {node.op_type} (node {node.name or '?'}): {what} is not supported")


# -- elementwise ---------------------------------------------------------------------------------

def _unary(fn):
    return lambda node, opset, x: fn(x)


def _binary(fn):
    return lambda node, opset, a, b: fn(a, b)


def _div(node, opset, a, b):
    if not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _pow(node, opset, a, b):
    if a.is_floating_point() or not b.is_floating_point():
        return torch.pow(a, b.to(a.dtype) if a.is_floating_point() else b).to(a.dtype)
    return torch.pow(a.to(torch.float64), b.to(torch.float64)).to(a.dtype)   # int base, float exponent


def _mod(node, opset, a, b):
    if attr(node, "fmod", 0):
        return torch.fmod(a, b)
    return torch.remainder(a, b)           # the sign of the divisor, like Python's %


def _variadic(fn):
    def run(node, opset, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return run


def _mean(node, opset, *xs):
    return _variadic(torch.add)(node, opset, *xs) / len(xs)


def _clip(node, opset, x, lo=None, hi=None):
    if opset < 11:
        lo, hi = attr(node, "min"), attr(node, "max")
        lo = None if lo is None else torch.tensor(lo, dtype=x.dtype)
        hi = None if hi is None else torch.tensor(hi, dtype=x.dtype)
    if lo is not None:
        x = torch.maximum(x, lo.to(x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(x.dtype))
    return x


def _is_inf(node, opset, x):
    pos, neg = attr(node, "detect_positive", 1), attr(node, "detect_negative", 1)
    return (torch.isposinf(x) if pos else torch.zeros_like(x, dtype=torch.bool)) | \
        (torch.isneginf(x) if neg else torch.zeros_like(x, dtype=torch.bool))


def _leaky_relu(node, opset, x):
    return nn.functional.leaky_relu(x, attr(node, "alpha", 0.01))


def _elu(node, opset, x):
    return nn.functional.elu(x, attr(node, "alpha", 1.0))


def _hard_sigmoid(node, opset, x):
    return torch.clamp(attr(node, "alpha", 0.2) * x + attr(node, "beta", 0.5), 0, 1)


def _gelu(node, opset, x):
    return nn.functional.gelu(x, approximate="tanh" if attr(node, "approximate", "none") == "tanh" else "none")


def _where(node, opset, c, a, b):
    return torch.where(c, a, b)


# -- linear algebra and normalization ------------------------------------------------------------

def _matmul(node, opset, a, b):
    return torch.matmul(a, b)


def _gemm(node, opset, a, b, c=None):
    if attr(node, "transA", 0):
        a = a.T
    if attr(node, "transB", 0):
        b = b.T
    y = attr(node, "alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + attr(node, "beta", 1.0) * c
    return y


def _einsum(node, opset, *xs):
    return torch.einsum(attr(node, "equation").replace(" ", ""), *xs)


def _layer_norm(node, opset, x, scale, bias=None):
    axis = attr(node, "axis", -1) % x.dim()
    eps = attr(node, "epsilon", 1e-5)
    dims = tuple(range(axis, x.dim()))
    if len(node.outputs) == 1 and tuple(scale.shape) == tuple(x.shape[axis:]) and \
            (bias is None or tuple(bias.shape) == tuple(x.shape[axis:])):
        return nn.functional.layer_norm(x, x.shape[axis:], scale, bias, eps)
    mean = x.mean(dim=dims, keepdim=True)          # the form with Mean / InvStdDev outputs, broadcast scale
    inv = torch.rsqrt((x - mean).pow(2).mean(dim=dims, keepdim=True) + eps)
    y = (x - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv


def _rms_norm(node, opset, x, scale):
    axis = attr(node, "axis", -1) % x.dim()
    dims = tuple(range(axis, x.dim()))
    return x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + attr(node, "epsilon", 1e-5)) * scale


def _softmax_like(fn):
    def run(node, opset, x):
        if opset < 13:                              # coerced to 2D [prod(:axis), prod(axis:)]
            axis = attr(node, "axis", 1) % max(x.dim(), 1)
            flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
            return fn(flat, -1).reshape(x.shape)
        return fn(x, attr(node, "axis", -1))
    return run


def _pads_of(node, x, opset, pads=None, axes=None):
    """[(before, after) per dim] from the pads input (opset 11+) or attribute."""
    p = _ints(pads) if pads is not None else list(attr(node, "pads"))
    rank = x.dim()
    ax = [a % rank for a in _ints(axes)] if axes is not None else list(range(rank))
    out = [(0, 0)] * rank
    for i, a in enumerate(ax):
        out[a] = (p[i], p[i + len(ax)])
    return out


def _pad(node, opset, x, pads=None, value=None, axes=None):
    mode = attr(node, "mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    per_dim = _pads_of(node, x, opset, pads, axes)
    if value is None and opset < 11:
        value = attr(node, "value", 0.0)
    fill = 0 if value is None or (isinstance(value, torch.Tensor) and value.numel() == 0) else \
        (value.reshape(-1)[0].item() if isinstance(value, torch.Tensor) else value)
    if mode == "constant":
        flat = [v for before, after in reversed(per_dim) for v in (before, after)]
        return nn.functional.pad(x, flat, value=fill)
    for d, (before, after) in enumerate(per_dim):       # reflect / edge / wrap one axis at a time
        if before < 0 or after < 0:
            x = x.narrow(d, max(0, -before), x.shape[d] - max(0, -before) - max(0, -after))
            before, after = max(before, 0), max(after, 0)
        if before == 0 and after == 0:
            continue
        n = x.shape[d]
        idx = torch.arange(-before, n + after)
        if mode == "edge":
            idx = idx.clamp(0, n - 1)
        elif mode == "wrap":
            idx = idx % n
        elif mode == "reflect":
            period = 2 * (n - 1)
            idx = idx.abs() % period if period else idx * 0
            idx = torch.where(idx >= n, period - idx, idx)
        else:
            _unsupported(node, f"mode {mode}")
        x = torch.index_select(x, d, idx)
    return x


def _conv(node, opset, x, w, b=None):
    nd = x.dim() - 2
    if nd not in (1, 2, 3):
        _unsupported(node, f"a {nd}-D convolution")
    kernel = list(attr(node, "kernel_shape", None) or w.shape[2:])
    strides = list(attr(node, "strides", None) or [1] * nd)
    dil = list(attr(node, "dilations", None) or [1] * nd)
    group = attr(node, "group", 1)
    auto = attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for i in range(nd):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size)
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto == "SAME_UPPER" else big)
            pads_e.append(big if auto == "SAME_UPPER" else small)
    elif auto == "VALID":
        pads_b, pads_e = [0] * nd, [0] * nd
    else:
        p = list(attr(node, "pads", None) or [0] * (2 * nd))
        pads_b, pads_e = p[:nd], p[nd:]
    flat = [v for i in reversed(range(nd)) for v in (pads_b[i], pads_e[i])]
    x = nn.functional.pad(x, flat)
    fn = (nn.functional.conv1d, nn.functional.conv2d, nn.functional.conv3d)[nd - 1]
    return fn(x, w, b, stride=strides, dilation=dil, groups=group)


# -- reductions ----------------------------------------------------------------------------------

def _reduce(fn, empty=None):
    """Reduce over `axes` (input at position 1 from opset 18, attribute before); an empty set of axes
    reduces over all unless noop_with_empty_axes. `empty`: the value over zero elements."""
    def run(node, opset, x, axes=None):
        axes = _axes(node, [x, axes], 1)
        keep = bool(attr(node, "keepdims", 1))
        if not axes:
            if attr(node, "noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        dims = tuple(sorted(a % x.dim() for a in axes)) if x.dim() else ()
        if not dims:
            return fn(x.reshape(1), (0,), False).reshape(()) if x.dim() == 0 else x
        if x.numel() == 0 and empty is not None:
            shape = [1 if d in dims else s for d, s in enumerate(x.shape)] if keep else \
                [s for d, s in enumerate(x.shape) if d not in dims]
            return torch.full(shape, empty(x.dtype), dtype=x.dtype)
        return fn(x, dims, keep)
    return run


def _lowest(dtype):
    if dtype == torch.bool:
        return False
    return -math.inf if dtype.is_floating_point else torch.iinfo(dtype).min


def _highest(dtype):
    if dtype == torch.bool:
        return True
    return math.inf if dtype.is_floating_point else torch.iinfo(dtype).max


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


def _sum_exp_log(x, dims, keep):
    return torch.logsumexp(x, dim=dims, keepdim=keep)


REDUCE = {
    "ReduceMean": _reduce(lambda x, d, k: torch.mean(x, dim=d, keepdim=k), empty=lambda t: math.nan),
    "ReduceSum": _reduce(lambda x, d, k: torch.sum(x, dim=d, keepdim=k), empty=lambda t: 0),
    "ReduceMax": _reduce(lambda x, d, k: torch.amax(x, dim=d, keepdim=k), empty=_lowest),
    "ReduceMin": _reduce(lambda x, d, k: torch.amin(x, dim=d, keepdim=k), empty=_highest),
    "ReduceProd": _reduce(_prod, empty=lambda t: 1),
    "ReduceL1": _reduce(lambda x, d, k: torch.sum(x.abs(), dim=d, keepdim=k), empty=lambda t: 0),
    "ReduceL2": _reduce(lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k)), empty=lambda t: 0),
    "ReduceSumSquare": _reduce(lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k), empty=lambda t: 0),
    "ReduceLogSumExp": _reduce(_sum_exp_log, empty=lambda t: -math.inf),
    "ReduceLogSum": _reduce(lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)), empty=lambda t: -math.inf),
}


def _cumsum(node, opset, x, axis):
    a = int(axis.reshape(-1)[0]) % x.dim()
    if attr(node, "reverse", 0):
        x = x.flip(a)
    y = torch.cumsum(x, dim=a).to(x.dtype)
    if attr(node, "exclusive", 0):
        y = y - x
    return y.flip(a) if attr(node, "reverse", 0) else y


# -- shapes and indexing -------------------------------------------------------------------------

def _positive(idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


def _gather(node, opset, x, idx):
    axis = attr(node, "axis", 0) % x.dim()
    idx = _positive(idx, x.shape[axis])
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


def _gather_elements(node, opset, x, idx):
    axis = attr(node, "axis", 0) % x.dim()
    return torch.gather(x, axis, _positive(idx, x.shape[axis]))


def _gather_nd(node, opset, x, idx):
    b = attr(node, "batch_dims", 0)
    idx = idx.long()
    m = idx.shape[-1]
    batch = x.shape[:b]
    nb = int(np.prod(batch)) if b else 1
    xs = x.reshape(nb, *x.shape[b:])
    ids = idx.reshape(nb, -1, m)
    dims = torch.tensor(x.shape[b:b + m])
    ids = torch.where(ids < 0, ids + dims, ids)
    rows = [xs[i][tuple(ids[i, :, j] for j in range(m))] for i in range(nb)]
    out = torch.stack(rows)                           # [nb, n, *x.shape[b+m:]]
    return out.reshape(*idx.shape[:-1], *x.shape[b + m:])


def _reduce_into(out, index, updates, reduction, node):
    if reduction == "none":
        return out.index_put(index, updates)
    if reduction == "add":
        return out.index_put(index, updates, accumulate=True)
    flat = torch.stack([i.reshape(-1) for i in index])          # apply one update at a time (duplicates)
    upd = updates.reshape(flat.shape[1], *updates.shape[len(index[0].shape):]) if flat.shape[1] else updates
    for k in range(flat.shape[1]):
        where = tuple(int(i) for i in flat[:, k])
        old = out[where]
        new = {"mul": old * upd[k], "max": torch.maximum(old, upd[k]), "min": torch.minimum(old, upd[k])}.get(reduction)
        if new is None:
            _unsupported(node, f"reduction {reduction}")
        out = out.index_put(tuple(torch.tensor(v) for v in where), new)
    return out


def _scatter_nd(node, opset, x, idx, updates):
    idx = idx.long()
    m = idx.shape[-1]
    dims = torch.tensor(x.shape[:m])
    idx = torch.where(idx < 0, idx + dims, idx)
    index = tuple(idx[..., j] for j in range(m))
    red = attr(node, "reduction", "none")
    return _reduce_into(x.clone(), index, updates, red.decode() if isinstance(red, bytes) else red, node)


def _scatter_elements(node, opset, x, idx, updates):
    axis = attr(node, "axis", 0) % x.dim()
    idx = _positive(idx, x.shape[axis])
    red = attr(node, "reduction", "none")
    red = red.decode() if isinstance(red, bytes) else red
    grids = torch.meshgrid(*[torch.arange(s) for s in idx.shape], indexing="ij")
    index = tuple(idx if d == axis else grids[d] for d in range(x.dim()))
    return _reduce_into(x.clone(), index, updates, red, node)


def _reshape(node, opset, x, shape):
    shape = _ints(shape)
    if not attr(node, "allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _transpose(node, opset, x):
    perm = attr(node, "perm")
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


def _concat(node, opset, *xs):
    return torch.cat([x for x in xs if x is not None], dim=attr(node, "axis"))


def _unsqueeze(node, opset, x, axes=None):
    axes = _axes(node, [x, axes], 1)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(node, opset, x, axes=None):
    axes = _axes(node, [x, axes], 1)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _clamp_dim(v: int, dim: int) -> int:
    return max(0, min(dim, v + dim if v < 0 else v))


def _shape(node, opset, x):
    rank = x.dim()
    start, end = attr(node, "start", 0), attr(node, "end", None)
    s = _clamp_dim(start, rank)
    e = rank if end is None else _clamp_dim(end, rank)
    return torch.tensor(list(x.shape)[s:e], dtype=torch.int64)


def _size(node, opset, x):
    return torch.tensor(x.numel(), dtype=torch.int64)


def _slice(node, opset, x, starts=None, ends=None, axes=None, steps=None):
    if opset < 10:
        starts, ends = torch.tensor(attr(node, "starts")), torch.tensor(attr(node, "ends"))
        axes = None if attr(node, "axes") is None else torch.tensor(attr(node, "axes"))
    starts, ends = _ints(starts), _ints(ends)
    axes = [a % x.dim() for a in _ints(axes)] if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        dim = x.shape[a]
        if st > 0:
            s, e = _clamp_dim(s, dim), _clamp_dim(e, dim)
            x = x.narrow(a, s, 0) if e <= s else x[(slice(None),) * a + (slice(s, e, st),)]
        elif st < 0:                                  # clamp into [-1, dim-1], walk backwards
            s = max(-1, min(dim - 1, s + dim if s < 0 else s))
            e = max(-1, min(dim - 1, e + dim if e < 0 else e))
            if e >= s:
                x = x.narrow(a, 0, 0)
            else:
                idx = torch.arange(s, e, st)
                x = torch.index_select(x, a, idx)
        else:
            _unsupported(node, "a zero step")
    return x


def _split(node, opset, x, split=None):
    axis = attr(node, "axis", 0) % x.dim()
    sizes = _ints(split) if split is not None else attr(node, "split")
    if sizes is None:
        n = attr(node, "num_outputs", None) or len(node.outputs)
        size = x.shape[axis]
        chunk = -(-size // n)
        sizes = [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])
        if len(sizes) < n and opset < 18:
            sizes = [size // n] * n
    return tuple(torch.split(x, list(sizes), dim=axis))


def _flatten(node, opset, x):
    axis = attr(node, "axis", 1)
    axis = axis + x.dim() if axis < 0 else axis          # axis may equal the rank: [prod(all), 1]
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def _expand(node, opset, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


def _tile(node, opset, x, repeats):
    return x.repeat(*_ints(repeats)) if x.dim() else x


def _trilu(node, opset, x, k=None):
    k = 0 if k is None else int(k.reshape(-1)[0])
    return torch.triu(x, k) if attr(node, "upper", 1) else torch.tril(x, k)


def _cast(node, opset, x):
    to = torch_dtype(attr(node, "to"))
    if to == torch.bool or not x.is_floating_point() or to.is_floating_point:
        return x.to(to)
    return torch.trunc(x).to(to)


def _cast_like(node, opset, x, like):
    return x.to(like.dtype)


def _constant_of_shape(node, opset, shape):
    value = attr(node, "value")
    value = torch.zeros(1, dtype=torch.float32) if value is None else value
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype)


def _constant(node, opset):
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        v = attr(node, key)
        if v is not None:
            if isinstance(v, torch.Tensor):
                return v
            dtype = torch.float32 if key.startswith("value_float") else torch.int64
            return torch.tensor(v, dtype=dtype)
    return _unsupported(node, "a Constant without a value/value_float(s)/value_int(s) attribute")


def _range(node, opset, start, limit, delta):
    s, l, d = start.item(), limit.item(), delta.item()
    n = max(0, math.ceil((l - s) / d))
    return (start + torch.arange(n, dtype=torch.float64 if start.is_floating_point() else torch.int64)
            .to(start.dtype) * delta).to(start.dtype)


OPS: dict[str, Callable] = {
    "MatMul": _matmul, "Gemm": _gemm, "Einsum": _einsum, "Conv": _conv,
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _div,
    "Pow": _pow, "Mod": _mod,
    "Sqrt": _unary(torch.sqrt), "Erf": _unary(torch.erf), "Tanh": _unary(torch.tanh), "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid), "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal), "Sign": _unary(torch.sign),
    "Sin": _unary(torch.sin), "Cos": _unary(torch.cos), "Ceil": _unary(torch.ceil), "Floor": _unary(torch.floor),
    "Softplus": _unary(nn.functional.softplus), "IsNaN": _unary(torch.isnan), "IsInf": _is_inf,
    "LeakyRelu": _leaky_relu, "Elu": _elu, "HardSigmoid": _hard_sigmoid,
    "Gelu": _gelu, "LayerNormalization": _layer_norm, "RMSNormalization": _rms_norm,
    "Softmax": _softmax_like(lambda x, a: torch.softmax(x, dim=a)),
    "LogSoftmax": _softmax_like(lambda x, a: torch.log_softmax(x, dim=a)),
    "Gather": _gather, "GatherElements": _gather_elements, "GatherND": _gather_nd,
    "ScatterND": _scatter_nd, "ScatterElements": _scatter_elements,
    "Reshape": _reshape, "Transpose": _transpose, "Concat": _concat,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Shape": _shape, "Size": _size, "Slice": _slice,
    "Where": _where, "Cast": _cast, "CastLike": _cast_like, "Identity": _unary(lambda x: x),
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt),
    "LessOrEqual": _binary(torch.le), "GreaterOrEqual": _binary(torch.ge), "Not": _unary(torch.logical_not),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or), "Xor": _binary(torch.logical_xor),
    "Min": _variadic(torch.minimum), "Max": _variadic(torch.maximum), "Sum": _variadic(torch.add), "Mean": _mean,
    "Expand": _expand, "Tile": _tile, "Trilu": _trilu, "Pad": _pad, "CumSum": _cumsum,
    "ConstantOfShape": _constant_of_shape, "Constant": _constant, "Range": _range,
    "Split": _split, "Flatten": _flatten, "Clip": _clip,
    **REDUCE,
}
