"""Fold LayerNorm: fuse decomposed LayerNorm/RMSNorm into their ONNX ops, then fold each norm's
gamma and beta into the linears that read it (pre-LN models), so the weights absorb the scale.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as ir_common
from onnxscript.rewriter import _ir_utils, pattern
from onnxscript.rewriter.rules.fusion import _layer_norm, _rms_normalization

from qcompiler.analyze import Linear, find_linears
from qcompiler.model_io import release_mapped_pages
from qcompiler.passes.base import QPass, add_initializer, fresh_name

__all__ = ["FoldLayerNorm"]

_DEFAULT_DOMAINS = ("", "ai.onnx")
_NORM_OPS = ("LayerNormalization", "RMSNormalization")
_SHAPE_ONLY_OPS = ("Shape", "Size")


@dataclasses.dataclass
class FoldLayerNormOptions:
    fuse: bool = True
    fold_into_linears: bool = True


# --- (a) fusion: onnxscript's rules, with the checks our folding relies on -------------------------


def _const_vector(value: ir.Value | None) -> np.ndarray | None:
    """A constant 1-D vector; None for an initializer that is also a graph input (only a default:
    folding it would ignore what the caller feeds)."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None or len(tensor.shape) != 1:
        return None
    return tensor.numpy()


class _LayerNormFusion(_layer_norm.LayerNormFusion):
    """onnxscript's LayerNorm fusion, refused when gamma is not a constant vector
    (LayerNormalization needs a scale of the normalized shape, and folding needs a constant)."""

    def check(self, context, x, scale, epsilon, **rest) -> pattern.MatchResult:
        result = super().check(context, x=x, scale=scale, epsilon=epsilon, **rest)
        if result and _const_vector(scale) is None:
            return pattern.MatchResult().fail("Scale is not a constant vector.", scale)
        return result


class _LayerNormBiasFusion(_layer_norm.LayerNormBiasFusion):
    """onnxscript's LayerNorm + Add -> LayerNorm(bias) fusion, refused when the added value is
    not a constant vector (a residual Add right after a bias-free LayerNorm must stay an Add)."""

    def check(self, context, x, scale, bias, normalized, **_) -> pattern.MatchResult:
        if _const_vector(bias) is None:
            return pattern.MatchResult().fail("Added value is not a constant vector.", bias)
        if len(normalized.producer().inputs) > 2 and normalized.producer().inputs[2] is not None:
            return pattern.MatchResult().fail("LayerNormalization already has a bias.", normalized)
        return pattern.MatchResult()


class _RmsNormFusion(_rms_normalization.RmsNormFusion):
    """onnxscript's RMSNorm fusion (x * Reciprocal(rms)), refused for a non-constant gamma."""

    def check(self, op, x, scale, epsilon, compute_dtype, target_dtype, **rest) -> pattern.MatchResult:
        result = super().check(op, x, scale, epsilon, compute_dtype, target_dtype, **rest)
        if result and _const_vector(scale) is None:
            return pattern.MatchResult().fail("Scale is not a constant vector.", scale)
        return result


class _RmsNormDivFusion(_RmsNormFusion):
    """The form torch exports, ``x / sqrt(mean(x**2) + eps) * gamma``: Div instead of
    Mul-by-Reciprocal; check and rewrite are onnxscript's."""

    def pattern(self, op, x, scale, epsilon, compute_dtype, target_dtype):
        x = pattern.OrValue([op.Cast(x, to=compute_dtype), x])
        mean_square = op.ReduceMean(op.Pow(x, 2.0), [-1], keepdims=1, noop_with_empty_axes=0)
        normalized = op.Div(x, op.Sqrt(op.Add(mean_square, epsilon)))
        normalized = pattern.OrValue([op.Cast(normalized, to=target_dtype), normalized])
        if self._mul_order:
            return op.Mul(normalized, scale)
        return op.Mul(scale, normalized)


_LAYER_NORM_RULES = pattern.RewriteRuleSet([_LayerNormFusion.rule(), _LayerNormBiasFusion.rule()])
_RMS_NORM_RULES = pattern.RewriteRuleSet(
    [
        _RmsNormFusion.rule("RmsNormFusion1", mul_order=True),
        _RmsNormFusion.rule("RmsNormFusion2", mul_order=False),
        _RmsNormDivFusion.rule("RmsNormDivFusion1", mul_order=True),
        _RmsNormDivFusion.rule("RmsNormDivFusion2", mul_order=False),
    ]
)
# RMSNormalization entered the default domain at opset 23.
_RMS_NORMALIZATION_OPSET = 23
# LayerNorm patterns read ReduceMean axes as an input (opset 18+).
_REDUCE_AXES_INPUT_OPSET = 18


# --- (b) folding ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Norm:
    """One normalization whose last step is ``y = n * gamma (+ beta)``."""

    label: str                      # node name for the report
    output: ir.Value                # y
    gamma: ir.Value
    beta: ir.Value | None
    node: ir.Node | None = None     # LayerNormalization / RMSNormalization node
    scale_nodes: tuple[ir.Node, ...] = ()  # decomposed: the Mul (and Add) applying gamma/beta
    normalized: ir.Value | None = None     # decomposed: n


def _is_norm_core(value: ir.Value) -> bool:
    """n = x / sqrt(mean(.) + eps) or x * Reciprocal(sqrt(mean(.) + eps)), the core of LN/RMSNorm."""
    node = value.producer()
    if node is None or node.domain not in _DEFAULT_DOMAINS:
        return False
    if node.op_type == "Div":
        denominators = [node.inputs[1]]
    elif node.op_type == "Mul":
        denominators = []
        for inp in node.inputs:
            p = inp.producer() if inp is not None else None
            if p is not None and p.op_type == "Reciprocal":
                denominators.append(p.inputs[0])
    else:
        return False
    for d in denominators:
        sqrt = d.producer() if d is not None else None
        if sqrt is None or sqrt.op_type != "Sqrt":
            continue
        add = sqrt.inputs[0].producer()
        if add is None or add.op_type != "Add":
            continue
        if any(i is not None and i.producer() is not None and i.producer().op_type == "ReduceMean"
               for i in add.inputs):
            return True
    return False


def _find_norms(graph: ir.Graph) -> list[_Norm]:
    norms = []
    for node in graph:
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        if node.op_type in _NORM_OPS:
            beta = node.inputs[2] if node.op_type == "LayerNormalization" and len(node.inputs) > 2 else None
            norms.append(_Norm(node.name, node.outputs[0], node.inputs[1], beta, node=node))
        elif node.op_type == "Mul":
            for i in (0, 1):
                n, gamma = node.inputs[i], node.inputs[1 - i]
                if n is None or gamma is None or not _is_norm_core(n) or _const_vector(gamma) is None:
                    continue
                out, beta, nodes = node.outputs[0], None, (node,)
                uses = list(out.uses())
                if len(uses) == 1 and not out.is_graph_output():
                    add = uses[0].node
                    if add.op_type == "Add" and add.domain in _DEFAULT_DOMAINS:
                        other = add.inputs[1 - uses[0].idx]
                        if _const_vector(other) is not None:
                            out, beta, nodes = add.outputs[0], other, (node, add)
                norms.append(_Norm(node.name, out, gamma, beta, scale_nodes=nodes, normalized=n))
                break
    return norms


class FoldLayerNorm(QPass):
    """Fuse decomposed norms, then fold gamma/beta into the linears that are a norm's only readers.

    (a) ``fuse``: ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add becomes LayerNormalization
        (onnxscript's LayerNormFusion and LayerNormBiasFusion rules; opset 18+, i.e. after
        canonicalize). ``x / sqrt(mean(x**2) + eps) * gamma`` (Div, or Mul by Reciprocal) becomes
        RMSNormalization when the model opset is 23 or more; below that it stays decomposed and is
        still foldable. Refused: a gamma or beta that is not a constant vector.
    (b) ``fold_into_linears``: for a LayerNormalization, RMSNormalization, or decomposed norm
        ending in ``Mul(n, gamma) [+ beta]``, when EVERY consumer of its output is a linear
        (MatMul with a constant weight as analyze finds it, optional bias Add) reading it as
        the activation: ``W' = diag(gamma) W`` and ``b' = beta W + b`` (a bias Add is created,
        keeping the linear's output name, when there was none and beta != 0); then gamma becomes
        ones and beta is dropped (decomposed: the Mul/Add are removed). Computed in float64,
        stored in the weight's dtype: exact up to one rounding per weight. The scaled weight is
        a LazyTensor, computed whenever it is read (by the pass quantizing it, or when saved):
        folding a model larger than memory holds no scaled copies.

    Consumers that read only the shape (Shape, Size) do not count. Leaves alone, with the
    reason in the report's ``left`` list: a norm whose output also feeds a residual Add
    (post-LN, BERT) or any other non-linear op, is a graph output, has a non-constant
    gamma/beta, normalizes over more than the last axis, or feeds a linear whose weight is
    shared (e.g. a tied embedding: folding would untie it) or already on the scheme's quantization
    grid (trained with the quantizer in the loop, qcompiler.qat: folding would move it off the
    grid, and it would no longer pack losslessly). Folded norms are listed in
    ``folded``.
    """

    name = "fold_layernorm"
    stage = "canonical"
    Options = FoldLayerNormOptions

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if self.options.fuse:
            modified |= self._fuse(model, opset)
        if self.options.fold_into_linears:
            modified |= self._fold(model.graph)
            inner = sum(len(_find_norms(g)) for g in model.graphs() if g is not model.graph)
            if inner:
                self.report("subgraphs", f"{inner} norm(s) inside If/Loop/Scan bodies left unfolded: folding rewrites "
                                         "the weights, which the bodies of a merged decoder share")
        if modified:
            ir_common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)

    # (a)
    def _fuse(self, model: ir.Model, opset: int) -> bool:
        if opset < _REDUCE_AXES_INPUT_OPSET:
            self.report("fused", {"LayerNormalization": 0, "RMSNormalization": 0,
                                  "note": f"opset {opset} < {_REDUCE_AXES_INPUT_OPSET}: run canonicalize first"})
            return False
        # The patterns match on explicit attributes (keepdims=1 ...).
        ir_common.AddDefaultAttributesPass()(model)
        before = {id(n) for n in model.graph}
        count = _LAYER_NORM_RULES.apply_to_model(model)
        if opset >= _RMS_NORMALIZATION_OPSET:
            count += _RMS_NORM_RULES.apply_to_model(model)
        fused = {op: 0 for op in _NORM_OPS}
        names = {n.name for n in model.graph.all_nodes()}
        for node in model.graph:
            if id(node) in before or node.op_type not in _NORM_OPS:
                continue
            fused[node.op_type] += 1
            node.name = _fresh(names, f"{_scope_of(node)}/{node.op_type}")
        left = sum(1 for norm in _find_norms(model.graph) if norm.node is None)
        if left:
            fused["decomposed_left"] = left
            if opset < _RMS_NORMALIZATION_OPSET:
                fused["note"] = (f"RMSNorm stays decomposed (still foldable): RMSNormalization needs opset "
                                 f"{_RMS_NORMALIZATION_OPSET}, the model has {opset}")
        self.report("fused", fused)
        return count > 0

    # (b)
    def _fold(self, graph: ir.Graph) -> bool:
        linears = {id(lin.node): lin for lin in find_linears(graph, recursive=False)}
        names = {n.name for n in graph.all_nodes()} | {v.name for v in graph.initializers.values()}
        names |= {v.name for n in graph.all_nodes() for v in n.outputs}
        modified = False
        grids = _scheme_grids(getattr(self.ctx, "scheme", None))

        def on_grid(lin: Linear) -> str | None:
            """The format whose grid lin's weight already sits on (trained with the scheme's quantizer)."""
            from qcompiler.analyze import weight_array
            from qcompiler.qat.on_grid import on_scheme_grid

            return on_scheme_grid(weight_array(lin), grids) if grids else None

        for norm in _find_norms(graph):
            if _is_identity_affine(norm):
                continue  # nothing to fold (e.g. folded by an earlier run)
            targets, reason = self._foldable(norm, linears, on_grid)
            if reason is not None:
                self.report_append("left", {"node": norm.label, "reason": reason})
                continue
            beta_into = self._fold_one(graph, norm, targets, names)
            self.report_append("folded", {"node": norm.label, "into": [lin.node.name for lin in targets],
                                          "beta_into_bias": beta_into})
            modified = True
        return modified

    @staticmethod
    def _foldable(norm: _Norm, linears: dict[int, Linear], on_grid=lambda lin: None
                  ) -> tuple[list[Linear], str | None]:
        node = norm.node
        if node is not None:
            if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
                return [], "mean / inverse std-dev outputs are used"
            axis = node.attributes.get_int("axis", -1)
            rank = norm.output.shape.rank() if norm.output.shape is not None else None
            if axis != -1 and (rank is None or axis != rank - 1):
                return [], f"normalizes from axis {axis}, not only the last axis"
        gamma = _const_vector(norm.gamma)
        if gamma is None:
            return [], "scale (gamma) is not a constant vector"
        if norm.beta is not None and _const_vector(norm.beta) is None:
            return [], "bias (beta) is not a constant vector"
        y = norm.output
        if y.is_graph_output():
            return [], "output is a graph output"
        uses = list(y.uses())
        if not uses:
            return [], "output has no consumers"
        targets: list[Linear] = []
        others: list[ir.Node] = []
        for use in uses:
            lin = linears.get(id(use.node))
            if lin is not None and use.idx == 0:
                if lin.shape_kn[0] != gamma.size:
                    return [], f"linear {use.node.name} has K={lin.shape_kn[0]}, gamma has {gamma.size}"
                if not _single_use_weight(lin):
                    return [], f"weight of {use.node.name} is shared (e.g. tied embedding); folding would untie it"
                if lin not in targets:
                    targets.append(lin)
            elif use.node.op_type not in _SHAPE_ONLY_OPS:  # Shape/Size read no values: unaffected
                others.append(use.node)
        if any(n.op_type == "Add" for n in others):
            return [], "output also feeds Add (residual)"
        if others:
            return [], f"output also feeds {others[0].op_type} ({others[0].name}), not a linear"
        if not targets:
            return [], "output feeds no linear"
        for lin in targets:
            fmt = on_grid(lin)
            if fmt is not None:   # e.g. exported after QAT: gamma would move it off the grid it was trained on
                return [], f"weight of {lin.node.name} is already on the scheme's {fmt} grid; folding would move it off"
        return targets, None

    def _fold_one(self, graph: ir.Graph, norm: _Norm, targets: list[Linear], names: set[str]) -> bool:
        gamma = _const_vector(norm.gamma).astype(np.float64)
        beta = _const_vector(norm.beta) if norm.beta is not None else None
        beta = None if beta is None or not np.any(beta) else beta.astype(np.float64)
        for lin in targets:
            source = lin.weight.const_value
            dtype = source.numpy().dtype
            if beta is not None:
                b_new = _beta_times(beta, source.numpy(), lin.transposed)
                release_mapped_pages([source])   # a memory-mapped weight: its pages are read again when quantized
                if lin.bias is not None:
                    b_old = lin.bias.const_value.numpy()
                    _set_const(graph, lin.bias_node, lin.bias, (b_new.reshape(b_old.shape) + b_old).astype(b_old.dtype), names)
                else:
                    _add_bias(graph, lin, b_new.astype(dtype), names)
            lin.weight.const_value = ir.LazyTensor(_ScaledWeight(source, gamma, lin.transposed, dtype), source.dtype,
                                                   source.shape, name=lin.weight.name)
        # The norm now only normalizes.
        if norm.node is not None:
            ones = np.ones_like(_const_vector(norm.gamma))
            _set_const(graph, norm.node, norm.gamma, ones, names)
            if len(norm.node.inputs) > 2:
                norm.node.resize_inputs(2)
        else:
            ir.convenience.replace_all_uses_with(norm.output, norm.normalized)
            graph.remove(list(reversed(norm.scale_nodes)), safe=True)
        return beta is not None


class _ScaledWeight:
    """diag(gamma) W of a folded linear, made when it is read (LazyTensor's function): a model
    larger than memory then never holds the scaled copies of its weights, only the one a pass is
    quantizing. float64 products rounded once to the weight's dtype, a slice of rows at a time."""

    ROWS_ELEMENTS = 1 << 22     # elements per slice: 32 MB of float64 temporaries

    def __init__(self, source: ir.TensorProtocol, gamma: np.ndarray, transposed: bool, dtype) -> None:
        self.source, self.gamma, self.transposed, self.dtype = source, gamma, transposed, dtype

    def __call__(self) -> ir.TensorProtocol:
        w = self.source.numpy()
        out = np.empty(w.shape, self.dtype)
        step = max(1, self.ROWS_ELEMENTS // max(w.shape[1], 1))
        buf = np.empty((min(step, w.shape[0]),) + w.shape[1:], np.float64)    # reused: no fresh pages per slice
        for s in range(0, w.shape[0], step):
            part = buf[: min(step, w.shape[0] - s)]
            part[...] = w[s:s + step]
            part *= self.gamma[None, :] if self.transposed else self.gamma[s:s + step, None]
            out[s:s + step] = part
        return ir.tensor(out)


def _beta_times(beta: np.ndarray, w: np.ndarray, transposed: bool) -> np.ndarray:
    """beta @ W (W in MatMul orientation [K, N]) in float64, a slice of rows at a time through one
    reused buffer: a 2048 x 8192 weight no longer needs a fresh 134 MB float64 copy (one slice
    when K * N <= _ScaledWeight.ROWS_ELEMENTS: then exactly the product of the whole)."""
    w_kn = w.T if transposed else w
    k, n = w_kn.shape
    step = max(1, _ScaledWeight.ROWS_ELEMENTS // max(n, 1))
    buf = np.empty((min(step, k), n), np.float64)
    out = np.zeros(n, np.float64)
    for s in range(0, k, step):
        part = buf[: min(step, k - s)]
        part[...] = w_kn[s:s + step]
        out += beta[s:s + step] @ part
    return out


def _scheme_grids(scheme) -> list[tuple]:
    """The distinct grids the scheme's default and per-role rules pack a linear to, resolved with the
    packing passes' own defaults: (format, bits, group_size, scale_dtype, symmetric, max_outliers).
    Formats without a grid check (int8 QDQ, k-means) are left out."""
    if scheme is None:
        return []
    from qcompiler.passes.quantize_int4 import int4_settings
    from qcompiler.passes.replace_matmul import _settings

    grids = []
    for role, settings in [("[weights]", scheme.weights), *((r, scheme.weight_settings(r)) for r in scheme.roles)]:
        settings = dict(settings)
        fmt = str(settings.pop("format", "none"))       # what a plan entry holds: the format apart
        if fmt in ("ternary", "bcq"):
            s = _settings(role, fmt, settings)
            grid = (fmt, s["bits"], s.get("group_size"), s["scale_dtype"], False, int(s["n_outliers"]))
        elif fmt == "int4":
            block, symmetric, _, n_outliers = int4_settings(role, settings)
            n_outliers = max(n_outliers, int4_settings(role, settings, native=True)[3])   # either form's rows
            grid = (fmt, 4, block, "float32", symmetric, n_outliers)   # the pass stores the activation's dtype
        else:
            continue
        if grid not in grids:
            grids.append(grid)
    return grids


def _is_identity_affine(norm: _Norm) -> bool:
    gamma = _const_vector(norm.gamma)
    beta = _const_vector(norm.beta) if norm.beta is not None else None
    return gamma is not None and bool(np.all(gamma == 1)) and (norm.beta is None or (beta is not None and not np.any(beta)))


def _single_use_weight(lin: Linear) -> bool:
    """The weight is read by this linear only (directly, or through its own Transpose)."""
    w = lin.weight
    if w.is_graph_input() or w.is_graph_output() or len(list(w.uses())) != 1:
        return False
    if lin.transposed:
        t = lin.node.inputs[1]
        return len(list(t.uses())) == 1 and not t.is_graph_output()
    return True


def _set_const(graph: ir.Graph, node: ir.Node, value: ir.Value, array: np.ndarray, names: set[str]) -> None:
    """Give `node` a constant input equal to `array` in place of `value`: in place when `node` is
    the value's only user, else as a new initializer named after it."""
    if value.is_initializer() and len(list(value.uses())) == 1 and not value.is_graph_output():
        value.const_value = ir.tensor(array, name=value.name)
        return
    new = add_initializer(graph, _fresh(names, f"{value.name}_lnfold"), array)
    for use in list(value.uses()):
        if use.node is node:
            node.replace_input_with(use.idx, new)


def _add_bias(graph: ir.Graph, lin: Linear, bias: np.ndarray, names: set[str]) -> None:
    """MatMul -> MatMul + Add(bias); the Add's output takes the MatMul output's name and users."""
    mm_out = lin.node.outputs[0]
    out_name = mm_out.name
    bias_value = add_initializer(graph, _fresh(names, f"{lin.weight.name}_lnfold_bias"), bias)
    add = ir.node("Add", [mm_out, bias_value], name=_fresh(names, f"{lin.node.name}/lnfold_bias_Add"))
    out = add.outputs[0]
    out.shape, out.dtype = mm_out.shape, mm_out.dtype
    ir.convenience.replace_all_uses_with(mm_out, out, replace_graph_outputs=True)
    add.replace_input_with(0, mm_out)  # replace_all_uses_with rewired the Add's own input too
    graph.insert_after(lin.node, add)
    mm_out.name = _fresh(names, f"{out_name}_nobias")
    out.name = out_name


def _fresh(taken: set[str], base: str) -> str:
    name = fresh_name(base, taken)
    taken.add(name)
    return name


def _scope_of(node: ir.Node) -> str:
    """A readable name base for a fused norm: its gamma's name without '.weight' (torch names)."""
    scale = node.inputs[1] if len(node.inputs) > 1 else None
    if scale is not None and scale.name:
        base = scale.name
        return base[: -len(".weight")] if base.endswith(".weight") else base
    return node.outputs[0].name or node.op_type
