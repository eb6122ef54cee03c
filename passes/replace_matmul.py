"""replace_matmul: MatMul (+ bias Add) -> TernaryMatMul / BinaryCodeMatMul / CodebookMatMul (ai.qcompiler).

Matches every linear (analyze) whose plan format is "ternary", "bcq" or "kmeans" and writes one
custom-op node in its place, keeping the name of the linear's output (after the bias Add)::

    Y = TernaryMatMul|BinaryCodeMatMul|CodebookMatMul(A, packed, scales, bias, outlier_idx, outlier_w)

packed in the layouts of ``qcompiler.ops.formats`` (the one written-down table). The op's ONNX
function bodies (standard ops only) and the ``ai.qcompiler`` opset import are added to the model,
so stock onnxruntime runs it without the native library; `qcompiler.ops.register` makes onnxruntime
take the native kernels instead.

Plan settings (scheme [weights] / [roles.*]):
- ternary: TWN per output channel (ternary_method "twn" or "optimal"); bcq: ``bits`` 1..4
  (default 2), alternating refinement (``iterations``); kmeans: ``bits`` 2..4 (default 4), per-row
  codebook (``iterations``, ``seed``).
- ``group_size`` (ternary, bcq; default per output channel = K), ``accuracy_level`` (0 or 4,
  default 0), ``scale_dtype`` ("float16" default, or "float32").
- ``recovery`` "none" (plain rounding, default) or "gptq": calibrated codes on the Gram matrix
  X^T X of the linear's input (qcompiler.quantizers.recovery) with ``n_outliers`` (default 2)
  input channels kept as FP16 rows; the pass then asks the pipeline for calibration statistics.
  Without statistics for a linear, or with too few calibration rows for its width
  (recovery.too_few_rows), it falls back to plain rounding and says so in the report.

The bias Add is folded into the op's bias input (a zero bias is written when there is none);
a weight shared by several MatMuls is quantized and packed once (with recovery: on the sum of its
consumers' Gram matrices); a transposed weight (MatMul(x, Transpose(W))) is read as [K, N].

The model must be at opset 21 (canonicalize converts it): a function's opset import must match
the model's. Leaves alone: linears planned in any other format, MatMuls whose activation is not float32, and
tied LM heads (the weight is an embedding table: quantize_embeddings owns it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qcompiler.analyze import Linear, weight_array
from qcompiler.errors import SchemeError, UsageError
from qcompiler.passes.base import (QPass, add_initializer, bias_input, consumer_grams, consumer_rows,
                                   drop_unused_weights, fresh_name, planned_linears, replace_linear)
from qcompiler.qat.on_grid import find_on_grid
from qcompiler.quantizers.recovery import (RecoveredWeight, held_out_check, output_error, quantize_plain, recover,
                                           shrinkage_for, too_few_rows)
from qcompiler.ops import contract

__all__ = ["ReplaceMatMul", "ReplaceMatMulOptions", "OP_OF_FORMAT", "PackedLinear", "quantize_and_pack"]

OP_OF_FORMAT = {"ternary": "TernaryMatMul", "bcq": "BinaryCodeMatMul", "kmeans": "CodebookMatMul"}
DEFAULT_BITS = {"ternary": None, "bcq": 2, "kmeans": 4}
KNOWN_SETTINGS = {"bits", "group_size", "accuracy_level", "recovery", "n_outliers", "scale_dtype",
                  "ternary_method", "iterations", "seed", "weighted"}
RECOVERY = ("none", "gptq")


@dataclasses.dataclass
class ReplaceMatMulOptions:
    damp: float = 0.01          # GPTQ: Hessian damping, fraction of its mean diagonal
    act_order: bool = True      # GPTQ: input channels by decreasing Hessian diagonal
    refit: bool = True          # GPTQ: least-squares scales given the codes (with outliers only)
    shrink_per_channel: float = 1.0   # GPTQ: Gram shrunk towards its diagonal by this x K / calibration rows


@dataclasses.dataclass
class PackedLinear:
    """One weight in its op's packed form (shared by every linear that reads it)."""

    op_type: str
    attrs: dict                 # K, N, group_size, bits (node attributes, accuracy_level added per node)
    packed: np.ndarray
    scales: np.ndarray
    outlier_idx: np.ndarray     # int64 [n_out]
    outlier_w: np.ndarray       # float16 [n_out, N]
    effective: np.ndarray       # float32 [K, N]: what the op multiplies by, outliers included
    method: str
    inputs: list = dataclasses.field(default_factory=list)   # the initializer Values, once written
    errors: dict = dataclasses.field(default_factory=dict)
    held_out: dict = dataclasses.field(default_factory=dict)   # recovery.held_out_check, when a split was held out


def _settings(lin_name: str, fmt: str, settings: dict) -> dict:
    unknown = set(settings) - KNOWN_SETTINGS
    if unknown:
        raise SchemeError(f"{fmt} weight {lin_name}: unknown settings {sorted(unknown)} (known: {sorted(KNOWN_SETTINGS)})")
    s = dict(settings)
    s["recovery"] = str(s.get("recovery", "none"))
    if s["recovery"] not in RECOVERY:
        raise SchemeError(f"recovery must be one of {RECOVERY}, got {s['recovery']!r} ({lin_name})")
    s.setdefault("n_outliers", 2 if s["recovery"] == "gptq" else 0)
    s.setdefault("accuracy_level", 0)
    if int(s["accuracy_level"]) not in contract.ACCURACY_LEVELS:
        raise SchemeError(f"accuracy_level must be 0 or 4, got {s['accuracy_level']} ({lin_name})")
    s.setdefault("scale_dtype", "float16")
    if s["scale_dtype"] not in ("float16", "float32"):
        raise SchemeError(f"scale_dtype must be float16 or float32 ({lin_name})")
    bits = s.get("bits", DEFAULT_BITS[fmt])
    if fmt == "ternary":
        bits = None
    elif bits not in contract.OPS[OP_OF_FORMAT[fmt]].allowed_bits:
        raise SchemeError(f"{fmt} bits must be one of {contract.OPS[OP_OF_FORMAT[fmt]].allowed_bits}, got {bits} ({lin_name})")
    s["bits"] = bits
    return s


def quantize_and_pack(w: np.ndarray, fmt: str, settings: dict, gram: np.ndarray | None = None,
                      options: ReplaceMatMulOptions | None = None, rows: int | None = None,
                      held_gram: np.ndarray | None = None) -> PackedLinear:
    """Codes of w [K, N] (plain, or GPTQ on `gram` of `rows` calibration rows when settings ask for
    it and the rows are enough: see recovery.too_few_rows) in the op's packed layout. With
    `held_gram` (a held-out split's Gram), GPTQ codes whose held-out output error is above plain
    rounding's are replaced by plain rounding."""
    o = options or ReplaceMatMulOptions()
    k, n = w.shape
    bits = settings["bits"]
    gs = settings.get("group_size")
    gs = None if gs is None or int(gs) >= k else int(gs)
    extra = {key: settings[key] for key in ("ternary_method", "iterations", "seed", "weighted") if key in settings}
    if fmt == "kmeans":
        gs = None
    rec = find_on_grid(w, fmt, bits, gs, settings["scale_dtype"], max_outliers=int(settings["n_outliers"])) \
        if fmt != "kmeans" else None       # trained with the quantizer in the loop: pack it as it is
    few = too_few_rows(rows, k) if gram is not None else None
    if rec is not None:
        method = "on-grid (lossless)"
    elif settings["recovery"] == "gptq" and gram is not None and few is None:
        rec: RecoveredWeight = recover(w, gram, fmt, bits, gs, n_outliers=int(settings["n_outliers"]),
                                       act_order=o.act_order, refit=o.refit, damp=o.damp,
                                       shrink=shrinkage_for(rows, k, o.shrink_per_channel), **extra)
        method = "gptq"
    else:
        extra.pop("weighted", None)
        rec = quantize_plain(w, fmt, bits, gs, **extra)
        method = ("plain" if settings["recovery"] == "none" else
                  f"plain ({few})" if few else "plain (no calibration statistics)")
    held = {}
    if method == "gptq" and held_gram is not None:
        extra.pop("weighted", None)
        plain = quantize_plain(w, fmt, bits, gs, **extra)
        held = held_out_check(w, rec.dequantized, plain.dequantized, gram, held_gram)
        if held["worse_than_plain"]:
            rec, method = plain, "plain (recovery worse than plain rounding on the held-out split)"
    op_type = OP_OF_FORMAT[fmt]
    sd = np.float16 if settings["scale_dtype"] == "float16" else np.float32
    group_size = int(rec.group_size) if fmt != "kmeans" else k
    if fmt == "ternary":
        packed, scales = _pack_by_columns(contract.pack_ternary, rec.codes.T, rec.scales.astype(sd), 0)
    elif fmt == "bcq":
        packed, scales = _pack_by_columns(contract.pack_binary_code, np.transpose(rec.codes, (0, 2, 1)),
                                          rec.scales.astype(sd), 1)
    else:
        packed, scales = _pack_by_columns(lambda c, sc: contract.pack_codebook(c, sc, bits), rec.codes.T,
                                          rec.scales.astype(sd), 0)
    attrs = {"K": k, "N": n, "group_size": group_size}
    if bits is not None:
        attrs["bits"] = int(bits)
    deq = _dequantize_by_columns(op_type, packed, scales, attrs)
    idx = np.asarray(rec.outlier_idx, np.int64)
    # outlier rows: every op ignores the packed rows there and adds these float16 rows alone
    outlier_w = rec.dequantized[idx].astype(np.float16)
    effective = deq                      # deq is not used past this point: no copy
    effective[idx] = outlier_w.astype(np.float32)
    return PackedLinear(op_type, attrs, packed, scales, idx, outlier_w.reshape(len(idx), n), effective, method,
                        held_out=held)


DEQUANT_COLUMNS = 256   # output channels decoded at a time (the contract's unpacking widens codes)


def _pack_by_columns(pack, codes: np.ndarray, scales: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """A contract packer applied DEQUANT_COLUMNS output channels at a time (axis = the N axis of
    codes and scales): the layouts are per output channel, so the bytes are the same as one call,
    and the packer's widened temporaries stay a slice's worth."""
    n = codes.shape[axis]
    packed, out_scales = [], []
    for start in range(0, n, DEQUANT_COLUMNS):
        cols = np.arange(start, min(n, start + DEQUANT_COLUMNS))
        p, sc = pack(np.take(codes, cols, axis=axis), np.take(scales, cols, axis=axis))
        packed.append(p)
        out_scales.append(sc)
    return np.concatenate(packed, axis=axis), np.concatenate(out_scales, axis=axis)


def _dequantize_by_columns(op_type: str, packed: np.ndarray, scales: np.ndarray, attrs: dict) -> np.ndarray:
    """contract.dequantize, DEQUANT_COLUMNS output channels at a time: every packed layout is
    per output channel, so slices decode independently and the unpacking's temporaries stay a
    slice's worth (a 4096x4096 weight: 0.4-0.7 GB at once -> a few tens of MB)."""
    k, n = attrs["K"], attrs["N"]
    axis = 1 if op_type == "BinaryCodeMatMul" else 0       # [bits, N, ...] or [N, ...]
    out = np.empty((k, n), np.float32)
    for start in range(0, n, DEQUANT_COLUMNS):
        end = min(n, start + DEQUANT_COLUMNS)
        take = lambda a: np.take(a, np.arange(start, end), axis=axis)  # noqa: E731
        out[:, start:end] = contract.dequantize(op_type, take(packed), take(scales), **{**attrs, "N": end - start})
    return out


def _node_name(lin: Linear, op_type: str, taken: set[str]) -> str:
    base = lin.node.name or lin.output.name
    name = fresh_name(base[: -len("MatMul")] + op_type if base.endswith("MatMul") else f"{base}/{op_type}", taken)
    taken.add(name)
    return name


class ReplaceMatMul(QPass):
    """Rewrite every ternary/bcq/kmeans-planned linear to its ai.qcompiler op with packed weights."""

    name = "replace_matmul"
    stage = "transform"
    Options = ReplaceMatMulOptions

    def _mine(self) -> list:
        return planned_linears(self.ctx, OP_OF_FORMAT)

    @property
    def needs_stats(self) -> bool:  # read by the pipeline after the plan is made
        return any(str(p.settings.get("recovery", "none")) == "gptq" for _, p in self._mine())

    @property
    def needs_gram(self) -> bool:
        return self.needs_stats

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        todo = []
        for lin, plan in self._mine():
            if lin.node.inputs[0].dtype not in (None, ir.DataType.FLOAT):
                self.report_append("left_alone", {"weight": lin.name, "reason": "activation is not float32"})
                continue
            todo.append((lin, plan, _settings(lin.name, plan.format, plan.settings)))
        if not todo:
            return ir.passes.PassResult(model, False)
        opset = model.opset_imports.get("", 0)
        if opset != contract.STANDARD_OPSET:
            raise UsageError(
                f"replace_matmul writes ONNX function bodies at opset {contract.STANDARD_OPSET}, but the model is "
                f"opset {opset}: run canonicalize first (it converts to {contract.STANDARD_OPSET})")
        ctx = self.ctx
        graph = model.graph
        stats = ctx.stats or {}
        grams = consumer_grams([lin for lin, _, s in todo if s["recovery"] == "gptq"], stats)
        rows = consumer_rows([lin for lin, _, s in todo if s["recovery"] == "gptq"], stats)
        held_grams = consumer_grams([lin for lin, _, s in todo if s["recovery"] == "gptq"], ctx.held_stats or {})
        packed: dict[tuple, PackedLinear] = {}
        bytes_before = bytes_after = 0
        for i, (lin, plan, s) in enumerate(todo):
            ctx.progress(plan.format, i, len(todo))
            key = (lin.name, plan.format, repr(sorted((k, v) for k, v in s.items() if k != "accuracy_level")))
            w = None
            if key not in packed:
                w = weight_array(lin)
                p = quantize_and_pack(w, plan.format, s, grams.get(lin.name), self.options, rows.get(lin.name),
                                      held_grams.get(lin.name))
                base = lin.weight.name
                p.inputs = [
                    add_initializer(graph, f"{base}_{plan.format}_packed", p.packed),
                    add_initializer(graph, f"{base}_{'codebook' if plan.format == 'kmeans' else 'scales'}", p.scales),
                    add_initializer(graph, f"{base}_outlier_idx", p.outlier_idx),
                    add_initializer(graph, f"{base}_outlier_w", p.outlier_w),
                ]
                packed[key] = p
                bytes_before += lin.weight.const_value.nbytes
                bytes_after += sum(v.const_value.nbytes for v in p.inputs)
                rel = float(np.linalg.norm(p.effective - w) / max(np.linalg.norm(w), 1e-30))
                entry_err = {"rel_error": round(rel, 5)}
                if lin.name in grams:
                    H = grams[lin.name]
                    entry_err["output_rel_error"] = round(float(
                        output_error(w, p.effective, H) / max(output_error(w, np.zeros_like(w), H), 1e-30)), 5)
                p.errors = entry_err
                p.effective = p.packed = None  # the initializers hold the bytes; a streaming compile spills them
            p = packed[key]
            form = self._rewrite(graph, lin, p, int(s["accuracy_level"]))
            k, n = p.attrs["K"], p.attrs["N"]
            bpw = contract.bits_per_weight(p.op_type, K=k, N=n, group_size=p.attrs["group_size"],
                                           bits=p.attrs.get("bits"), scale_bytes=p.scales.dtype.itemsize,
                                           n_out=len(p.outlier_idx))
            self.report_append("linears", {
                "weight": lin.name, "node": lin.node.name, "role": lin.role, "layer": lin.layer,
                "format": plan.format, "op": p.op_type, "bits": p.attrs.get("bits", 2 if plan.format == "ternary" else None),
                "group_size": p.attrs["group_size"], "bits_per_weight": round(bpw, 4),
                "n_outliers": int(len(p.outlier_idx)), "method": p.method, "form": form,
                "shared": w is None, **p.errors, **({"held_out": p.held_out} if p.held_out else {}),
            })
        ctx.progress("replace_matmul", len(todo), len(todo))
        drop_unused_weights(graph, [lin for lin, _, _ in todo])
        contract.attach_functions(model)
        errors = [p.errors["rel_error"] for p in packed.values()]
        self.report("replaced", len(todo))
        self.report("packed_weights", len(packed))
        self.report("bytes_before", int(bytes_before))
        self.report("bytes_after", int(bytes_after))
        self.report("rel_error_mean", round(float(np.mean(errors)), 5))
        self.report("rel_error_max", round(float(np.max(errors)), 5))
        return ir.passes.PassResult(model, True)

    def _rewrite(self, graph: ir.Graph, lin: Linear, p: PackedLinear, accuracy_level: int) -> str:
        k, n = p.attrs["K"], p.attrs["N"]
        bias, folded = bias_input(graph, lin, n)
        attributes = dict(contract.node_attributes(p.op_type, K=k, N=n, group_size=p.attrs["group_size"],
                                                   bits=p.attrs.get("bits"), accuracy_level=accuracy_level))
        node = ir.node(p.op_type, [lin.node.inputs[0], p.inputs[0], p.inputs[1], bias, p.inputs[2], p.inputs[3]],
                       attributes, domain=contract.DOMAIN,
                       name=_node_name(lin, p.op_type, {n.name for n in graph.all_nodes() if n.name}))
        return p.op_type + replace_linear(lin, node, folded)
