"""quantize_int4: blockwise 4-bit weights for every linear the plan marks "int4".

Each such linear's weight W [K, N] gets 4-bit codes in blocks of `block_size` consecutive
rows along K (settings `block_size` 16/32/64/128/256, default 32, and `symmetric`, default
true), one float scale per block and column, and for asymmetric codes one 4-bit zero point.
The clipping range of every block is the one that minimises its squared weight error
(`qcompiler.quantizers.uniform.quantize_blockwise` with search_clip: shrink ratios 1, 0.8 and 0.6,
then the step halved twice around each block's best; symmetric codes use the full range -8..7,
and the scale is refit by least squares). Written as:

- target "ort" (default): one com.microsoft MatMulNBits node (runs natively in stock
  onnxruntime) reading A, B packed uint8 [N, n_blocks, block_size/2] (column n, block g,
  byte j holds codes k = 2j in the low nibble and k = 2j + 1 in the high nibble, unsigned
  0..15, rows past K zero), scales [N * n_blocks] and, when asymmetric, zero points uint8
  [N * ceil(n_blocks/2)] packed the same way (row n, low nibble first, an odd row padded
  with 8; symmetric codes need none: the op's default zero point is 8). The bias Add becomes
  the op's bias input.
  `accuracy_level` (option, default 4) lets the kernel quantize activations to int8.
- target "qcompiler" (onnxruntime with this project's op library): one ai.qcompiler Int4MatMul
  (runtime_ops.formats) on the same codes and scales, W_packed [N, ceil(K/2)] (column n's codes
  + 8, element k in the low nibble when k is even), its bias and FP16 outlier rows as the op's
  own inputs, zero points uint8 [N, ceil(G/2)] (4-bit, all 8 for symmetric codes); the library
  runs it on its batched int8 path at every M, and the ONNX function body the file carries runs
  it anywhere else (slowly: it dequantizes the weight per run). Linears whose activations are not
  float32 stay MatMulNBits.
- target "portable": standard ONNX only. An opset-21 blockwise DequantizeLinear (axis 0 along
  K, block_size) of an INT4 (symmetric) or UINT4 (+ UINT4 zero point) initializer [K, N] feeds
  the original MatMul; the model's opset must be >= 21 (canonicalize upgrades to 21).
  onnxruntime fuses the pair into its MatMulNBits kernel itself (at the session option
  session.qdq_matmulnbits_accuracy_level, default 4), so it runs as fast as the ort form.

With `recovery = "gptq"` (plan setting) and calibration statistics, the codes come from the
GPTQ-style recovery on the Gram matrix X^T X of the linear's input (qcompiler.quantizers.recovery:
error feedback over input rows, act-order, per-block scale refit), and `n_outliers` (default 2)
input channels with the largest Hessian diagonal keep their weight rows in FP16: their int4 codes
are the code of 0 and a side path adds them exactly,
``Y = MatMulNBits(A) + MatMul(Gather(A, outlier_idx, axis=-1), Cast(outlier_w_fp16))``; Int4MatMul
takes the rows as its own inputs (no side path), with `n_outliers_native` of them (default:
`n_outliers`).
Without statistics for a linear, or with too few calibration rows for its width
(recovery.too_few_rows), it falls back to plain rounding and says so in the report.

Both forms keep the name of the linear's output (after the bias Add) so verification can
compare layer by layer; new nodes and initializers are named after the originals.

Leaves alone: MatMuls whose weight is not a constant initializer (an activation, or the
output of another tool's DequantizeLinear), linears planned in any other format, and a
linear whose weight is an embedding table (a tied LM head: quantize_embeddings owns it).
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import onnx_ir as ir

from qcompiler.analyze import Linear, weight_array
from qcompiler.context import TARGETS
from qcompiler.ops import contract
from qcompiler.errors import SchemeError, UsageError
from qcompiler.passes.base import (QPass, add_initializer, bias_input, consumer_grams, consumer_rows,
                                   drop_unused_weights, fresh_name, planned_linears, replace_linear)
from qcompiler.qat.on_grid import find_on_grid
from qcompiler.quantizers.recovery import held_out_check, output_error, recover, shrinkage_for, too_few_rows
from qcompiler.quantizers.uniform import Quantized, quantize_blockwise

__all__ = ["QuantizeInt4", "quantize_int4_weight", "pack_matmul_nbits", "unsigned_codes"]

FORMAT = "int4"
DEFAULT_BLOCK_SIZE = 32
BLOCK_SIZES = (16, 32, 64, 128, 256)   # MatMulNBits: a power of two >= 16
MS_DOMAIN = "com.microsoft"
PORTABLE_MIN_OPSET = 21                # blockwise DequantizeLinear and INT4/UINT4
COLUMN_SLICE = 128                     # columns quantized at a time (see quantize_int4_weight)


@dataclasses.dataclass
class QuantizeInt4Options:
    accuracy_level: int = 4    # MatMulNBits: 0 = fp32 activations, 4 = int8 activations (faster)
    grid: int = 3              # clipping ratios tried per block, from 1 down to min_ratio ...
    min_ratio: float = 0.6
    zoom: int = 2              # ... then the step halved twice around each block's best (7 ratios in all)
    refine: int = 1            # least-squares scale refits per block
    fold_bias: bool = True     # bias Add -> MatMulNBits' bias input
    damp: float = 0.01         # GPTQ: Hessian damping, fraction of its mean diagonal
    act_order: bool = True     # GPTQ: input channels by decreasing Hessian diagonal
    refit: bool = True         # GPTQ: least-squares scales given the codes
    shrink_per_channel: float = 1.0  # GPTQ: Gram shrunk towards its diagonal by this x K / calibration rows


def quantize_int4_weight(
    w: np.ndarray, block_size: int = DEFAULT_BLOCK_SIZE, symmetric: bool = True,
    grid: int = 3, min_ratio: float = 0.6, refine: int = 1, zoom: int = 2,
) -> Quantized:
    """Blockwise int4 codes of w [K, N] with the error-minimising clip range per block.

    Columns are independent, so they go in slices of COLUMN_SLICE (the same codes, bit for bit):
    the search's temporaries stay small (a 4096 x 4096 weight in one piece needs ~12x its size)
    and cache-resident (measured 4x faster on 4096 x 1024), two slices at a time.
    """
    def one(start: int) -> Quantized:
        return quantize_blockwise(np.ascontiguousarray(w[:, start:start + COLUMN_SLICE]), bits=4,
                                  block_size=block_size, symmetric=symmetric, search_clip=True, grid=grid,
                                  min_ratio=min_ratio, full_range=symmetric, refine=refine, zoom=zoom)

    w = np.asarray(w, dtype=np.float32)
    starts = range(0, w.shape[1], COLUMN_SLICE)
    if len(starts) == 1:
        return one(0)
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:  # numpy releases the GIL
        parts = list(pool.map(one, starts))
    zps = [q.zero_points for q in parts]
    return Quantized(np.concatenate([q.codes for q in parts], axis=1), np.concatenate([q.scales for q in parts]),
                     None if zps[0] is None else np.concatenate(zps), parts[0].block_size,
                     squared_error=sum(q.squared_error for q in parts), squared_norm=sum(q.squared_norm for q in parts))


def _recovery(name: str, settings: dict) -> str:
    recovery = str(settings.get("recovery", "none"))
    if recovery not in ("none", "gptq"):
        raise SchemeError(f"int4 recovery must be 'none' or 'gptq', got {recovery!r} ({name})")
    return recovery


def int4_settings(name: str, settings: dict, native: bool = False) -> tuple[int, bool, str, int]:
    """(block_size, symmetric, recovery, n_outliers) of one plan entry, with this pass's defaults.
    native: the form carries outlier rows in the op itself (Int4MatMul), where `n_outliers_native`
    (default: `n_outliers`) applies; the other forms add a side path per linear for them."""
    block_size = int(settings.get("block_size", DEFAULT_BLOCK_SIZE))
    if block_size not in BLOCK_SIZES:
        raise SchemeError(f"int4 block_size must be one of {BLOCK_SIZES}, got {block_size} ({name})")
    recovery = _recovery(name, settings)
    n_outliers = int(settings.get("n_outliers", 2 if recovery == "gptq" else 0))
    if native:
        n_outliers = int(settings.get("n_outliers_native", n_outliers))
    return block_size, bool(settings.get("symmetric", True)), recovery, n_outliers


def unsigned_codes(q: Quantized) -> tuple[np.ndarray, np.ndarray]:
    """Codes as unsigned 0..15 [K, N] and zero points [N, G] (8 for symmetric codes)."""
    if q.zero_points is None:
        codes = q.codes.view(np.uint8) + np.uint8(8)       # -8..7 -> 0..15 (wraps mod 256)
        zp = np.full(q.scales.shape, 8, dtype=np.uint8)
    else:
        codes, zp = q.codes.astype(np.uint8, copy=False), q.zero_points.astype(np.uint8)
    return codes, zp


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """[..., 2m] of 0..15 -> [..., m] uint8, element 2j in the low nibble."""
    values = values.astype(np.uint8)
    return (values[..., 0::2] & 0x0F) | ((values[..., 1::2] & 0x0F) << 4)


def pack_matmul_nbits(codes: np.ndarray, zero_points: np.ndarray | None, block_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """MatMulNBits' B [N, G, block_size/2] and packed zero points [N * ceil(G/2)] (or None).

    codes: unsigned 0..15 [K, N]; zero_points: [N, G] unsigned 0..15, None for the default 8.
    Rows of the last block past K are 0 and an odd count's last zero-point nibble is 8, as
    onnxruntime's quantizer writes them. Packed COLUMN_SLICE columns at a time: consecutive rows
    pair into bytes first, then the half-size slice is transposed (a whole uint8 [K, N]
    transpose is cache-hostile: 0.12 s for 4096 x 4096, now ~0.02 s).
    """
    k, n = codes.shape
    g = -(-k // block_size)
    half = g * block_size // 2
    b = np.empty((n, half), dtype=np.uint8)
    for s in range(0, n, COLUMN_SLICE):
        part = codes[:, s:s + COLUMN_SLICE]
        if k < 2 * half:
            part = np.concatenate([part, np.zeros((2 * half - k, part.shape[1]), np.uint8)])
        b[s:s + COLUMN_SLICE] = ((part[0::2] & 0x0F) | ((part[1::2] & 0x0F) << 4)).T
    b = b.reshape(n, g, block_size // 2)
    if zero_points is None:
        return b, None
    zp = np.full((n, g + (g & 1)), 8, dtype=np.uint8)
    zp[:, :g] = zero_points
    return b, _pack_nibbles(zp).reshape(-1)


def _rel_error_by_slices(q: Quantized, w: np.ndarray) -> float:
    """||dequantize(q) - w|| / ||w||, COLUMN_SLICE columns at a time: no full-size float copy, and
    cache-resident (measured 4x faster than one dequantize of a 4096 x 4096 weight). The error
    comes from the quantizer when it kept it (its search scored every block's final scale)."""
    if q.squared_error is not None and q.squared_norm is not None:
        return float(np.sqrt(q.squared_error) / max(np.sqrt(q.squared_norm), 1e-30))
    err = ref = 0.0
    for s in range(0, w.shape[1], COLUMN_SLICE):
        cols = slice(s, s + COLUMN_SLICE)
        ws = w[:, cols]
        ref += float(np.einsum("kn,kn->n", ws, ws).sum(dtype=np.float64))
        if q.squared_error is None:
            part = Quantized(q.codes[:, cols], q.scales[cols], None if q.zero_points is None else q.zero_points[cols],
                             q.block_size)
            err += float(np.square(part.dequantize() - ws).sum(dtype=np.float64))
    if q.squared_error is not None:
        err = q.squared_error
    return float(np.sqrt(err) / max(np.sqrt(ref), 1e-30))


def _node_name(lin: Linear, suffix: str) -> str:
    base = lin.node.name or lin.weight.name
    if base.endswith("MatMul"):
        return base[: -len("MatMul")] + suffix
    return f"{base}/{suffix}"


def _float_dtype(value: ir.Value) -> tuple[ir.DataType, type]:
    if value.dtype == ir.DataType.FLOAT16:
        return ir.DataType.FLOAT16, np.float16
    return ir.DataType.FLOAT, np.float32


@dataclasses.dataclass
class _Packed:
    """What one weight became, shared by every linear that reads it."""

    q: Quantized
    rel_error: float
    inputs: list[ir.Value | None]          # MatMulNBits [B, scales, zp], Int4MatMul [W_packed, scales, zp] or DQ [x, scale, zp]
    # portable: the DequantizeLinear output, one per graph (a branch cannot read another's values)
    dequantized: dict = dataclasses.field(default_factory=dict)
    method: str = "plain"
    outlier_idx: ir.Value | None = None    # int64 [n_out] (gptq with outliers)
    outlier_w: ir.Value | None = None      # float16 [n_out, N]
    errors: dict = dataclasses.field(default_factory=dict)


class QuantizeInt4(QPass):
    """Rewrite every int4-planned linear to MatMulNBits (target ort) or DequantizeLinear + MatMul."""

    name = "quantize_int4"
    stage = "transform"
    Options = QuantizeInt4Options

    def _mine(self) -> list:
        return planned_linears(self.ctx, (FORMAT,))

    @property
    def needs_stats(self) -> bool:  # read by the pipeline after the plan is made
        return any(_recovery(lin.name, p.settings) == "gptq" for lin, p in self._mine())

    @property
    def needs_gram(self) -> bool:
        return self.needs_stats

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ctx = self.ctx
        if ctx is None or ctx.roles is None:
            return ir.passes.PassResult(model, False)
        target = ctx.options.target
        if target not in TARGETS:
            raise UsageError(f"quantize_int4: unknown target '{target}' ({', '.join(TARGETS)})")
        todo = self._mine()
        if not todo:
            return ir.passes.PassResult(model, False)
        if target == "portable":
            opset = model.opset_imports.get("", 0)
            if opset < PORTABLE_MIN_OPSET:
                raise UsageError(
                    f"--target portable writes int4 as opset-{PORTABLE_MIN_OPSET} blockwise DequantizeLinear, "
                    f"but the model is opset {opset}: run canonicalize first (it upgrades to {PORTABLE_MIN_OPSET})")
        elif target == "qcompiler" and model.opset_imports.get("", 0) != contract.STANDARD_OPSET:
            raise UsageError(
                f"--target qcompiler writes Int4MatMul with its ONNX function body at opset {contract.STANDARD_OPSET}, "
                f"but the model is opset {model.opset_imports.get('', 0)}: run canonicalize first")

        graph = model.graph
        self._node_names = {n.name for n in graph.all_nodes() if n.name}   # a shared weight's nodes get _2, _3 ...
        stats = ctx.stats or {}
        gptq = [lin for lin, plan in todo if _recovery(lin.name, plan.settings) == "gptq"]
        grams, rows = consumer_grams(gptq, stats), consumer_rows(gptq, stats)
        held_grams = consumer_grams(gptq, ctx.held_stats or {})
        packed: dict[tuple, _Packed] = {}
        before = after = 0
        for i, (lin, plan) in enumerate(todo):
            ctx.progress("int4", i, len(todo))
            a_dtype, np_dtype = _float_dtype(lin.node.inputs[0])
            form_target = target
            if target == "qcompiler" and a_dtype != ir.DataType.FLOAT:
                form_target = "ort"                 # Int4MatMul: float32 activations
            block_size, symmetric, recovery, n_outliers = int4_settings(lin.name, plan.settings,
                                                                        native=form_target == "qcompiler")
            key = (lin.name, lin.transposed, block_size, symmetric, recovery, n_outliers, form_target)
            if form_target == "ort":
                model.opset_imports.setdefault(MS_DOMAIN, 1)
            if key not in packed:
                gram = grams.get(lin.name) if recovery == "gptq" else None
                packed[key] = self._quantize(graph, lin, block_size, symmetric, form_target, np_dtype, gram, n_outliers,
                                             rows.get(lin.name), held_grams.get(lin.name) if gram is not None else None)
                if recovery == "gptq" and gram is None:
                    packed[key].method = "plain (no calibration statistics)"
                before += lin.weight.const_value.nbytes
                after += sum(v.const_value.nbytes for v in [*packed[key].inputs, packed[key].outlier_idx,
                                                            packed[key].outlier_w] if v is not None)
            entry = packed[key]
            a, out_name, home = lin.node.inputs[0], lin.output.name, lin.node.graph
            if form_target == "portable":
                form = self._rewrite_portable(graph, lin, entry)
            elif form_target == "qcompiler":
                form = self._rewrite_library(graph, lin, entry, block_size)
            else:
                form = self._rewrite_nbits(graph, lin, entry, block_size, np_dtype)
            if entry.outlier_idx is not None and form_target != "qcompiler":
                form += self._add_outlier_path(home, lin, a, out_name, entry, self._fresh_node)
            if form_target != target:
                form += " (Int4MatMul takes float32 activations)"
            self.report_append("linears", {
                "weight": lin.name, "node": lin.node.name, "role": lin.role, "layer": lin.layer,
                "block_size": block_size, "symmetric": symmetric, "method": entry.method,
                "n_outliers": 0 if entry.outlier_idx is None else int(entry.outlier_idx.const_value.size),
                "rel_error": round(entry.rel_error, 5), **entry.errors, "form": form,
            })
        ctx.progress("int4", len(todo), len(todo))
        drop_unused_weights(graph, [lin for lin, _ in todo])
        if target == "qcompiler":
            contract.attach_functions(model)
        self.report("target", target)
        self.report("quantized", len(todo))
        self.report("bytes_before", int(before))
        self.report("bytes_after", int(after))
        errors = [p.rel_error for p in packed.values()]
        self.report("rel_error_mean", round(float(np.mean(errors)), 5))
        self.report("rel_error_max", round(float(np.max(errors)), 5))
        return ir.passes.PassResult(model, True)

    def _quantize(self, graph, lin, block_size, symmetric, target, np_dtype, gram=None, n_outliers=0,
                  rows=None, held_gram=None) -> _Packed:
        """One weight's codes (on-grid, GPTQ on `gram`, or plain); with `held_gram`, GPTQ codes worse
        than plain rounding on the held-out split are replaced by plain rounding."""
        o = self.options
        w = weight_array(lin)
        few = too_few_rows(rows, w.shape[0]) if gram is not None else None
        outliers = None
        grid = find_on_grid(w, "int4", 4, block_size, np.dtype(np_dtype).name, symmetric, max_outliers=n_outliers)
        if grid is not None:                   # trained with the quantizer in the loop: pack it as it is
            q = Quantized(grid.codes, grid.scales, grid.zero_points, block_size)
            effective = grid.dequantized
            if len(grid.outlier_idx):
                outliers = (grid.outlier_idx, grid.outlier_w)
            method = "on-grid (lossless)"
        elif gram is not None and few is None:
            rec = recover(w, gram, "int4", 4, block_size, n_outliers=n_outliers, act_order=o.act_order,
                          refit=o.refit, damp=o.damp, symmetric=symmetric,
                          shrink=shrinkage_for(rows, w.shape[0], o.shrink_per_channel))
            q = Quantized(rec.codes, rec.scales.astype(np.float32), rec.zero_points, block_size)
            effective = rec.dequantized
            if len(rec.outlier_idx):
                outliers = (rec.outlier_idx, rec.outlier_w)
            method = "gptq"
        else:
            q = quantize_int4_weight(w, block_size, symmetric, o.grid, o.min_ratio, o.refine, o.zoom)
            effective = q.dequantize() if gram is not None else None
            method = f"plain ({few})" if few else "plain"
        held = {}
        if method == "gptq" and held_gram is not None:
            plain = quantize_int4_weight(w, block_size, symmetric, o.grid, o.min_ratio, o.refine, o.zoom)
            held = held_out_check(w, effective, plain.dequantize(), gram, held_gram)
            if held["worse_than_plain"]:
                q, effective, outliers = plain, plain.dequantize(), None
                method = "plain (recovery worse than plain rounding on the held-out split)"
        if effective is not None:
            rel = float(np.linalg.norm(effective - w) / max(np.linalg.norm(w), 1e-30))
        else:
            rel = _rel_error_by_slices(q, w)
        errors = {}
        if gram is not None:
            errors["output_rel_error"] = round(float(
                output_error(w, effective, gram) / max(output_error(w, np.zeros_like(w), gram), 1e-30)), 5)
        entry = self._pack(graph, lin, q, rel, block_size, symmetric, target, np_dtype)
        entry.method, entry.errors = method, {**errors, **({"held_out": held} if held else {})}
        # Only the codes' shape is read later; dropping them keeps one weight's codes in memory, not all.
        entry.q = dataclasses.replace(q, codes=np.broadcast_to(q.codes.dtype.type(0), q.codes.shape))
        if outliers is not None:
            base = lin.weight.name
            entry.outlier_idx = add_initializer(graph, f"{base}_outlier_idx", ir.tensor(np.asarray(outliers[0], np.int64)))
            entry.outlier_w = add_initializer(graph, f"{base}_outlier_w", ir.tensor(np.asarray(outliers[1], np.float16)))
        return entry

    def _pack(self, graph, lin, q: Quantized, rel: float, block_size, symmetric, target, np_dtype) -> _Packed:
        base = lin.weight.name
        if target == "portable":
            scale = ir.tensor(np.ascontiguousarray(q.scales.T).astype(np_dtype))          # [G, N]
            if symmetric:
                x = ir.Tensor(q.codes.astype(ml_dtypes.int4), dtype=ir.DataType.INT4)
                zp = None
            else:
                x = ir.Tensor(q.codes.astype(ml_dtypes.uint4), dtype=ir.DataType.UINT4)
                zp = ir.Tensor(np.ascontiguousarray(q.zero_points.T).astype(ml_dtypes.uint4), dtype=ir.DataType.UINT4)
            inputs = [add_initializer(graph, f"{base}_int4", x), add_initializer(graph, f"{base}_scale", scale),
                      add_initializer(graph, f"{base}_zero_point", zp) if zp is not None else None]
            return _Packed(q, rel, inputs)
        codes, zp = unsigned_codes(q)
        if target == "qcompiler":
            w_packed, scales, zp_packed = contract.pack_int4(codes.T, q.scales.astype(np_dtype), zp)
            inputs = [add_initializer(graph, f"{base}_int4_packed", ir.tensor(w_packed)),
                      add_initializer(graph, f"{base}_scales", ir.tensor(scales)),
                      add_initializer(graph, f"{base}_zero_points", ir.tensor(zp_packed))]
            return _Packed(q, rel, inputs)
        b, zp_packed = pack_matmul_nbits(codes, None if symmetric else zp, block_size)
        inputs = [
            add_initializer(graph, f"{base}_Q4", ir.tensor(b)),
            add_initializer(graph, f"{base}_scales", ir.tensor(q.scales.reshape(-1).astype(np_dtype))),
            add_initializer(graph, f"{base}_zero_points", ir.tensor(zp_packed)) if zp_packed is not None else None,
        ]
        return _Packed(q, rel, inputs)

    def _rewrite_nbits(self, graph, lin: Linear, entry: _Packed, block_size: int, np_dtype) -> str:
        k, n = lin.shape_kn
        bias = None
        if lin.bias is not None and self.options.fold_bias:
            bias = lin.bias
            if tuple(bias.const_value.shape) != (n,) or bias.const_value.dtype != _float_dtype(lin.node.inputs[0])[0]:
                bias = add_initializer(graph, f"{lin.bias.name}_1d",
                                    ir.tensor(bias.const_value.numpy().reshape(n).astype(np_dtype)))
        inputs = [lin.node.inputs[0], *entry.inputs]
        if bias is not None:
            inputs += [None, bias]          # g_idx (unused) then bias
        while inputs[-1] is None:
            inputs.pop()
        attributes = {"K": k, "N": n, "bits": 4, "block_size": block_size}
        if self.options.accuracy_level:
            attributes["accuracy_level"] = int(self.options.accuracy_level)
        node = ir.node("MatMulNBits", inputs, attributes, domain=MS_DOMAIN, name=self._fresh_node(_node_name(lin, "MatMulNBits")))
        if bias is not None:
            old_nodes, old_out = [lin.node, lin.bias_node], lin.output
        else:
            old_nodes, old_out = [lin.node], lin.node.outputs[0]
        ir.convenience.replace_nodes_and_values(lin.node.graph, old_nodes[-1], old_nodes, [node], [old_out],
                                                [node.outputs[0]])
        form = "MatMulNBits"
        if lin.bias is not None:
            form += " (bias folded)" if bias is not None else " + Add"
        return form

    def _rewrite_library(self, graph, lin: Linear, entry: _Packed, block_size: int) -> str:
        """MatMul (+ bias Add) -> Int4MatMul(A, W_packed, scales, bias, outlier_idx, outlier_w, zero_points); a zero
        bias and an empty outlier pair where there are none (the op lists all six inputs)."""
        k, n = lin.shape_kn
        bias, folded = bias_input(graph, lin, n)
        if entry.outlier_idx is None:
            entry.outlier_idx = add_initializer(graph, f"{lin.weight.name}_outlier_idx", np.zeros(0, np.int64))
            entry.outlier_w = add_initializer(graph, f"{lin.weight.name}_outlier_w", np.zeros((0, n), np.float16))
        attributes = contract.node_attributes("Int4MatMul", K=k, N=n, group_size=block_size,
                                              accuracy_level=int(self.options.accuracy_level))
        w_packed, scales, zero_points = entry.inputs
        node = ir.node("Int4MatMul", [lin.node.inputs[0], w_packed, scales, bias, entry.outlier_idx, entry.outlier_w,
                                      zero_points],
                       attributes, domain=contract.DOMAIN, name=self._fresh_node(_node_name(lin, "Int4MatMul")))
        return "Int4MatMul" + replace_linear(lin, node, folded)

    def _fresh_node(self, name: str) -> str:
        name = fresh_name(name, self._node_names)
        self._node_names.add(name)
        return name

    @staticmethod
    def _add_outlier_path(graph, lin: Linear, a: ir.Value, name: str, entry: _Packed, fresh=lambda n: n) -> str:
        """Y = int4 part + A[..., outlier_idx] @ outlier_w, under the linear's output name `name`
        (`graph`: the one the linear is in)."""
        out = next(v for node in graph for v in node.outputs if v.name == name)
        base = _node_name(lin, "outliers")
        gather = ir.node("Gather", [a, entry.outlier_idx], {"axis": -1}, name=fresh(f"{base}_Gather"))
        cast = ir.node("Cast", [entry.outlier_w], {"to": _float_dtype(a)[0]}, name=fresh(f"{base}_Cast"))
        matmul = ir.node("MatMul", [gather.outputs[0], cast.outputs[0]], name=fresh(f"{base}_MatMul"))
        add = ir.node("Add", [out, matmul.outputs[0]], name=fresh(f"{base}_Add"))
        graph.insert_after(out.producer(), [gather, cast, matmul, add])
        ir.convenience.replace_all_uses_with(out, add.outputs[0], replace_graph_outputs=True)
        add.replace_input_with(0, out)      # the Add itself still reads the int4 part
        out.name = f"{name}_int4"
        add.outputs[0].name = name
        add.outputs[0].type, add.outputs[0].shape = out.type, out.shape
        return " + FP16 outlier rows"

    def _rewrite_portable(self, graph, lin: Linear, entry: _Packed) -> str:
        home = lin.node.graph
        if id(home) not in entry.dequantized:
            dq = ir.node("DequantizeLinear", list(entry.inputs) if entry.inputs[2] is not None else entry.inputs[:2],
                         {"axis": 0, "block_size": int(entry.q.block_size)},
                         name=self._fresh_node(_node_name(lin, "DequantizeLinear")))
            out = dq.outputs[0]
            out.name = fresh_name(f"{lin.weight.name}_dequantized", {v.name for v in graph.initializers.values()}
                                  | {v.name for n in graph.all_nodes() for v in n.outputs})
            out.type = ir.TensorType(entry.inputs[1].const_value.dtype)
            out.shape = ir.Shape(list(entry.q.codes.shape))
            home.insert_before(lin.node, dq)
            entry.dequantized[id(home)] = out
        lin.node.replace_input_with(1, entry.dequantized[id(home)])
        return "DequantizeLinear + MatMul"
