"""quantize_embeddings: Gather tables stored as row-wise int8 / packed int4, dequantized after the Gather.

Matches every embedding (analyze: a Gather with runtime ids on a 2-D float initializer) whose plan
format is "int8" or "int4" and writes, keeping the Gather's output name::

    int8:  Mul(Cast(Gather(codes_int8[V, D], ids), FLOAT), Cast(Gather(scales[V, 1], ids), FLOAT))
    int4:  p = Gather(packed_uint8[V, D/2], ids)                   # byte j = code j | code j+D/2 << 4
           u = Concat(Mod(p, 16), BitShift(p, 4, RIGHT), axis=-1)  # [.., D] unsigned codes 0..15
           Mul(Sub(Cast(u, FLOAT), 8), Gather(Cast(Gather(scales[V, G], ids), FLOAT), block_of_column, axis=-1))

so only the gathered rows are ever dequantized.

Formats "packed" and "ternary" write one ai.qcompiler PackedGather node instead (runtime_ops: native
kernel with the library, its ONNX function body without), whose rows may differ in bits, the
mixed-precision recipe of the extremely-low-bit papers: settings ``row_bits`` (e.g. [8, 4, 2]) and
``row_fractions`` (e.g. [0.05, 0.35, 0.6], most frequent rows first), ``group_size`` (scales per
group of columns, default 32) and ``frequency``: "calibration" (token counts of the ids the Gather
reads, from the calibration data; rows never seen rank by row norm), "norm" (row L2 norm), or the
path of a counts file (.npy, or text with one count per line, one per row). With synthesized
calibration (random tokens) frequencies mean nothing, so the row norm is used and the report says
so. 8/4-bit rows are symmetric blockwise codes, 2-bit rows ternary (TWN per group). "ternary" is
``row_bits = [2]``. Codes are symmetric (quantize_rows): one scale per
row for int8, one per block of `block_size` (default 32) along the row for int4 (its clipping
chosen by least squared error). Scales are float16 unless a scale is outside float16's normal
range (then float32). The int4 nibble layout (low half of the row in the low nibbles) needs no
Reshape, so it works for ids of any rank; ONNX's Gather does not take INT4 tensors (checked with
onnxruntime 1.32 at opset 21), hence the uint8 packing with standard ops of opset 11+.

Option ``precision = "measured"`` (the int4 scheme): a table planned int4 gets int4 rows only when
that costs little at the output. On a few calibration samples, the model's primary output is
compared with FP32 (a) with round-to-nearest int4 on its int4 linears (the MatMulNBits level, the
yardstick) and (b) with only this table's rows quantized (int4, then int8; a tied head included).
The table takes int4 when (b) <= error_share x (a), else int8 when that passes, else stays FP32;
the report's "precision" entries give the figures and the choice.

A tied LM head (a linear whose weight is the table, usually MatMul(x, Transpose(table))) reads the
quantized table. Option ``tied_head``: "shared" runs the same dequantization on the whole codes
tensor into the Transpose, so the file holds only the codes but onnxruntime folds them to an FP32
head at session start (V x D x 4 bytes of memory, all streamed for every decoded token); "int4"
(int4 rows, targets "ort" and "qcompiler") runs the head as a com.microsoft MatMulNBits on the table's own codes and
scales, a second copy of them (V x D / 2 bytes more in the file, 8x less to stream per token than
FP32, the same weights); int8 rows run the same way as MatMulNBits 8-bit (codes + 128, the row's
scale per block of 32; 4x less to stream), and where D is a multiple of 32 the codes are stored once,
in that layout, the gathers reading them too (else V x D bytes more); "auto" (default) is "int4"
where it applies, else "shared".

Left alone: tables planned "keep" (or another format), tables under `min_elements` values
(nothing to gain, a little error and four ops to lose), and tables that something other than a
Gather on axis 0 or a tied linear reads (quantizing them would keep two copies).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qcompiler.analyze import Embedding, _weight_source
from qcompiler.errors import SchemeError, UsageError
from qcompiler.plan import KEEP
from qcompiler.passes.base import QPass, add_initializer
from qcompiler.passes.insert_qdq import UniqueNames
from qcompiler.quantizers.ternary import quantize_ternary
from qcompiler.qat.on_grid import find_on_grid
from qcompiler.quantizers.uniform import Quantized, quantize_rows
from qcompiler.ops import contract

__all__ = ["QuantizeEmbeddings", "QuantizeEmbeddingsOptions", "pack_int4_rows", "unpack_int4_rows",
           "assign_row_bits", "quantize_mixed_rows", "token_counts"]

PACKED_FORMATS = ("packed", "ternary")
FORMATS = ("int8", "int4", *PACKED_FORMATS)
PACKED_GROUP_SIZE = 32

_FP16_MIN_NORMAL = 6.104e-05
_FP16_MAX = 65504.0


@dataclasses.dataclass
class QuantizeEmbeddingsOptions:
    block_size: int = 32          # int4: scales per block of this many columns (plan settings override)
    scale_dtype: str = "float16"  # "float16" | "float32"
    search_clip: bool = True      # int4: least-squares clipping per block
    min_elements: int = 4096      # smaller tables (e.g. BERT's 2-row token types) stay as they are
    # int4 rows of a table that a tied output layer also reads: "gptq" picks the codes on the Gram
    # matrix of the head's input (calibration), minimising the logits' error, when it is available;
    # "none": least-squares clipping per block, as untied tables
    tied_recovery: str = "gptq"
    tied_recovery_max_elements: int = 1 << 25   # larger tables (GPTQ time and memory grow with V x D^2) stay plain
    # "scheme": tables get the plan's format. "measured" (int4 tables only): each table gets int4 rows
    # when its own output error (on calibration samples, the rest FP32) is at most error_share x the
    # output error of round-to-nearest int4 on the model's int4 linears (the MatMulNBits level: at
    # 0.5 the rows add at most ~12% to it in quadrature, less than calibrated recovery takes off the
    # linears), else int8 rows when those are, else FP32.
    precision: str = "scheme"
    # a tied LM head: "auto", "int4" (MatMulNBits on the table's int4 codes) or "shared" (see the module docstring)
    tied_head: str = "auto"
    tied_head_accuracy_level: int = 4   # MatMulNBits' accuracy_level for the head: 4 = int8 activations, 0 = fp32
    error_share: float = 0.5
    measure_samples: int = 8            # calibration samples the measurement runs on
    measure_max_bytes: int = 1 << 30    # larger models are not measured (an FP32 copy is run per candidate)


def pack_int4_rows(codes: np.ndarray) -> np.ndarray:
    """Signed codes [V, D] in [-8, 7] -> uint8 [V, ceil(D/2)]: byte j = (c[j]+8) | (c[j+H]+8) << 4."""
    v, d = codes.shape
    half = (d + 1) // 2
    u = np.zeros((v, 2 * half), np.uint8)
    u[:, :d] = (codes.astype(np.int16) + 8).astype(np.uint8)
    if d % 2:
        u[:, d] = 8  # the padding column decodes to 0
    return (u[:, :half] | (u[:, half:] << 4)).astype(np.uint8)


def unpack_int4_rows(packed: np.ndarray, d: int) -> np.ndarray:
    """The numpy reference of the graph's unpacking: uint8 [.., H] -> signed codes [.., d]."""
    u = np.concatenate([packed % 16, packed >> 4], axis=-1).astype(np.int16) - 8
    return u[..., :d].astype(np.int8)


def assign_row_bits(priority: np.ndarray, row_bits: list[int], row_fractions: list[float]) -> np.ndarray:
    """Bits of each row: the highest-priority rows get row_bits[0], the next row_bits[1], ...

    row_fractions are the shares of rows per entry (normalised to sum 1); ties keep row order.
    """
    v = len(priority)
    fractions = np.asarray(row_fractions, np.float64)
    counts = np.floor(np.cumsum(fractions / fractions.sum()) * v + 0.5).astype(np.int64)
    counts[-1] = v
    order = np.argsort(-np.asarray(priority, np.float64), kind="stable")
    bits = np.empty(v, np.uint8)
    start = 0
    for b, end in zip(row_bits, counts):
        bits[order[start:end]] = b
        start = end
    return bits


def quantize_mixed_rows(table: np.ndarray, row_bits: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed values [V, D] (fitting each row's bits) and scales [V, G]: blockwise symmetric codes
    for 8/4-bit rows, TWN ternary per group for 2-bit rows."""
    table = np.asarray(table, np.float32)
    v, d = table.shape
    g = -(-d // group_size)
    values = np.zeros((v, d), np.int16)
    scales = np.zeros((v, g), np.float32)
    for b in np.unique(row_bits):
        rows = np.nonzero(row_bits == b)[0]
        if b == 2:
            t = quantize_ternary(table[rows].T, group_size)
            values[rows], scales[rows] = t.codes.T, t.scales
        else:
            q = quantize_rows(table[rows], bits=int(b), block_size=group_size, search_clip=b == 4)
            values[rows], scales[rows] = q.codes, q.scales
    return values, scales


_ID_PASSTHROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


def token_counts(ids: ir.Value, feeds: list[dict], vocab: int) -> np.ndarray | None:
    """How often each row is gathered over the calibration feeds, when the ids come (through
    value-preserving ops) from a graph input; None when they are computed."""
    while ids.producer() is not None and ids.producer().op_type in _ID_PASSTHROUGH:
        ids = ids.producer().inputs[0]
    if ids.producer() is not None or not ids.name:
        return None
    counts = np.zeros(vocab, np.int64)
    for feed in feeds:
        if ids.name not in feed:
            return None
        x = np.asarray(feed[ids.name]).astype(np.int64).ravel()
        x = np.where(x < 0, x + vocab, x)
        counts += np.bincount(x[(x >= 0) & (x < vocab)], minlength=vocab)
    return counts


def _read_counts_file(path: str, vocab: int) -> np.ndarray:
    try:
        counts = np.load(path) if path.endswith(".npy") else np.loadtxt(path, ndmin=1)
    except (OSError, ValueError) as e:
        raise SchemeError(f"embeddings frequency file {path}: {e}") from None
    counts = np.asarray(counts, np.float64).ravel()
    if counts.size != vocab:
        raise SchemeError(f"embeddings frequency file {path}: {counts.size} counts for a table of {vocab} rows")
    return counts


@dataclasses.dataclass
class _Stored:
    bits: int
    codes: ir.Value          # int8 [V, D] or packed uint8 [V, H]
    scales: ir.Value         # [V, 1] or [V, G], float16/float32
    d: int
    block_size: int | None
    block_index: ir.Value | None = None   # int4: int64 [D'] block of each column
    packed: list[ir.Value] | None = None  # PackedGather: table, row_offsets, row_bits, scales
    dtype: ir.DataType = ir.DataType.FLOAT  # the table's float type: the rows come out in it
    nbits_layout: bool = False  # int8 rows stored once as MatMulNBits 8-bit B: uint8 [V, D / 32, 32], codes + 128


def _nbits8_scales(scales: np.ndarray, d: int, block: int | None) -> tuple[np.ndarray, int]:
    """MatMulNBits 8-bit scales of int8 rows of width d (scales [V, 1], or [V, G] per block of
    `block`): blocks of 32 for one scale per row, the row's scale for each; returns (flat, block)."""
    v = scales.shape[0]
    per_row = scales.shape[1] == 1
    block = 32 if per_row else int(block)
    nb = -(-d // block)
    s = scales.astype(np.float32).reshape(v, -1)
    s = np.repeat(s, nb, axis=1) if per_row else s[:, :nb]
    return np.ascontiguousarray(s.reshape(-1)), block


def _int8_rows_as_nbits(codes: np.ndarray, scales: np.ndarray, block: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """int8 rows [V, D] as MatMulNBits 8-bit weights: uint8 codes + 128 (its default zero point for
    8 bits) in blocks along D (the tail padded with 128, value 0), and their scales (_nbits8_scales).
    The same values, exactly."""
    v, d = codes.shape
    flat, block = _nbits8_scales(scales, d, block)
    nb = -(-d // block)
    b = np.full((v, nb * block), 128, np.uint8)
    b[:, :d] = (codes.astype(np.int16) + 128).astype(np.uint8)
    return b.reshape(v, nb, block), flat, block


class QuantizeEmbeddings(QPass):
    __doc__ = __doc__
    name = "quantize_embeddings"
    stage = "transform"
    Options = QuantizeEmbeddingsOptions

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.options.tied_recovery not in ("gptq", "none"):
            raise SchemeError(f"quantize_embeddings: tied_recovery must be gptq or none, not '{self.options.tied_recovery}'")
        if self.options.tied_head not in ("auto", "int4", "shared"):
            raise SchemeError(f"quantize_embeddings: tied_head must be auto, int4 or shared, not '{self.options.tied_head}'")
        if self.options.tied_head_accuracy_level not in (0, 1, 2, 3, 4):
            raise SchemeError("quantize_embeddings: tied_head_accuracy_level must be 0-4, "
                              f"not {self.options.tied_head_accuracy_level}")
        self._heads: dict = {}
        if self.options.precision not in ("scheme", "measured"):
            raise SchemeError(f"quantize_embeddings: precision must be scheme or measured, not '{self.options.precision}'")
        self._probe = self._yardstick = None
        self._probe_reason = ""
        if self.options.scale_dtype not in ("float16", "float32"):
            raise SchemeError(f"quantize_embeddings: scale_dtype must be float16 or float32, not '{self.options.scale_dtype}'")
        ctx = self.ctx
        graph = model.graph
        self._main = graph        # new initializers go here: visible in every If/Loop/Scan body
        self._names = UniqueNames(graph)
        by_table: dict[str, list[Embedding]] = {}
        for emb in ctx.roles.embeddings if ctx.roles else []:
            by_table.setdefault(emb.name, []).append(emb)
        modified = False
        for table_name, embs in by_table.items():
            wp = ctx.plan.get(table_name)
            if wp is None or wp.format not in FORMATS:
                continue
            table = embs[0].table
            size = int(np.prod([int(d) for d in table.const_value.shape]))
            reason = self._unsupported_use(table, embs)
            if size < self.options.min_elements:
                reason = f"small table ({size} elements < min_elements {self.options.min_elements})"
            if reason:
                self.report_append("skipped", {"table": table_name, "reason": reason})
                continue
            tied = {id(lin.node): lin for emb in embs for lin in emb.tied_linears}
            if wp.format in PACKED_FORMATS:
                stored, entry = self._store_packed(model, table, embs, wp)
            else:
                bits = 8 if wp.format == "int8" else 4
                block = int(wp.settings.get("block_size", self.options.block_size)) if bits == 4 else None
                if block is not None and block <= 0:
                    raise SchemeError(f"quantize_embeddings: block_size must be positive, got {block}")
                quantized = None
                decision = None
                if bits == 4 and self.options.precision == "measured":
                    bits, quantized, decision = self._measured_choice(model, table, tied, block)
                    self.report_append("precision", decision)
                    if bits is None:          # FP32: the table stays as it is
                        wp.format, wp.reason = KEEP, f"measured: {decision['why']}"
                        continue
                    wp.format = f"int{bits}"
                    block = block if bits == 4 else None
                gram = self._tied_gram(table, tied) if bits == 4 and quantized is None else None
                stored, entry = self._store(graph, table, bits, block, gram, quantized)
                if decision is not None:
                    entry["chosen_by"] = decision["why"]
            if tied and stored.bits == 8 and all(not self._nbits_head_refusal(lin, stored) for lin in tied.values()):
                self._share_int8_codes_with_head(graph, stored)
            for emb in embs:
                self._rewrite_gather(graph, emb, stored)
            heads = [self._rewrite_tied(model, lin, stored) for lin in tied.values()]
            entry["gathers"] = len(embs)
            entry["tied_linears"] = [lin.node.name or lin.output.name for lin in tied.values()]
            if heads:
                entry["tied_head"] = sorted(set(h for h in heads if h))
            if not list(table.uses()) and table.name in graph.initializers:
                del graph.initializers[table.name]
            self.report_append("tables", entry)
            modified = True
        if any(n.domain == contract.DOMAIN for n in graph.all_nodes()):
            contract.attach_functions(model)
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _unsupported_use(table: ir.Value, embs: list[Embedding]) -> str:
        gathers = {id(e.node) for e in embs}
        tied_nodes = {id(lin.node) for e in embs for lin in e.tied_linears}
        for use in table.uses():
            node = use.node
            if id(node) in gathers or id(node) in tied_nodes:
                continue
            if node.op_type == "Transpose" and all(u.node is not None and id(u.node) in tied_nodes for u in node.outputs[0].uses()):
                continue
            return f"the table is also read by {node.op_type} '{node.name}'"
        if table.is_graph_output():
            return "the table is a graph output"
        return ""

    def _measurement(self, model: ir.Model) -> str:
        """Set up the output probe and the MatMulNBits-level yardstick once; '' or why not measured."""
        if self._probe is not None or self._probe_reason:
            return self._probe_reason
        ctx = self.ctx
        from qcompiler.model_io import _estimated_size

        if ctx is None or not ctx.calib_feeds:
            self._probe_reason = "no calibration samples"
        elif _estimated_size(model) > self.options.measure_max_bytes:
            self._probe_reason = f"model over measure_max_bytes ({self.options.measure_max_bytes} bytes)"
        if self._probe_reason:
            return self._probe_reason
        from qcompiler.output_probe import OutputProbe
        from qcompiler.quantizers.uniform import quantize_blockwise

        tables = {e.name for e in ctx.roles.embeddings}
        fake = {}
        for lin in ctx.roles.linears:
            wp = ctx.plan.get(lin.name)
            if wp is None or wp.format != "int4" or lin.name in tables or lin.name in fake:
                continue
            w = lin.weight.const_value.numpy().astype(np.float32)
            wk = w.T if lin.transposed else w
            q = quantize_blockwise(wk, 4, int(wp.settings.get("block_size", 32)), symmetric=True, search_clip=False,
                                   full_range=True)
            fake[lin.name] = q.dequantize().T if lin.transposed else q.dequantize()
        if not fake:
            self._probe_reason = "no int4 linears to compare with"
            return self._probe_reason
        try:
            self._probe = OutputProbe(model, ctx.calib_feeds, self.options.measure_samples)
            self._yardstick = self._probe.error(fake)
        except Exception as exc:   # a model onnxruntime cannot run here: the scheme's format, said so
            self._probe = None
            self._probe_reason = f"the model does not run for the measurement ({str(exc).splitlines()[0][:120]})"
        return self._probe_reason

    def _measured_choice(self, model: ir.Model, table: ir.Value, tied: dict, block: int):
        """(bits or None for FP32, (Quantized, method) of the chosen rows, the decision for the report)."""
        reason = self._measurement(model)
        if reason:
            return 4, None, {"table": table.name, "chosen": "int4", "why": f"int4 rows, as planned (not measured: {reason})"}
        w = table.const_value.numpy().astype(np.float32)
        limit = self.options.error_share * self._yardstick
        q4 = self._quantize(w, 4, block, self._tied_gram(table, tied))
        errors = {"int4": self._probe.error({table.name: self._dequantized(q4[0])})}
        decision = {"table": table.name, "tied_head": bool(tied), "output_error": errors,
                    "matmulnbits_level_error": round(self._yardstick, 6), "limit": round(limit, 6),
                    "samples": len(self._probe.feeds)}
        if errors["int4"] <= limit:
            chosen, bits, q = "int4", 4, q4
        else:
            q8 = self._quantize(w, 8, None)
            errors["int8"] = self._probe.error({table.name: self._dequantized(q8[0])})
            chosen, bits, q = ("int8", 8, q8) if errors["int8"] <= limit else ("fp32", None, None)
        for k in errors:
            errors[k] = round(errors[k], 6)
        tried = ", ".join(f"{k} rows {v:.4g}" for k, v in errors.items())
        decision["chosen"] = chosen
        decision["why"] = (f"{chosen}{' rows' if bits else ''}: output error {tried} vs limit {limit:.4g} "
                           f"({self.options.error_share} x {self._yardstick:.4g}, round-to-nearest int4 linears)")
        return bits, q, decision

    def _tied_gram(self, table: ir.Value, heads: dict) -> np.ndarray | None:
        """Sum of the Gram matrices of the tied heads' inputs, when calibration kept them all."""
        if self.options.tied_recovery != "gptq" or not heads or self.ctx is None or not self.ctx.stats:
            return None
        size = table.const_value.size
        if size > self.options.tied_recovery_max_elements:
            self.report_append("notes", f"{table.name}: {size} elements > tied_recovery_max_elements "
                                        f"{self.options.tied_recovery_max_elements}: plain int4 rows")
            return None
        grams = [getattr(self.ctx.stats.get(lin.node.inputs[0].name), "gram", None) for lin in heads.values()]
        return None if any(g is None for g in grams) else sum(grams)

    def _quantize(self, w: np.ndarray, bits: int, block: int | None, gram: np.ndarray | None = None):
        """(Quantized rows, method) of a table: on-grid codes kept, GPTQ on the tied head's Gram, or plain."""
        v, d = w.shape
        method = "plain"
        grid = find_on_grid(w.T, "int4", 4, block, "float16", symmetric=True, max_outliers=0) if bits == 4 else None
        if grid is not None:   # trained with the quantizer in the loop (qcompiler.qat): kept as it is
            q = Quantized(np.ascontiguousarray(grid.codes.T), grid.scales, None, block, rows=True)
            method = "on-grid (lossless)"
        elif gram is not None and gram.shape == (d, d):
            from qcompiler.quantizers.recovery import recover

            rec = recover(w.T, gram, "int4", 4, block, n_outliers=0, symmetric=True)   # head: [D, V]
            q = Quantized(np.ascontiguousarray(rec.codes.T), rec.scales, None, block, rows=True)
            method = "gptq (tied head)"
        else:
            q = quantize_rows(w, bits=bits, block_size=block, search_clip=self.options.search_clip and bits == 4)
        return q, method

    def _stored_scales(self, q: Quantized) -> np.ndarray:
        scales = q.scales.astype(np.float32)
        nz = np.abs(scales[scales != 0])
        fp16 = self.options.scale_dtype == "float16" and (nz.size == 0 or (nz.min() >= _FP16_MIN_NORMAL and nz.max() <= _FP16_MAX))
        return scales.astype(np.float16) if fp16 else scales

    def _dequantized(self, q: Quantized) -> np.ndarray:
        """The float rows the graph computes from the stored codes and (float16-rounded) scales."""
        return Quantized(q.codes, self._stored_scales(q).astype(np.float32), None, q.block_size, rows=True).dequantize()

    def _store(self, graph: ir.Graph, table: ir.Value, bits: int, block: int | None, gram: np.ndarray | None = None,
               quantized=None):
        w = table.const_value.numpy().astype(np.float32)
        v, d = w.shape
        q, method = quantized if quantized is not None else self._quantize(w, bits, block, gram)
        err = float(np.linalg.norm(q.dequantize() - w) / max(np.linalg.norm(w), 1e-30))
        scales = self._stored_scales(q)
        tag = table.name
        if bits == 8:
            codes = q.codes.astype(np.int8)
        else:
            codes = pack_int4_rows(q.codes)
        codes_v = self._initializer(graph, f"{tag}_quantized", codes)
        scales_v = self._initializer(graph, f"{tag}_scale", np.ascontiguousarray(scales))
        stored = _Stored(bits, codes_v, scales_v, d, block, dtype=table.const_value.dtype)
        if bits == 4:
            cols = 2 * codes.shape[1]
            stored.block_index = self._initializer(graph, f"{tag}_block_of_column", np.minimum(np.arange(cols) // block, scales.shape[1] - 1).astype(np.int64))
        before = int(w.size * table.const_value.dtype.itemsize)
        after = int(codes.nbytes + scales.nbytes)
        entry = {"table": table.name, "rows": int(v), "dim": int(d), "bits": bits, "block_size": block, "method": method,
                 "scale_dtype": str(scales.dtype), "bytes_before": before, "bytes_after": after,
                 "rel_l2_error": round(err, 6)}
        return stored, entry

    @property
    def needs_stats(self) -> bool:
        """Mixed rows ranked by calibration token frequency, and measured precision, need the calibration feeds."""
        ctx = self.ctx
        if ctx is None or ctx.roles is None:
            return False
        if self.options.precision == "measured" and any(ctx.plan.get(e.name) is not None and ctx.plan[e.name].format == "int4"
                                                        for e in ctx.roles.embeddings):
            return True
        return any(ctx.plan.get(e.name) is not None and ctx.plan[e.name].format in PACKED_FORMATS
                   and ctx.plan[e.name].settings.get("frequency", "calibration") == "calibration"
                   and len(ctx.plan[e.name].settings.get("row_bits", [2 if ctx.plan[e.name].format == "ternary" else 4])) > 1
                   for e in ctx.roles.embeddings)

    def _row_priority(self, table: ir.Value, embs: list[Embedding], w: np.ndarray, frequency: str) -> tuple[np.ndarray, str]:
        norms = np.linalg.norm(w, axis=1)
        if frequency == "norm":
            return norms, "row norm"
        if frequency != "calibration":
            return _read_counts_file(frequency, w.shape[0]) + norms / (norms.max() + 1e-30), f"counts file {frequency}"
        ctx = self.ctx
        if not ctx.calib_feeds:
            return norms, "row norm (no calibration data)"
        if ctx.calibration_synthesized:
            return norms, "row norm (calibration inputs are synthesized random tokens)"
        counts = 0
        for emb in embs:
            c = token_counts(emb.node.inputs[1], ctx.calib_feeds, w.shape[0])
            if c is None:
                return norms, "row norm (the Gather's ids are computed, not a model input)"
            counts = counts + c
        # seen rows by count; unseen ones (and ties) by norm: norms / (max + eps) < 1
        return counts + norms / (norms.max() + 1e-30), f"calibration token counts ({int((counts > 0).sum())} rows seen)"

    def _store_packed(self, model: ir.Model, table: ir.Value, embs: list[Embedding], wp) -> tuple[_Stored, dict]:
        graph = model.graph
        opset = model.opset_imports.get("", 0)
        if opset != contract.STANDARD_OPSET:
            raise UsageError(f"PackedGather's ONNX function body is opset {contract.STANDARD_OPSET}, but the model is "
                             f"opset {opset}: run canonicalize first (it converts to {contract.STANDARD_OPSET})")
        s = wp.settings
        default_bits = [2] if wp.format == "ternary" else [4]
        row_bits = [int(b) for b in s.get("row_bits", default_bits)]
        fractions = [float(f) for f in s.get("row_fractions", [1.0] * len(row_bits))]
        group = int(s.get("group_size", s.get("block_size", PACKED_GROUP_SIZE)))
        if not row_bits or any(b not in contract.OPS["PackedGather"].allowed_bits for b in row_bits):
            raise SchemeError(f"embeddings row_bits must be a list of {contract.OPS['PackedGather'].allowed_bits}, got {row_bits}")
        if wp.format == "ternary" and row_bits != [2]:
            raise SchemeError("embeddings format 'ternary' is row_bits = [2]; use format 'packed' to mix bits")
        if len(fractions) != len(row_bits) or min(fractions) < 0 or sum(fractions) <= 0:
            raise SchemeError(f"embeddings row_fractions must be {len(row_bits)} non-negative shares, got {fractions}")
        if group <= 0:
            raise SchemeError(f"embeddings group_size must be positive, got {group}")
        w = table.const_value.numpy().astype(np.float32)
        v, d = w.shape
        group = min(group, d)
        source = "single width"
        if len(row_bits) > 1:
            priority, source = self._row_priority(table, embs, w, str(s.get("frequency", "calibration")))
            bits = assign_row_bits(priority, row_bits, fractions)
        else:
            bits = np.full(v, row_bits[0], np.uint8)
        values, scales = quantize_mixed_rows(w, bits, group)
        deq = values.astype(np.float32) * np.repeat(scales, group, axis=1)[:, :d]
        err = float(np.linalg.norm(deq - w) / max(np.linalg.norm(w), 1e-30))
        nz = np.abs(scales[scales != 0])
        fp16 = self.options.scale_dtype == "float16" and (nz.size == 0 or (nz.min() >= _FP16_MIN_NORMAL and nz.max() <= _FP16_MAX))
        packed, offsets, row_bits_arr, scales = contract.pack_packed_gather(
            values, bits, scales.astype(np.float16) if fp16 else scales)
        tag = table.name
        inputs = [self._initializer(graph, f"{tag}_packed_rows", packed),
                  self._initializer(graph, f"{tag}_row_offsets", offsets),
                  self._initializer(graph, f"{tag}_row_bits", row_bits_arr),
                  self._initializer(graph, f"{tag}_row_scales", np.ascontiguousarray(scales))]
        stored = _Stored(0, inputs[0], inputs[3], d, group, packed=inputs, dtype=table.const_value.dtype)
        before = int(w.size * table.const_value.dtype.itemsize)
        after = int(sum(x.const_value.nbytes for x in inputs))
        hist = {int(b): int((bits == b).sum()) for b in row_bits}
        entry = {"table": table.name, "rows": int(v), "dim": int(d), "bits": "mixed" if len(row_bits) > 1 else row_bits[0],
                 "op": "PackedGather", "rows_per_bits": hist, "row_ranking": source, "block_size": group,
                 "scale_dtype": str(scales.dtype), "bytes_before": before, "bytes_after": after,
                 "bits_per_weight": round(8 * after / max(w.size, 1), 3), "rel_l2_error": round(err, 6)}
        model.opset_imports.setdefault(contract.DOMAIN, contract.OPSET_VERSION)
        return stored, entry

    def _initializer(self, graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
        return add_initializer(graph, self._names.unique(name), array)

    def _dequantize(self, tape: ir.tape.Tape, stored: _Stored, ids: ir.Value | None, base: str) -> ir.Value:
        """Rows of the table in its own float type (float16 tables: computed in float32, then cast)."""
        rows = self._dequantize_float(tape, stored, ids, base)
        if stored.dtype == ir.DataType.FLOAT:
            return rows
        return self._names.op(tape, "Cast", [rows], {"to": stored.dtype}, name=f"{base}_rows_Cast")

    def _dequantize_float(self, tape: ir.tape.Tape, stored: _Stored, ids: ir.Value | None, base: str) -> ir.Value:
        """Float32 rows of the table: gathered at `ids`, or the whole table when ids is None."""
        op = lambda *a, **k: self._names.op(tape, *a, **k)  # noqa: E731
        if stored.packed is not None:
            attrs = contract.node_attributes("PackedGather", D=stored.d, group_size=stored.block_size)
            if ids is None:   # the whole table, for a tied head: PackedGather's own body, inlined
                v = stored.packed[1].const_value.shape[0] - 1
                ids = self._const(tape, f"{base}_all_rows", np.arange(v, dtype=np.int64))
                return self._inline_packed_gather(tape, [*stored.packed, ids], attrs, base)
            return self._names.op(tape, "PackedGather", [*stored.packed, ids], attrs, name=f"{base}_PackedGather",
                                  domain=contract.DOMAIN)
        codes, scales = stored.codes, stored.scales
        if stored.nbits_layout:
            v = stored.codes.const_value.shape[0]
            shape = self._const(tape, f"{base}_rows_shape", np.array([v, stored.d], np.int64))
            codes = op("Reshape", [codes, shape], name=f"{base}_codes_Reshape")
        if ids is not None:
            codes = op("Gather", [codes, ids], {"axis": 0}, name=f"{base}_codes_Gather")
            scales = op("Gather", [scales, ids], {"axis": 0}, name=f"{base}_scales_Gather")
        if stored.scales.const_value.dtype != ir.DataType.FLOAT:
            scales = op("Cast", [scales], {"to": ir.DataType.FLOAT}, name=f"{base}_scales_Cast")
        if stored.bits == 8:
            values = op("Cast", [codes], {"to": ir.DataType.FLOAT}, name=f"{base}_codes_Cast")
            if stored.nbits_layout:  # uint8 codes + 128: the subtraction is exact
                offset = self._const(tape, f"{base}_128", np.array(128.0, np.float32))
                values = op("Sub", [values, offset], name=f"{base}_codes_center_Sub")
            return op("Mul", [values, scales], name=f"{base}_dequant_Mul")
        sixteen = self._const(tape, f"{base}_16", np.array(16, np.uint8))
        four = self._const(tape, f"{base}_4", np.array(4, np.uint8))
        eight = self._const(tape, f"{base}_8", np.array(8.0, np.float32))
        lo = op("Mod", [codes, sixteen], {"fmod": 0}, name=f"{base}_low_Mod")
        hi = op("BitShift", [codes, four], {"direction": "RIGHT"}, name=f"{base}_high_BitShift")
        u = op("Concat", [lo, hi], {"axis": -1}, name=f"{base}_nibbles_Concat")
        if 2 * stored.codes.shape[1] != stored.d:
            starts = self._const(tape, f"{base}_start", np.array([0], np.int64))
            ends = self._const(tape, f"{base}_end", np.array([stored.d], np.int64))
            axes = self._const(tape, f"{base}_axis", np.array([-1], np.int64))
            u = op("Slice", [u, starts, ends, axes], name=f"{base}_pad_Slice")
        values = op("Sub", [op("Cast", [u], {"to": ir.DataType.FLOAT}, name=f"{base}_codes_Cast"), eight], name=f"{base}_center_Sub")
        index = stored.block_index
        if 2 * stored.codes.shape[1] != stored.d:
            index = self._const(tape, f"{base}_block_of_column", stored.block_index.const_value.numpy()[: stored.d])
        col_scales = op("Gather", [scales, index], {"axis": -1}, name=f"{base}_scales_expand_Gather")
        return op("Mul", [values, col_scales], name=f"{base}_dequant_Mul")

    def _inline_packed_gather(self, tape: ir.tape.Tape, inputs: list[ir.Value], attrs: dict, base: str) -> ir.Value:
        """PackedGather's function body (standard ops) in the graph, its inputs all initializers:
        onnxruntime folds it once at session start, where the native op (which it cannot fold)
        would dequantize the whole table at every run; the file still holds only the packed rows."""
        fn = ir.serde.deserialize_function(contract.make_function("PackedGather"))
        values: dict[str, ir.Value] = dict(zip((v.name for v in fn.inputs), inputs))
        for node in fn:
            attributes = {}
            for key, attr in node.attributes.items():
                if attr.is_ref():
                    attributes[key] = ir.AttrInt64(key, int(attrs[attr.ref_attr_name]))
                else:
                    attributes[key] = attr
            args = [values[v.name] if v is not None else None for v in node.inputs]
            values[node.outputs[0].name] = self._names.op(tape, node.op_type, args, attributes,
                                                          name=f"{base}_{node.op_type}")
        return values[fn.outputs[0].name]

    def _const(self, tape: ir.tape.Tape, name: str, array: np.ndarray) -> ir.Value:
        name = self._names.unique(name)
        return tape.initializer(ir.tensor(np.ascontiguousarray(array), name=name), name=name)

    def _commit(self, graph: ir.Graph, tape: ir.tape.Tape, before: ir.Node) -> None:
        for init in tape.initializers:
            self._main.register_initializer(init)
        before.graph.insert_before(before, tape.nodes)

    def _rewrite_gather(self, graph: ir.Graph, emb: Embedding, stored: _Stored) -> None:
        tape = ir.tape.Tape()
        node = emb.node
        base = node.name or emb.table.name
        y = self._dequantize(tape, stored, node.inputs[1], base)
        self._commit(graph, tape, node)
        old = node.outputs[0]
        name = old.name
        ir.convenience.replace_all_uses_with(old, y, replace_graph_outputs=True)
        node.graph.remove(node, safe=True)
        # The old value is detached; it keeps its name (analysis results may still refer to it).
        y.name = name
        y.type, y.shape = old.type, old.shape

    def _share_int8_codes_with_head(self, graph: ir.Graph, stored: _Stored) -> None:
        """int8 rows with one scale per row and D a multiple of 32, read by a MatMulNBits head: stored
        once, in the head's layout (codes + 128 as uint8 [V, D / 32, 32]); the gathers read the same
        initializer (reshaped to [V, D], which onnxruntime folds at session start), so the file holds
        one copy of the codes instead of two."""
        if stored.d % 32 or stored.scales.const_value.shape[1] != 1:
            return
        old = stored.codes
        codes = old.const_value.numpy()
        b, _, _ = _int8_rows_as_nbits(codes, stored.scales.const_value.numpy(), None)
        stored.codes = self._initializer(graph, old.name.removesuffix("_quantized") + "_quantized_u8", b)
        stored.nbits_layout = True
        if not list(old.uses()) and old.name in graph.initializers:
            del graph.initializers[old.name]

    def _rewrite_tied(self, model: ir.Model, lin, stored: _Stored) -> str:
        """The head reads the quantized table: MatMulNBits on its codes, or the whole dequantized table
        in place of the FP32 one (a function of initializers only, which onnxruntime folds once at
        session start into an FP32 head). Returns the form, for the report."""
        graph = model.graph
        if _weight_source(lin.node.inputs[1]) is None:
            return ""
        why_not = self._nbits_head_refusal(lin, stored)
        if not why_not and stored.bits == 4 and self._library_in_use(model):
            self._rewrite_tied_library(model, lin, stored)
            return (f"Int4MatMul on the table's codes (accuracy_level {self.options.tied_head_accuracy_level}; "
                    "a second copy of the codes in the file)")
        if not why_not:
            self._rewrite_tied_nbits(model, lin, stored)
            copies = ("the codes stored once, in its layout, the gathers reading them too" if stored.nbits_layout
                      else "a second copy of the codes in the file")
            return (f"MatMulNBits int{stored.bits} on the table's codes (accuracy_level "
                    f"{self.options.tied_head_accuracy_level}; {copies})")
        if self.options.tied_head == "int4":
            self.report_append("notes", f"{lin.node.name}: tied_head int4 does not apply ({why_not}): shared")
        tape = ir.tape.Tape()
        full = self._dequantize(tape, stored, None, f"{lin.weight.name}_head")
        if lin.transposed:
            transpose = lin.node.inputs[1].producer()
            self._commit(graph, tape, transpose)
            transpose.replace_input_with(0, full)
        else:
            self._commit(graph, tape, lin.node)
            lin.node.replace_input_with(1, full)
        return "shared: the table's rows dequantized, folded to an FP32 head at session start"

    def _nbits_head_refusal(self, lin, stored: _Stored) -> str:
        """'' when the head can run as MatMulNBits on the table's codes, else why not."""
        if self.options.tied_head == "shared":
            return "tied_head = shared"
        if getattr(getattr(self.ctx, "options", None), "target", "ort") == "portable":
            return "target portable: standard ops only"
        if stored.bits not in (4, 8) or stored.packed is not None:
            return f"the table has {'packed' if stored.packed is not None else f'int{stored.bits}'} rows, not int4 or int8"
        from qcompiler.passes.quantize_int4 import BLOCK_SIZES

        per_row = stored.bits == 8 and stored.scales.const_value.shape[1] == 1
        if not per_row and stored.block_size not in BLOCK_SIZES:
            return f"block_size {stored.block_size} is not one MatMulNBits takes"
        if lin.node.op_type != "MatMul" or not lin.transposed or stored.dtype != ir.DataType.FLOAT:
            return "not MatMul(x, Transpose(table)) in float32"
        return ""

    def _library_in_use(self, model: ir.Model) -> bool:
        """The compiled model runs this project's ops anyway (--target qcompiler with int4 linears, or
        ternary / binary-code / codebook linears), at the opset of their function bodies: its int4
        head then runs as Int4MatMul, 1.3x MatMulNBits at one row and 1.8x at four (256 x 8000, the
        Marian head; runtime_ops.bench on the AVX-512 EPYC)."""
        ctx = self.ctx
        if ctx is None or model.opset_imports.get("", 0) != contract.STANDARD_OPSET:
            return False
        from qcompiler.passes.replace_matmul import OP_OF_FORMAT

        passes = set(getattr(ctx.scheme, "passes", ()))
        if getattr(ctx.options, "target", "ort") == "qcompiler" and "quantize_int4" in passes:
            return True
        return "replace_matmul" in passes and any(wp.format in OP_OF_FORMAT for wp in ctx.plan.values())

    def _rewrite_tied_library(self, model: ir.Model, lin, stored: _Stored) -> None:
        """MatMul(x, Transpose(table)) -> Int4MatMul(x, codes, scales, 0, no outliers, zero points 8):
        the same weights as the MatMulNBits form, packed once per table for every head."""
        key = ("library", id(stored.codes))
        d = stored.d
        if key not in self._heads:
            v = stored.codes.const_value.shape[0]
            tag = stored.codes.name.removesuffix("_quantized")
            codes = unpack_int4_rows(stored.codes.const_value.numpy(), d).astype(np.int16) + 8   # [V, D] in 0..15
            scales = stored.scales.const_value.numpy().astype(np.float32).reshape(v, -1)
            w_packed, scales, zero_points = contract.pack_int4(codes.astype(np.uint8), scales)
            self._heads[key] = (v, [self._initializer(self._main, f"{tag}_head_int4_packed", w_packed),
                                    self._initializer(self._main, f"{tag}_head_int4_scales", np.ascontiguousarray(scales)),
                                    self._initializer(self._main, f"{tag}_head_zero_bias", np.zeros(v, np.float32)),
                                    self._initializer(self._main, f"{tag}_head_outlier_idx", np.zeros(0, np.int64)),
                                    self._initializer(self._main, f"{tag}_head_outlier_w", np.zeros((0, v), np.float16)),
                                    self._initializer(self._main, f"{tag}_head_zero_points", zero_points)])
        v, (w_packed, scales, bias, outlier_idx, outlier_w, zero_points) = self._heads[key]
        attributes = contract.node_attributes("Int4MatMul", K=d, N=v, group_size=stored.block_size,
                                              accuracy_level=int(self.options.tied_head_accuracy_level))
        node = ir.node("Int4MatMul", [lin.node.inputs[0], w_packed, scales, bias, outlier_idx, outlier_w, zero_points],
                       attributes, domain=contract.DOMAIN, name=f"{lin.node.name or 'lm_head'}_Int4MatMul")
        self._replace_head(lin, node)
        model.opset_imports.setdefault(contract.DOMAIN, contract.OPSET_VERSION)

    @staticmethod
    def _replace_head(lin, node: ir.Node) -> None:
        """`node` in place of the head's MatMul(x, Transpose(table)); the Transpose goes once unused."""
        old = lin.node
        transpose = old.inputs[1].producer()
        ir.convenience.replace_nodes_and_values(old.graph, old, [old], [node], [old.outputs[0]], [node.outputs[0]])
        if transpose is not None and not list(transpose.outputs[0].uses()):
            transpose.graph.remove(transpose, safe=True)

    def _rewrite_tied_nbits(self, model: ir.Model, lin, stored: _Stored) -> None:
        """MatMul(x, Transpose(table)) -> MatMulNBits(x, codes, scales): the same weights (symmetric
        codes, zero point 8, the float16 scales widened), packed once per table for every head."""
        from qcompiler.passes.quantize_int4 import MS_DOMAIN, pack_matmul_nbits

        key = id(stored.codes)
        if key not in self._heads:
            packed = stored.codes.const_value.numpy()
            v = packed.shape[0]
            tag = stored.codes.name.removesuffix("_quantized")
            if stored.nbits_layout:   # the codes are already the head's B
                b = None
                scales, block = _nbits8_scales(stored.scales.const_value.numpy(), stored.d, None)
            elif stored.bits == 8:
                b, scales, block = _int8_rows_as_nbits(packed, stored.scales.const_value.numpy(), stored.block_size)
            else:
                codes = unpack_int4_rows(packed, stored.d)                       # signed [V, D]
                b, _ = pack_matmul_nbits(np.ascontiguousarray((codes.astype(np.int16) + 8).astype(np.uint8).T), None,
                                         stored.block_size)
                scales = stored.scales.const_value.numpy().astype(np.float32).reshape(-1)
                block = stored.block_size
            self._heads[key] = (v, block, stored.codes if b is None else
                                self._initializer(self._main, f"{tag}_head_Q{stored.bits}", b),
                                self._initializer(self._main, f"{tag}_head_scales", np.ascontiguousarray(scales)))
        v, block, b, scales = self._heads[key]
        attributes = {"K": stored.d, "N": v, "bits": stored.bits, "block_size": block}
        if self.options.tied_head_accuracy_level:
            attributes["accuracy_level"] = int(self.options.tied_head_accuracy_level)
        node = ir.node("MatMulNBits", [lin.node.inputs[0], b, scales], attributes, domain=MS_DOMAIN,
                       name=f"{lin.node.name or 'lm_head'}_MatMulNBits")
        self._replace_head(lin, node)
        model.opset_imports.setdefault(MS_DOMAIN, 1)
