"""insert_qdq: int8 per-channel weights with dynamic or calibrated static int8 activations.

Matches every linear (analyze: a MatMul on a float initializer, optional bias Add) whose plan
format is "int8" and writes one of two standard-op forms; the linear's final output keeps its name.

dynamic (default) — the form onnxruntime's quantize_dynamic emits, which its graph optimizer
fuses into MatMulIntegerToFloat / DynamicQuantizeMatMul (int8 GEMM kernels)::

    xq, xs, xzp = DynamicQuantizeLinear(x)                       # uint8, per tensor, per run
    y = Mul(Cast(MatMulInteger(xq, W_int8, xzp, W_zp=0), FLOAT), Mul(xs, w_scale[N])) (+ bias)

static — QuantizeLinear/DequantizeLinear pairs with a per-tensor uint8 range calibrated on
the activation samples (minmax, percentile or mse), the weight as
DequantizeLinear(W_int8, w_scale[N], axis=1) feeding the original MatMul.

Outlier channels: when the calibrated channel_absmax of an input channel exceeds
outlier_ratio times the median, up to outlier_channels of them (the largest) skip the integer
path (only for linears whose role is in outlier_roles; "all" for every one): the integer path reads x * mask (those channels zeroed, so they no longer set the
per-tensor range) and W with their rows zeroed, and MatMul(Gather(x, idx, axis=-1), W[idx, :])
in FP32 is added to the output. Linears that read the same activation share the mask, the
Gather and the DynamicQuantizeLinear.

Weights are int8 with zero point 0, as quantize_dynamic writes them: onnxruntime's u8s8 kernels
(measured: uint8 weights run MiniLM 1.5x slower on an AVX512-VNNI machine). On x86 without VNNI
those kernels sum pairs of u8 x s8 products in int16 with saturation, so full-range int8 codes
give wrong sums there (tiny BERT output error 0.28 instead of 0.01 on an AVX2 EPYC). weight_bits
"auto" (default) takes 8 ([-127, 127]) where the compiling CPU's int8 dot products are exact
(VNNI, AMX, ARM) and 7 ([-63, 63], onnxruntime's reduce_range idea, exact on every CPU) elsewhere,
and the report says which and why: a model compiled on a VNNI machine for AVX2-only x86 targets
wants weight_bits = 7.
Measured on all-MiniLM-L6-v2 (200 sentences, mean-pooled cosine vs FP32, with int8 embeddings):
no outliers 0.9928; outlier_roles ["ffn_down"], ratio 8 (4 sites) 0.9956 at quantize_dynamic's
latency; every role, ratio 8 (10 sites) 0.9973, a few percent slower; quantize_dynamic 0.9925.

Left alone: linears planned "keep" or any other format, a tied LM head reading an embedding
table (quantize_embeddings owns it), and MatMuls whose weight is already produced by a
DequantizeLinear (a graph quantized by another tool is not quantized twice: analyze() does not
see those as linears).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qcompiler.analyze import Linear, _weight_source, weight_array
from qcompiler.errors import SchemeError
from qcompiler.machine import int8_dot_saturates
from qcompiler.passes.base import QPass, fresh_name
from qcompiler.quantizers.uniform import quantize_per_channel_symmetric

__all__ = ["InsertQDQ", "InsertQDQOptions", "activation_range"]


@dataclasses.dataclass
class InsertQDQOptions:
    activations: str = "dynamic"      # "dynamic" | "static"
    calibration: str = "minmax"       # static ranges: "minmax" | "percentile" | "mse"
    percentile: float = 99.99         # for calibration = "percentile" (two-sided)
    outlier_channels: int = 4         # per linear, at most; 0 disables
    outlier_ratio: float = 16.0       # channel_absmax > ratio * median(channel_absmax) is an outlier
    outlier_roles: list[str] = dataclasses.field(default_factory=lambda: ["all"])  # roles that may keep outliers
    # 7: codes in [-63, 63], exact on every CPU; 8: [-127, 127], exact only where onnxruntime has
    # int8 dot products without int16 saturation (VNNI, NEON sdot, AMX): on AVX2 its u8s8 kernel
    # sums pairs of uint8 x int8 products in int16, which 255 * 127 * 2 overflows.
    # "auto": 8 where this CPU's are exact, else 7 (qcompiler.machine.int8_dot_saturates).
    weight_bits: int | str = "auto"


def _weight_bits(option: int | str) -> tuple[int, str]:
    """The weight code width for option 7 / 8 / "auto", and why (for the report)."""
    if option != "auto":
        return int(option), "set by the scheme"
    saturates, why = int8_dot_saturates()
    if saturates:
        return 7, f"this CPU ({why}): 8-bit codes would overflow onnxruntime's int8 kernels"
    return 8, f"this CPU ({why}); for x86 targets without VNNI set weight_bits = 7"


def activation_range(samples: np.ndarray, method: str, lo: float, hi: float, percentile: float = 99.99) -> tuple[float, float]:
    """The per-tensor [lo, hi] (containing 0) that a static uint8 activation quantizer uses.

    lo/hi are the calibrated bounds (minmax); percentile clips both tails of the reservoir
    samples; mse shrinks [lo, hi] by the factor that minimises the fake-quant error on them.
    """
    flat = np.asarray(samples, np.float32).reshape(-1)
    if method == "minmax" or flat.size == 0:
        pass
    elif method == "percentile":
        lo, hi = (float(v) for v in np.percentile(flat, [100.0 - percentile, percentile]))
    elif method == "mse":
        best, best_err = (lo, hi), np.inf
        for r in np.linspace(1.0, 0.05, 96):
            a, b = lo * r, hi * r
            err = float(np.mean((_fake_quant(flat, a, b) - flat) ** 2))
            if err < best_err:
                best, best_err = (a, b), err
        lo, hi = best
    else:
        raise SchemeError(f"insert_qdq: unknown calibration '{method}' (minmax, percentile, mse)")
    return min(float(lo), 0.0), max(float(hi), 0.0)


def _uint8_params(lo: float, hi: float) -> tuple[float, int]:
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(np.rint(-lo / scale), 0, 255))
    return float(scale), zp


def _fake_quant(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale, zp = _uint8_params(lo, hi)
    return (np.clip(np.rint(x / scale) + zp, 0, 255) - zp) * scale


def select_outliers(stats, max_channels: int, ratio: float) -> np.ndarray:
    """Input channels whose calibrated absmax exceeds ratio x the median, largest first."""
    if stats is None or max_channels <= 0:
        return np.zeros(0, np.int64)
    absmax = np.asarray(stats.channel_absmax, np.float64)
    median = float(np.median(absmax))
    if median <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-absmax, kind="stable")[:max_channels]
    return np.sort(order[absmax[order] > ratio * median]).astype(np.int64)


@dataclasses.dataclass
class _Input:
    """What the linears sharing one activation (and one outlier set) read."""

    main: ir.Value                     # x, or x * mask
    outliers: ir.Value | None          # Gather(x, idx, axis=-1)
    dql: tuple[ir.Value, ir.Value, ir.Value] | None = None         # dynamic: xq, xs, xzp
    qdq: ir.Value | None = None                                      # static: DQ(Q(x))
    act_range: tuple[float, float] | None = None


class InsertQDQ(QPass):
    __doc__ = __doc__
    name = "insert_qdq"
    stage = "transform"
    Options = InsertQDQOptions
    needs_stats = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opts = self.options
        if opts.activations not in ("dynamic", "static"):
            raise SchemeError(f"insert_qdq: activations must be 'dynamic' or 'static', not '{opts.activations}'")
        if opts.calibration not in ("minmax", "percentile", "mse"):
            raise SchemeError(f"insert_qdq: unknown calibration '{opts.calibration}' (minmax, percentile, mse)")
        if opts.weight_bits not in (7, 8, "auto") or isinstance(opts.weight_bits, bool):
            raise SchemeError(f"insert_qdq: weight_bits must be 7 (exact on every CPU), 8 or \"auto\", not {opts.weight_bits!r}")
        self._bits, bits_reason = _weight_bits(opts.weight_bits)
        ctx = self.ctx
        graph = model.graph
        tables = {e.table.name for e in (ctx.roles.embeddings if ctx.roles else [])}
        self._names = UniqueNames(graph)
        self._inputs: dict[tuple, _Input] = {}
        self._weights: dict[tuple, tuple] = {}
        done = 0
        for lin in list(ctx.roles.linears if ctx.roles else []):
            wp = ctx.plan.get(lin.name)
            if wp is None or wp.format != "int8":
                continue
            if lin.name in tables or wp.role == "embedding":
                self.report_append("skipped", {"weight": lin.name, "reason": "tied to an embedding table (quantize_embeddings owns it)"})
                continue
            if lin.node.graph is None or _weight_source(lin.node.inputs[1]) != (lin.weight, lin.transposed):
                self.report_append("skipped", {"weight": lin.name, "reason": "graph changed since analyze"})
                continue
            self._rewrite(graph, lin)
            done += 1
            ctx.progress("int8", done, len(ctx.roles.linears))  # a streaming compile spills the new weights here
        self.report("activations", opts.activations)
        self.report("weight_bits", {"bits": self._bits, "reason": bits_reason})
        if opts.activations == "static":
            self.report("calibration", opts.calibration)
        self.report("quantized", done)
        return ir.passes.PassResult(model, done > 0)

    # -- one linear ---------------------------------------------------------------------------
    def _rewrite(self, graph: ir.Graph, lin: Linear) -> None:
        opts = self.options
        x = lin.node.inputs[0]
        stats = self.ctx.stats.get(x.name)
        idx = np.zeros(0, np.int64)
        if "all" in opts.outlier_roles or lin.role in opts.outlier_roles:
            idx = select_outliers(stats, opts.outlier_channels, opts.outlier_ratio)
        base = lin.node.name or lin.weight.name
        tape = ir.tape.Tape()

        inp = self._prepare_input(tape, x, idx, stats, lin.node.graph)
        w_q, w_scale, w_zp, w_out, w_err = self._weight(tape, lin, idx)

        if opts.activations == "dynamic":
            xq, xs, xzp = inp.dql
            acc = self._names.op(tape, "MatMulInteger", [xq, w_q, xzp, w_zp], name=f"{base}_MatMulInteger")
            acc_f = self._names.op(tape, "Cast", [acc], {"to": ir.DataType.FLOAT}, name=f"{base}_Cast")
            scale = self._names.op(tape, "Mul", [xs, w_scale], name=f"{base}_scales_mul")
            y = self._names.op(tape, "Mul", [acc_f, scale], name=f"{base}_output_scale_mul")
        else:
            w_dq = self._names.op(tape, "DequantizeLinear", [w_q, w_scale, w_zp], {"axis": 1}, name=f"{base}_weight_DequantizeLinear")
            y = self._names.op(tape, "MatMul", [inp.qdq, w_dq], name=f"{base}_MatMul")
        bias_add = None
        if lin.bias is not None:
            b_in = [lin.bias, y] if lin.bias_node.inputs[0] is lin.bias else [y, lin.bias]
            y = self._names.op(tape, "Add", b_in, name=f"{base}_bias_Add")
            bias_add = y.producer()
        if w_out is not None:
            extra = self._names.op(tape, "MatMul", [inp.outliers, w_out], name=f"{base}_outlier_MatMul")
            y = self._names.op(tape, "Add", [y, extra], name=f"{base}_outlier_Add")

        old_out = lin.output
        for init in tape.initializers:   # the main graph's initializers are visible in every subgraph
            graph.register_initializer(init)
        home = lin.node.graph            # the main graph, or the If/Loop/Scan body the linear is in
        home.insert_before(lin.node, tape.nodes)
        name = old_out.name
        ir.convenience.replace_all_uses_with(old_out, y, replace_graph_outputs=True)
        old_nodes = [lin.node] + ([lin.bias_node] if lin.bias_node is not None else [])
        for node in reversed(old_nodes):
            home.remove(node, safe=True)
        # The old value (now detached) keeps its name too: the pipeline reads lin.output.name later.
        y.name = name
        y.type, y.shape = old_out.type, old_out.shape
        if bias_add is not None and lin.bias_node.name:
            bias_add.name = lin.bias_node.name  # the original node is gone: its name is free again
        self._drop_if_unused(graph, lin)
        entry = {
            "weight": lin.name, "node": lin.node.name, "role": lin.role, "layer": lin.layer,
            "shape_kn": list(lin.shape_kn), "activations": opts.activations,
            "outlier_channels": [int(i) for i in idx], "weight_rel_l2": w_err,
        }
        if inp.act_range is not None:
            entry["activation_range"] = [round(v, 6) for v in inp.act_range]
        self.report_append("linears", entry)

    def _prepare_input(self, tape: ir.tape.Tape, x: ir.Value, idx: np.ndarray, stats, home) -> _Input:
        # Per graph: a value of the main graph read in two branches is quantized once in each.
        key = (id(x), id(home), tuple(int(i) for i in idx))
        if key in self._inputs:
            return self._inputs[key]
        tag = x.name + (f"_out{len(idx)}" if len(idx) else "")
        main, outliers = x, None
        if len(idx):
            c = int(stats.channel_absmax.shape[0])
            mask = np.ones(c, np.float32)
            mask[idx] = 0.0
            mask_v = self._const(tape, f"{tag}_mask", mask)
            idx_v = self._const(tape, f"{tag}_idx", idx.astype(np.int64))
            main = self._names.op(tape, "Mul", [x, mask_v], name=f"{tag}_mask_Mul")
            outliers = self._names.op(tape, "Gather", [x, idx_v], {"axis": -1}, name=f"{tag}_outlier_Gather")
        inp = _Input(main, outliers)
        if self.options.activations == "dynamic":
            outs = tape.op_multi_out("DynamicQuantizeLinear", [main], num_outputs=3,
                                     name=self._names.unique(f"{tag}_DynamicQuantizeLinear", node=True))
            for v, suffix in zip(outs, ("quantized", "scale", "zero_point")):
                v.name = self._names.unique(f"{tag}_{suffix}")
            inp.dql = tuple(outs)
        else:
            lo, hi = self._static_range(stats, idx, x.name)
            scale, zp = _uint8_params(lo, hi)
            s_v = self._const(tape, f"{tag}_scale", np.array(scale, np.float32))
            z_v = self._const(tape, f"{tag}_zero_point", np.array(zp, np.uint8))
            q = self._names.op(tape, "QuantizeLinear", [main, s_v, z_v], name=f"{tag}_QuantizeLinear")
            inp.qdq = self._names.op(tape, "DequantizeLinear", [q, s_v, z_v], name=f"{tag}_DequantizeLinear")
            inp.act_range = (lo, hi)
        self._inputs[key] = inp
        return inp

    def _static_range(self, stats, idx: np.ndarray, name: str) -> tuple[float, float]:
        if stats is None:
            raise SchemeError(f"insert_qdq: static activations need calibration stats for '{name}'")
        keep = np.ones(stats.channel_absmax.shape[0], bool)
        keep[idx] = False
        bound = float(np.max(stats.channel_absmax[keep])) if keep.any() else 0.0
        lo = max(float(stats.min), -bound)
        hi = min(float(stats.max), bound)
        samples = stats.samples[:, keep] if stats.samples is not None and stats.samples.size else np.zeros((0, 1))
        if samples.size:  # the reservoir's own extremes are the tightest minmax bounds
            lo, hi = min(lo, float(samples.min())), max(hi, float(samples.max()))
        return activation_range(samples, self.options.calibration, lo, hi, self.options.percentile)

    def _weight(self, tape: ir.tape.Tape, lin: Linear, idx: np.ndarray):
        key = (lin.weight.name, tuple(int(i) for i in idx))
        if key in self._weights:
            return self._weights[key]
        w = weight_array(lin)
        w_main = w.copy()
        w_main[idx, :] = 0.0
        q = quantize_per_channel_symmetric(w_main, bits=self._bits, axis=1)
        effective = q.dequantize()
        effective[idx, :] = w[idx, :]
        err = float(np.linalg.norm(effective - w) / max(np.linalg.norm(w), 1e-30))
        tag = lin.weight.name + (f"_out{len(idx)}" if len(idx) else "")
        w_q = self._const(tape, f"{tag}_quantized", q.codes)
        w_scale = self._const(tape, f"{tag}_scale", q.scales.astype(np.float32))
        w_zp = self._const(tape, f"{tag}_zero_point", np.zeros(q.scales.shape[0], np.int8))
        w_out = self._const(tape, f"{tag}_outlier_rows", np.ascontiguousarray(w[idx, :])) if len(idx) else None
        self._weights[key] = (w_q, w_scale, w_zp, w_out, round(err, 6))
        return self._weights[key]

    def _const(self, tape: ir.tape.Tape, name: str, array: np.ndarray) -> ir.Value:
        name = self._names.unique(name)
        return tape.initializer(ir.tensor(np.ascontiguousarray(array), name=name), name=name)

    @staticmethod
    def _drop_if_unused(graph: ir.Graph, lin: Linear) -> None:
        """Remove the FP32 weight (and its Transpose) once nothing reads it."""
        w = lin.weight
        for use in list(w.uses()):  # a Transpose(W) nobody reads any more
            node = use.node
            if node.op_type == "Transpose" and not list(node.outputs[0].uses()) and not node.outputs[0].is_graph_output():
                node.graph.remove(node, safe=True)
        if not list(w.uses()) and not w.is_graph_output() and w.name in graph.initializers:
            del graph.initializers[w.name]


class UniqueNames:
    """Readable names for new values and nodes that never collide with the graph's own."""

    def __init__(self, graph: ir.Graph) -> None:
        self.values = {v.name for v in graph.inputs} | set(graph.initializers)
        self.nodes = set()
        for node in graph.all_nodes():
            self.nodes.add(node.name)
            self.values.update(o.name for o in node.outputs)

    def unique(self, name: str, node: bool = False) -> str:
        taken = self.nodes if node else self.values
        candidate = fresh_name(name, taken)
        taken.add(candidate)
        return candidate

    def op(self, tape: ir.tape.Tape, op_type: str, inputs, attributes=None, *, name: str, domain: str = "") -> ir.Value:
        """One single-output node named `name`, its output `name`_output_0."""
        name = self.unique(name, node=True)
        out = tape.op(op_type, inputs, attributes, name=name, domain=domain)
        out.name = self.unique(f"{name}_output_0")
        return out
