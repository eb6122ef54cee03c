"""Canonicalize: bring an exported FP32 graph to the one form the later passes expect.

The input's opset where the scheme's ops allow it (else the lowest that does), explicit default attributes, big constants as initializers, constants folded,
Gemm written as MatMul (+ Add), no Identity or dead nodes, topological order, shapes inferred.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as ir_common
from onnxscript import optimizer
from onnxscript.version_converter import ConvertVersionPass

from qcompiler.passes.base import QPass, add_initializer, fresh_name

__all__ = ["Canonicalize"]

logger = logging.getLogger(__name__)

_DEFAULT_DOMAINS = ("", "ai.onnx")


# The lowest default-domain opset the ops each pass writes need (passes not listed write ops of any
# opset, e.g. MatMulNBits in the com.microsoft domain). See required_opset.
STANDARD_FUNCTIONS_OPSET = 21   # the ai.qcompiler ONNX function bodies (runtime_ops.formats.STANDARD_OPSET)
QDQ_PER_CHANNEL_OPSET = 13      # QuantizeLinear / DequantizeLinear with an axis
PORTABLE_INT4_OPSET = 21        # blockwise DequantizeLinear of INT4 (passes.quantize_int4.PORTABLE_MIN_OPSET)
INT4_ROWS_OPSET = 11            # quantize_embeddings' int4 rows: BitShift
NORM_PATTERNS_OPSET = 18        # fold_layernorm's fusion patterns match ReduceMean with axes as an input


def required_opset(model: ir.Model, scheme, target: str = "ort") -> tuple[int, str]:
    """(lowest default-domain opset the scheme's passes need on this model, which pass needs it)."""
    if scheme is None:
        return 1, ""
    passes = set(scheme.passes)
    needs = [(1, "")]
    if "insert_qdq" in passes:
        needs.append((QDQ_PER_CHANNEL_OPSET, "insert_qdq: per-channel QuantizeLinear/DequantizeLinear"))
    if "quantize_int4" in passes and target == "portable":
        needs.append((PORTABLE_INT4_OPSET, "quantize_int4 --target portable: blockwise int4 DequantizeLinear"))
    if "quantize_int4" in passes and target == "qcompiler":
        needs.append((STANDARD_FUNCTIONS_OPSET, "quantize_int4 --target qcompiler: Int4MatMul's ONNX function body"))
    if "replace_matmul" in passes:
        needs.append((STANDARD_FUNCTIONS_OPSET, "replace_matmul: the ai.qcompiler ops' ONNX function bodies"))
    if "quantize_embeddings" in passes:
        fmt = str(scheme.embeddings.get("format", "keep"))
        if fmt in ("packed", "ternary"):
            needs.append((STANDARD_FUNCTIONS_OPSET, "quantize_embeddings: PackedGather's ONNX function body"))
        elif fmt == "int4":
            needs.append((INT4_ROWS_OPSET, "quantize_embeddings: int4 rows (BitShift)"))
    if "fold_layernorm" in passes and scheme.pass_options("fold_layernorm").get("fuse", True) and any(
            n.op_type == "ReduceMean" for n in model.graph.all_nodes()):
        needs.append((NORM_PATTERNS_OPSET, "fold_layernorm: LayerNorm/RMSNorm fusion patterns"))
    return max(needs)


@dataclasses.dataclass
class CanonicalizeOptions:
    # Default-domain opset the graph is upgraded to (never downgraded). None: the input's opset, or
    # the lowest one the scheme's passes need when it is lower (required_opset).
    target_opset: int | None = None
    fold_constants: bool = True
    # onnxscript's limits (elements): a node with a larger input is not folded (Transpose of
    # a single-use constant excepted), a larger result is not materialized. They keep a weight
    # from being duplicated as a folded copy beside the original.
    fold_input_size_limit: int = optimizer._constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT
    fold_output_size_limit: int = optimizer._constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT
    # Constant nodes with at least this many elements become initializers (weights exported
    # as Constant nodes are then found by analyze, and shape inference never serializes them).
    lift_constants_min_size: int = 1024
    gemm_to_matmul: bool = True
    # A MatMul weight that is an exact transposed copy of a Gather table (torch's constant folding of
    # a tied LM head) reads Transpose(table) again: the tie is visible, the file holds the table once.
    retie_heads: bool = True
    shape_inference: bool = True


class Canonicalize(QPass):
    """Upgrade, fold, unify and clean an exported graph; shapes inferred at the end.

    Steps, in order:

    1. Default-domain opset upgraded to ``target_opset`` when lower; by default to the lowest
       opset the scheme's passes need on this model (``required_opset``: int8 QDQ 13, int4 rows
       11, MatMulNBits any, norm fusion over decomposed norms 18, the ai.qcompiler function bodies
       and portable int4 21), so an opset-17 or 18 export stays at its opset. onnxscript's version
       converter does 18+; older graphs (torch's opset 14 exports: ReduceMean/Split/... axes
       as attributes) fall back to the onnx C converter, which onnxscript calls with the
       initializers stripped, so a model over 2 GB converts too. A failed conversion leaves
       the opset and says so in the report.
    2. Default attributes written out (``keepdims=1`` ...): the fusion patterns match on them.
    3. Constant nodes of ``lift_constants_min_size`` elements or more become initializers.
    4. Constant folding (onnxscript.optimizer.fold_constants, size limits above).
    5. ``Gemm(A, B, C, alpha, beta, transA, transB)`` becomes ``MatMul(A', B') [+ C']``:
       a constant B is stored transposed and scaled by alpha (a new initializer
       ``<B>_kn``, so no runtime Transpose); a runtime B gets a Transpose node and alpha a Mul;
       a constant C is scaled by beta, a runtime C gets a Mul. The final output keeps the
       Gemm's output value (name). onnxscript's ``gemm_to_matmul_add_rule`` is not used: it
       only matches Reshape -> Gemm(alpha=beta=1) -> Reshape with static shapes and does not
       constrain transA/transB.
    5b. Tied heads re-tied: a MatMul whose constant weight [D, V] equals a Gather table [V, D]
       transposed, element for element (the exporter folded ``Transpose(table)`` into a copy),
       reads ``Transpose(table)`` again; the copy goes. Analyze then sees the tied head and
       quantize_embeddings gives it the table's format; onnxruntime folds the Transpose at
       session start.
    6. Identity elimination (an Identity that makes a subgraph output of an outer-scope value, as
       deberta's ``If`` else-branch does, is kept: removing it would make the outer value an output
       of the subgraph), dead-node (and unused initializer) removal, topological sort.
    7. Shape inference (onnx_ir's ShapeInferencePass: initializers over 1 KB are stripped
       before serializing, so large models are fine; on failure shapes are left as they are).

    Subgraphs (If / Loop / Scan bodies) get the same treatment: their initializers move to the main
    graph (weights read in two branches of a merged decoder are then one initializer each), their
    values are renamed where a name is already used elsewhere in the model (sibling branches of
    Optimum's merged decoder reuse every name; calibration and verification tap values by name),
    Gemm is rewritten inside them too, and folding, identity removal and sorting recurse.

    Leaves alone: a graph already in canonical form (at or above the opset needed, MatMul, no Identity, nothing
    dead, default attributes present) comes out with the same nodes.
    """

    name = "canonicalize"
    stage = "canonical"
    Options = CanonicalizeOptions

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opt = self.options
        modified = False
        nodes_before = _count_nodes(model)
        n_identity = _count_nodes(model, "Identity")
        self.report("nodes_before", nodes_before)

        modified |= self._upgrade_opset(model)
        if any(True for _ in model.graphs() if _ is not model.graph):
            lifted = ir_common.LiftSubgraphInitializersToMainGraphPass()(model).modified
            renamed = _unique_subgraph_names(model)
            self.report("subgraphs", {"graphs": sum(1 for _ in model.graphs()) - 1,
                                      "initializers_lifted": bool(lifted), "values_renamed": renamed})
            modified |= lifted or renamed > 0
        modified |= ir_common.AddDefaultAttributesPass()(model).modified
        modified |= ir_common.LiftConstantsToInitializersPass(
            lift_all_constants=False, size_limit=opt.lift_constants_min_size
        )(model).modified

        if opt.fold_constants:
            n0 = _count_nodes(model)
            folded = optimizer.fold_constants(
                model,
                onnx_shape_inference=False,
                input_size_limit=opt.fold_input_size_limit,
                output_size_limit=opt.fold_output_size_limit,
            )
            modified |= bool(folded.modified)
            ir_common.RemoveUnusedNodesPass()(model)
            self.report("constant_folding_nodes_removed", n0 - _count_nodes(model))

        if opt.gemm_to_matmul:
            n_gemm = _gemm_to_matmul(model.graph)
            self.report("gemm_to_matmul", n_gemm)
            modified |= n_gemm > 0

        if opt.retie_heads:
            n_tied = _retie_transposed_copies(model.graph)
            if n_tied:
                self.report("retied_heads", n_tied)
            modified |= n_tied > 0

        # Constant folding already forwards most Identity nodes; this pass takes the rest.
        modified |= _ScopedIdentityElimination()(model).modified
        self.report("identity_removed", n_identity - _count_nodes(model, "Identity"))
        modified |= ir_common.RemoveUnusedNodesPass()(model).modified
        modified |= ir_common.TopologicalSortPass()(model).modified

        if opt.shape_inference:
            result = ir_common.ShapeInferencePass()(model)
            modified |= result.modified
            unknown = sum(1 for n in model.graph for v in n.outputs if v.shape is None)
            self.report("shape_inference", {"ran": True, "values_without_shape": unknown})
        else:
            self.report("shape_inference", {"ran": False})

        self.report("nodes_after", _count_nodes(model))
        return ir.passes.PassResult(model, modified)

    def _upgrade_opset(self, model: ir.Model) -> bool:
        target, why = self.options.target_opset, "target_opset option"
        if target is None:
            ctx = self.ctx
            target, why = required_opset(model, getattr(ctx, "scheme", None),
                                         getattr(getattr(ctx, "options", None), "target", "ort"))
        current = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
        entry = {"from": current, "to": current, "target": target, **({"needed_by": why} if why else {})}
        if current is None or current >= target:
            entry["action"] = "none"
            self.report("opset", entry)
            return False
        try:
            ConvertVersionPass(target_version=target, fallback=True)(model)
        except Exception as exc:  # the converter raises several types; the model stays usable
            logger.warning("opset upgrade %s -> %s failed: %s", current, target, exc)
            entry["action"] = f"failed: {type(exc).__name__}: {exc}"
            self.report("opset", entry)
            return False
        after = model.opset_imports.get("", current)
        entry["to"] = after
        entry["action"] = "upgraded" if after == target else "failed: converter left the model unchanged"
        self.report("opset", entry)
        return after != current


class _ScopedIdentityElimination(ir_common.IdentityEliminationPass):
    """onnx_ir's identity elimination, except `y = Identity(x)` where y is an output of the
    node's graph and x comes from another (outer) graph: x cannot become that graph's output."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type == "Identity" and node.domain == "" and len(node.inputs) == 1 and len(node.outputs) == 1:
            x, y = node.inputs[0], node.outputs[0]
            if x is not None and y.is_graph_output() and _owner_graph(x) is not node.graph:
                return False
        return super()._try_eliminate_identity_node(node)


def _owner_graph(value: ir.Value):
    """The graph that defines `value`: its producer's graph, or the graph it is an input/initializer of."""
    producer = value.producer()
    return producer.graph if producer is not None else value.graph


def _unique_subgraph_names(model: ir.Model) -> int:
    """Rename subgraph values whose name is used elsewhere in the model (main-graph names stay);
    returns how many were renamed."""
    g = model.graph
    taken = {v.name for v in g.inputs} | set(g.initializers) | {v.name for v in g.outputs}
    taken |= {v.name for n in g for v in n.outputs}
    count = 0

    def claim(value: ir.Value) -> None:
        nonlocal count
        if value.name and value.name in taken:
            value.name = fresh_name(value.name, taken)
            count += 1
        if value.name:
            taken.add(value.name)

    def enter(graph) -> None:
        if graph is not g:
            for v in graph.inputs:
                claim(v)

    for node in ir.traversal.RecursiveGraphIterator(g, enter_graph=enter):
        if node.graph is not g:
            for v in node.outputs:
                claim(v)
    return count


def _count_nodes(model: ir.Model, op_type: str | None = None) -> int:
    return sum(1 for n in model.graph.all_nodes() if op_type is None or n.op_type == op_type)


class _Names:
    """Fresh value / node / initializer names derived from existing ones."""

    def __init__(self, graph: ir.Graph) -> None:
        self.taken = {v.name for v in graph.initializers.values()}
        self.taken |= {v.name for v in graph.inputs}
        for node in graph.all_nodes():
            self.taken.add(node.name)
            self.taken |= {v.name for v in node.outputs}

    def fresh(self, base: str) -> str:
        name = fresh_name(base, self.taken)
        self.taken.add(name)
        return name


def _const_array(value: ir.Value | None) -> np.ndarray | None:
    tensor = None if value is None else ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _retie_transposed_copies(graph: ir.Graph) -> int:
    """MatMul(x, W) with W == table.T exactly, for a table some Gather reads: W becomes Transpose(table)."""
    tables: dict[tuple[int, int], list[ir.Value]] = {}
    all_nodes = list(ir.traversal.RecursiveGraphIterator(graph))   # a merged decoder's heads are in its branches
    for node in all_nodes:
        if node.op_type == "Gather" and node.domain in _DEFAULT_DOMAINS and node.attributes.get_int("axis", 0) == 0:
            t = node.inputs[0]
            if t is not None and t.is_initializer() and t.const_value is not None and len(t.const_value.shape) == 2:
                shape = tuple(int(d) for d in t.const_value.shape)
                if not any(t is u for u in tables.get(shape, [])):
                    tables.setdefault(shape, []).append(t)
    if not tables:
        return 0
    names = _Names(graph)
    count = 0
    for node in all_nodes:
        if node.op_type != "MatMul" or node.domain not in _DEFAULT_DOMAINS:
            continue
        w = node.inputs[1]
        if w is None or not w.is_initializer() or w.const_value is None or len(w.const_value.shape) != 2:
            continue
        d, v = (int(x) for x in w.const_value.shape)
        candidates = tables.get((v, d), [])
        if not candidates:
            continue
        array = w.const_value.numpy()
        # A few elements first: a large model's FFN weights often have the table's transposed shape,
        # and comparing them whole would read every one of them into memory.
        table = next((t for t in candidates if t.const_value.dtype == w.const_value.dtype
                      and np.array_equal(t.const_value.numpy()[:16, 0], array[0, :16])
                      and np.array_equal(t.const_value.numpy().T, array)), None)
        if table is None:
            continue
        transpose = ir.node("Transpose", [table], attributes={"perm": [1, 0]},
                            name=names.fresh(f"{node.name or 'MatMul'}/TransposeTable"))
        transpose.outputs[0].name = names.fresh(f"{table.name}_transposed")
        node.graph.insert_before(node, transpose)
        node.replace_input_with(1, transpose.outputs[0])
        count += 1
    return count


def _gemm_to_matmul(graph: ir.Graph) -> int:
    """Rewrite every default-domain Gemm (subgraphs included) as MatMul (+ Add); return the count.
    New initializers go to the main graph `graph` (visible in every subgraph)."""
    names = _Names(graph)
    count = 0
    main = graph
    stored: dict[tuple, ir.Value] = {}     # one [K, N] copy per (weight, transB, alpha): shared weights stay shared
    for node in list(ir.traversal.RecursiveGraphIterator(main)):
        graph = node.graph
        if node.op_type != "Gemm" or node.domain not in _DEFAULT_DOMAINS:
            continue
        a, b = node.inputs[0], node.inputs[1]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        alpha = node.attributes.get_float("alpha", 1.0)
        beta = node.attributes.get_float("beta", 1.0)
        trans_a = node.attributes.get_int("transA", 0)
        trans_b = node.attributes.get_int("transB", 0)
        base = node.name or "Gemm"
        new_nodes: list[ir.Node] = []

        def add_node(op, inputs, suffix, **attrs):
            n = ir.node(op, inputs, attributes=attrs or None, name=names.fresh(f"{base}/{suffix}"))
            n.outputs[0].name = names.fresh(f"{base}/{suffix}_output_0")
            new_nodes.append(n)
            return n.outputs[0]

        if trans_a:
            a = add_node("Transpose", [a], "TransposeA", perm=[1, 0])
        b_const = _const_array(b)
        scale_after = alpha
        if b_const is not None and b_const.ndim == 2:
            w = b_const.T if trans_b else b_const
            if alpha != 1.0:
                w = (w.astype(np.float64) * alpha).astype(b_const.dtype)
                scale_after = 1.0
            if trans_b or alpha != 1.0:
                key = (id(b), trans_b, alpha)
                if key not in stored:
                    stored[key] = add_initializer(main, names.fresh(f"{b.name or base}_kn"), np.ascontiguousarray(w))
                b = stored[key]
        elif trans_b:
            b = add_node("Transpose", [b], "TransposeB", perm=[1, 0])
        y = add_node("MatMul", [a, b], "MatMul")
        if scale_after != 1.0:
            y = add_node("Mul", [y, add_initializer(main, names.fresh(f"{base}_alpha"),
                                                      np.array(scale_after, dtype=np.float32))], "MulAlpha")
        if c is not None and beta != 0.0:
            c_const = _const_array(c)
            if c_const is not None and beta != 1.0:
                c = add_initializer(main, names.fresh(f"{c.name or base}_beta"),
                                     (c_const.astype(np.float64) * beta).astype(c_const.dtype))
            elif beta != 1.0:
                c = add_node("Mul", [c, add_initializer(main, names.fresh(f"{base}_beta"),
                                                          np.array(beta, dtype=np.float32))], "MulBeta")
            y = add_node("Add", [y, c], "Add")
        # The last new node's output takes over the Gemm's output (name, shape, consumers).
        ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [node.outputs[0]], [y])
        count += 1
    return count


