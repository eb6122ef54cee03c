"""Calibration: run the FP32 model on user data and keep bounded statistics of activations.

Data: an .npz whose arrays are named after the model's inputs, first axis = samples
(e.g. input_ids [S, T], attention_mask [S, T]). Without data the compiler synthesizes
inputs from the model's signature (token ids spread over the embedding's vocabulary,
attention masks of ones), which is enough to find outlier channels and ranges; the
report says which was used.

Per tapped tensor (a MatMul input, say) we keep, in memory independent of the data size:
per-channel absolute maxima, global min/max, a reservoir of up to `max_rows` rows
(for percentile / MSE ranges), and optionally the Gram matrix X^T X (for recovery).

Models larger than memory are calibrated in pieces (`collect_stats_in_pieces`): the graph is cut
into consecutive runs of nodes whose weights (plus the Gram matrices they produce) fit a piece
budget, and each piece runs in its own onnxruntime session over every sample before the next
one is made, so onnxruntime never holds more than one piece's weights. The activations crossing
a cut are kept for all samples; a Gram matrix is complete once its piece has run and goes to a
file on disk, read back memory-mapped when its linear is quantized.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from qcompiler.errors import CalibrationError, ort_message

_NP_DTYPES = {
    ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16, ir.DataType.DOUBLE: np.float64,
    ir.DataType.INT64: np.int64, ir.DataType.INT32: np.int32, ir.DataType.BOOL: np.bool_,
    ir.DataType.INT8: np.int8, ir.DataType.UINT8: np.uint8,
}


@dataclasses.dataclass
class ActivationStats:
    """Bounded statistics of one activation tensor, over its last axis (channels)."""

    channel_absmax: np.ndarray            # [C] float32
    channel_sumsq: np.ndarray             # [C] float64, sum of squares (energy)
    min: float
    max: float
    rows_seen: int
    samples: np.ndarray                   # [S, C] float32 reservoir of rows (S <= max_rows)
    gram: np.ndarray | None = None        # [C, C] float64 sum of x x^T, when requested

    @property
    def channel_energy(self) -> np.ndarray:
        return self.channel_sumsq / max(self.rows_seen, 1)


class _Accumulator:
    def __init__(self, max_rows: int, want_gram: bool, rng: np.random.Generator):
        self.max_rows, self.want_gram, self.rng = max_rows, want_gram, rng
        self.absmax = self.sumsq = self.gram = self.samples = None
        self.lo, self.hi, self.seen = np.inf, -np.inf, 0

    def add(self, x: np.ndarray) -> None:
        rows = x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False)
        if rows.shape[0] == 0:
            return
        if self.absmax is None:
            c = rows.shape[1]
            self.absmax = np.zeros(c, np.float32)
            self.sumsq = np.zeros(c, np.float64)
            self.samples = np.zeros((0, c), np.float32)
            if self.want_gram:
                self.gram = np.zeros((c, c), np.float64)
        # The same values as abs(rows).max(0) and (rows.astype(float64) ** 2).sum(0), with fewer
        # full-size temporaries (an 8192-wide FFN activation of 2048 rows is 67 MB in float32).
        lo, hi = rows.min(axis=0), rows.max(axis=0)
        self.absmax = np.maximum(self.absmax, np.maximum(hi, -lo))
        self.lo, self.hi = min(self.lo, float(lo.min())), max(self.hi, float(hi.max()))
        r64 = rows.astype(np.float64)
        if self.gram is not None:
            self.gram += r64.T @ r64
        self.sumsq += np.square(r64, out=r64).sum(axis=0)
        del r64
        # Reservoir sampling keeps a uniform sample of all rows in bounded memory.
        n_before = self.seen
        self.seen += rows.shape[0]
        room = self.max_rows - self.samples.shape[0]
        if room > 0:
            take = rows[:room]
            self.samples = np.concatenate([self.samples, take])
            rows = rows[room:]
            n_before += take.shape[0]
        if rows.shape[0]:
            positions = n_before + np.arange(rows.shape[0])
            slots = (self.rng.random(rows.shape[0]) * (positions + 1)).astype(np.int64)
            keep = slots < self.max_rows
            self.samples[slots[keep]] = rows[keep]

    def finish(self) -> ActivationStats:
        return ActivationStats(self.absmax, self.sumsq, self.lo, self.hi, self.seen, self.samples, self.gram)


def model_input_specs(model: ir.Model) -> list[tuple[str, ir.DataType, tuple]]:
    """(name, dtype, dims) of the model's real inputs, a dim an int or None (symbolic or unknown)."""
    from qcompiler.synthetic_inputs import input_dims

    return [(name, dtype, tuple(d if isinstance(d, int) else None for d in dims))
            for name, dtype, dims in input_dims(model)]


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"


def load_calibration(path: str | os.PathLike, model: ir.Model) -> list[dict[str, np.ndarray]]:
    """Read an .npz of model inputs and check it against the model; returns one feed per sample.

    Each array's first axis counts samples ([samples, ...] each, cut into batch-1 feeds). A model
    whose batch dim is fixed at B > 1 takes either [samples, B, ...] arrays or [N * B, ...] ones
    (cut into feeds of B rows); fixed dims elsewhere must match."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise CalibrationError(f"calibration file is not a readable .npz: {path} ({exc})") from None
    specs = model_input_specs(model)
    names = [s[0] for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = [n for n in arrays if n not in names]
    if missing or extra:
        raise CalibrationError(
            f"calibration inputs do not match the model: missing {missing}, unexpected {extra} (model inputs: {names})"
        )
    for name, dtype, dims in specs:
        want = _NP_DTYPES.get(dtype)
        got = arrays[name].dtype
        if want is not None and got != want:
            if np.issubdtype(got, np.integer) and np.issubdtype(want, np.integer):
                arrays[name] = arrays[name].astype(want)
            elif np.issubdtype(got, np.floating) and np.issubdtype(want, np.floating):
                arrays[name] = arrays[name].astype(want)
            elif want == np.bool_ and got.kind in "biu":
                arrays[name] = arrays[name].astype(want)
            else:
                raise CalibrationError(f"calibration input '{name}' has dtype {got}, the model wants {np.dtype(want)}")
    per_sample = {}                              # name -> [samples, *model dims] view
    ranked = {v.name: v.shape is not None for v in model.graph.inputs}
    for name, _dtype, dims in specs:
        a = arrays[name]
        if not dims:                              # a scalar input ([samples]), or one of unknown rank
            per_sample[name] = a.reshape(-1) if ranked.get(name) else (a[:, None] if a.ndim else a.reshape(1, 1))
            continue
        batch = dims[0] if isinstance(dims[0], int) and dims[0] > 1 else None
        if a.ndim == len(dims) + 1:
            per_sample[name] = a
        elif a.ndim == len(dims) and batch:
            if a.shape[0] % batch:
                raise CalibrationError(f"calibration input '{name}' has shape {list(a.shape)}: the model's input is "
                                       f"{_dims_text(dims)}, so give [samples, {_dims_text(dims)[1:]}, or a row count that "
                                       f"is a multiple of the model's fixed batch {batch}")
            per_sample[name] = a.reshape(a.shape[0] // batch, batch, *a.shape[1:])
        elif a.ndim == len(dims):
            per_sample[name] = a[:, None]
        else:
            raise CalibrationError(
                f"calibration input '{name}' has shape {list(a.shape)} (rank {a.ndim}): the model's input is "
                f"{_dims_text(dims)} (rank {len(dims)}), so give rank {len(dims) + 1}: [samples, {_dims_text(dims)[1:]}"
            )
        shape = per_sample[name].shape[1:]
        bad = [(i, d, shape[i]) for i, d in enumerate(dims) if isinstance(d, int) and d > 0 and shape[i] != d]
        if bad:
            i, d, got_d = bad[0]
            raise CalibrationError(f"calibration input '{name}' has {got_d} on axis {i} of a sample, the model's "
                                   f"fixed dim is {d} (model shape {[x if x is not None else '?' for x in dims]})")
    counts = {v.shape[0] for v in per_sample.values()}
    if len(counts) != 1 or 0 in counts:
        raise CalibrationError(f"calibration arrays must share a non-empty first (sample) axis; got {sorted(counts)}")
    n = counts.pop()
    return [{k: np.ascontiguousarray(per_sample[k][i]) for k in names} for i in range(n)]


def synthesize_inputs(model: ir.Model, samples: int = 16, seq_len: int = 32, seed: int = 0,
                      config: dict | None = None) -> list[dict[str, np.ndarray]]:
    """Inputs made from the model's signature when the user gives no data (qcompiler.synthetic_inputs:
    fixed dims kept, cache inputs filled by running the model's own prompt, sizes from config.json)."""
    from qcompiler.synthetic_inputs import synthesize

    return synthesize(model, samples=samples, seq_len=seq_len, seed=seed, config=config)


def session_with_taps(model, taps: list[str], providers=("CPUExecutionProvider",), session_options=None):
    """An onnxruntime session of `model` (onnx-ir Model or ModelProto) that also outputs the tapped values.

    The caller's model is left as it was (a ModelProto gets the tap outputs only while the
    session is made); a model over 2 GB goes through a temporary file with external data.
    """
    import onnxruntime as ort

    from qcompiler.model_io import inline_proto  # external data inlined: a session made from bytes cannot find it

    proto = model if isinstance(model, onnx.ModelProto) else inline_proto(model)
    main_values = {o for n in proto.graph.node for o in n.output} | {i.name for i in proto.graph.input}
    nested = [t for t in taps if t not in main_values]
    if nested:   # values inside If branches: exposed through the If on a copy (the caller's proto stays)
        from qcompiler.model_io import expose_nested_values

        if proto is model:
            proto = onnx.ModelProto()
            proto.CopyFrom(model)
        expose_nested_values(proto, nested)
    n_outputs = len(proto.graph.output)
    readable = main_values | {o for n in proto.graph.node for o in n.output}   # with the exposed ones
    existing = {o.name for o in proto.graph.output}
    value_types = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.input):
        value_types[vi.name] = vi
    for name in taps:
        if name in existing or name not in readable:   # a Loop/Scan body's value: not readable
            continue
        existing.add(name)
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name) if name not in value_types
                                  else value_types[name])
    opts = session_options or ort.SessionOptions()
    opts.log_severity_level = 4     # run errors come back as exceptions; ORT's own log lines would break the one-line rule
    try:
        try:
            return ort.InferenceSession(proto.SerializeToString(), opts, providers=list(providers))
        except ValueError:
            # Over the 2 GB protobuf limit: save with external data and load from disk.
            tmpdir = tempfile.mkdtemp(prefix="qcompile-calib-")
            path = os.path.join(tmpdir, "model.onnx")
            onnx.save_model(proto, path, save_as_external_data=True, location="model.data")
            return ort.InferenceSession(path, opts, providers=list(providers))
    finally:
        del proto.graph.output[n_outputs:]


def collect_stats(
    model: ir.Model,
    feeds: list[dict[str, np.ndarray]],
    taps: list[str],
    max_rows: int = 2048,
    gram_for: set[str] | None = None,
    seed: int = 0,
    progress=None,
    batch_size: int = 16,
) -> dict[str, ActivationStats]:
    """Run the model on every feed and accumulate statistics of the tapped values."""
    if not feeds:
        raise CalibrationError("calibration data is empty")
    gram_for = gram_for or set()
    rng = np.random.default_rng(seed)
    key = _cache_key(model, feeds, taps, gram_for, max_rows, seed)
    if key is not None and key in _STATS_CACHE:
        if progress:
            progress(len(feeds), len(feeds))
        return dict(_STATS_CACHE[key])   # a pass may replace entries (prune_ffn): not in the cache
    session = session_with_taps(model, taps)
    out_names = [o.name for o in session.get_outputs()]
    wanted = [n for n in out_names if n in set(taps)]
    accs = {name: _Accumulator(max_rows, name in gram_for, rng) for name in wanted}
    done = 0
    mask_name = _mask_name(feeds[0])
    if any(dims and isinstance(dims[0], int) for _, _, dims in model_input_specs(model)):
        batch_size = 1          # a fixed batch dim: each feed is already a whole batch
    for batch in _stack_batches(feeds, batch_size):
        try:
            values = session.run(wanted, batch)
            runs = [(batch, values)]
        except Exception as exc:
            if next(iter(batch.values())).shape[0] == 1:
                raise CalibrationError(f"the model does not run on calibration sample {done}: {ort_message(exc)}") from None
            batch_size = 1  # e.g. a fixed batch dimension: go one sample at a time from here on
            runs = []
            for i in range(next(iter(batch.values())).shape[0]):
                single = {k: v[i : i + 1] for k, v in batch.items()}
                try:
                    runs.append((single, session.run(wanted, single)))
                except Exception as exc1:
                    raise CalibrationError(f"the model does not run on calibration sample {done + i}: {ort_message(exc1)}") from None
        for fed, vals in runs:
            mask = fed.get(mask_name) if mask_name else None
            for name, value in zip(wanted, vals):
                if value.dtype.kind == "f" and value.ndim >= 1 and value.size:   # empty: a branch not taken
                    if mask is not None and value.ndim == 3 and value.shape[:2] == mask.shape:
                        value = value[mask.astype(bool)]  # padded positions are not data
                    accs[name].add(value)
        done += next(iter(batch.values())).shape[0] if batch else 1
        if progress:
            progress(done, len(feeds))
    stats = {name: acc.finish() for name, acc in accs.items() if acc.absmax is not None}
    if key is not None:
        _STATS_CACHE.clear()  # keep one entry: bounded memory, enough for a bench of several schemes
        _STATS_CACHE[key] = stats
        return dict(stats)
    return stats


def _mask_name(feed: dict) -> str | None:
    """The feed's own attention mask ([batch, seq]) that marks padded positions of the activations:
    attention_mask first (a decoder's encoder_attention_mask is about the other sequence)."""
    masks = [k for k in feed if "mask" in k.lower() and getattr(feed[k], "ndim", 0) == 2]
    own = [k for k in masks if not k.lower().startswith(("encoder", "cross"))]
    if own:
        return next((k for k in own if k == "attention_mask"), own[0])
    return None


# One compile's statistics, reused by the next compile of the same model on the same data
# (a bench compiles several schemes in one process).
_STATS_CACHE: dict = {}


def _cache_key(model: ir.Model, feeds, taps, gram_for, max_rows, seed):
    import hashlib

    h = hashlib.sha256()
    try:
        for init in sorted(model.graph.initializers.values(), key=lambda v: v.name)[:64]:
            h.update(init.name.encode())
            if init.const_value is not None and init.const_value.nbytes < 1 << 16:
                h.update(init.const_value.tobytes())
        h.update(str(len(model.graph.initializers)).encode())
        for feed in feeds:
            for k in sorted(feed):
                h.update(k.encode())
                h.update(np.ascontiguousarray(feed[k]).tobytes())
    except Exception:
        return None
    return (h.hexdigest(), tuple(sorted(taps)), tuple(sorted(gram_for)), max_rows, seed,
            tuple(n.op_type for n in model.graph), tuple(sorted(model.opset_imports.items())))


def _stack_batches(feeds, batch_size: int):
    """Consecutive samples of equal shapes run together: one session call per batch."""
    group: list[dict] = []

    def shapes(feed):
        return tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(feed.items()))

    for feed in feeds:
        if any(np.ndim(v) == 0 for v in feed.values()):   # a scalar input (an If condition): no batch axis
            if group:
                yield {k: np.concatenate([g[k] for g in group]) for k in group[0]}
                group = []
            yield feed
            continue
        if group and (len(group) >= batch_size or shapes(feed) != shapes(group[0])):
            yield {k: np.concatenate([g[k] for g in group]) for k in group[0]}
            group = []
        group.append(feed)
    if group:
        yield {k: np.concatenate([g[k] for g in group]) for k in group[0]}


def batches(feeds: list[dict[str, np.ndarray]], size: int) -> Iterator[list[dict[str, np.ndarray]]]:
    for i in range(0, len(feeds), size):
        yield feeds[i : i + size]


# ----------------------------------------------------------------------------------------------
# Calibration in pieces (streaming compiles)
# ----------------------------------------------------------------------------------------------
class PiecesUnsupported(Exception):
    """The graph cannot be cut into pieces (control flow, or an order that is not topological)."""


@dataclasses.dataclass
class _Piece:
    nodes: list                      # indices into the graph's node list, consecutive
    weight_bytes: int = 0
    gram_bytes: int = 0


def _initializer_inputs(node, inits) -> list:
    return [v for v in node.inputs if v is not None and v.name in inits and v.const_value is not None]


def plan_pieces(model: ir.Model, piece_bytes: int, gram_for: set[str] | None = None) -> list[_Piece]:
    """Consecutive runs of the graph's nodes, each holding at most `piece_bytes` of weights plus
    the Gram matrices (8 C^2 bytes) of the taps its nodes produce (a node heavier than that is a
    piece of its own). Raises PiecesUnsupported when the graph cannot be run in pieces."""
    graph = model.graph
    inits = graph.initializers
    gram_for = gram_for or set()
    seen: set = {v.name for v in graph.inputs} | set(inits)
    pieces: list[_Piece] = []
    cur = _Piece([])
    counted: set = set()
    for i, node in enumerate(graph):
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            raise PiecesUnsupported(f"node {node.name or node.op_type} has subgraphs (control flow)")
        for v in node.inputs:
            if v is not None and v.name and v.name not in seen:
                raise PiecesUnsupported(f"node {node.name or node.op_type} reads {v.name} before it is made")
        weights = sum(v.const_value.nbytes for v in _initializer_inputs(node, inits) if v.name not in counted)
        grams = sum(8 * _channels(v) ** 2 for v in node.outputs if v.name in gram_for)
        if cur.nodes and cur.weight_bytes + cur.gram_bytes + weights + grams > piece_bytes:
            pieces.append(cur)
            cur, counted = _Piece([]), set()
            weights = sum(v.const_value.nbytes for v in _initializer_inputs(node, inits))
        cur.nodes.append(i)
        cur.weight_bytes += weights
        cur.gram_bytes += grams
        counted.update(v.name for v in _initializer_inputs(node, inits))
        seen.update(v.name for v in node.outputs)
    if cur.nodes:
        pieces.append(cur)
    return pieces


def _channels(v: ir.Value) -> int:
    """The last axis of a value: from its shape, else from a linear reading it (a MatMul's weight
    rows, a Gemm's weight rows or columns)."""
    if v.shape is not None and len(v.shape) and isinstance(v.shape[-1], int):
        return int(v.shape[-1])
    for node, index in v.uses():
        if index != 0 or node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        w = node.inputs[1].const_value if node.inputs[1] is not None else None
        if w is not None and len(w.shape) == 2:
            trans = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
            return int(w.shape[1] if trans else w.shape[0])
    return 0


def tap_channels(model: ir.Model, taps) -> dict[str, int]:
    """{tap: channels} for the taps whose channel count is known (see _channels)."""
    taps = set(taps)
    values = [*model.graph.inputs, *(o for node in model.graph.all_nodes() for o in node.outputs)]
    return {v.name: c for v in values if v.name in taps and (c := _channels(v))}


def _drop_pages(arrays) -> None:
    """Drop the resident pages of memory-mapped arrays (np.load(mmap_mode='r'))."""
    import mmap

    for a in arrays:
        raw = getattr(a, "_mmap", None)
        if isinstance(raw, mmap.mmap) and not raw.closed:
            with contextlib.suppress(OSError, ValueError):
                raw.madvise(mmap.MADV_DONTNEED)


def release_gram_pages(stats: dict | None) -> None:
    """Drop the resident pages of Gram matrices read back from disk (they fault in again if read)."""
    _drop_pages(getattr(st, "gram", None) for st in (stats or {}).values())


def _piece_session(model: ir.Model, nodes: list, node_idx: list[int], inputs: dict, outputs: list[str]):
    """An onnxruntime session of nodes[node_idx] reading `inputs` ({name: dtype}) and giving
    `outputs`. Weights of SPILL_MIN_BYTES or more (memory-mapped, lazily computed or in memory) are
    handed over one piece at a time as external initializers: onnxruntime copies them, so the
    input's mapped pages are dropped right after, and the model's proto never holds them all."""
    import onnxruntime as ort

    from qcompiler.model_io import SPILL_MIN_BYTES, release_mapped_pages

    inits = model.graph.initializers
    names = []
    for i in node_idx:
        names += [v.name for v in _initializer_inputs(nodes[i], inits) if v.name not in names]
    protos, handed, arrays = [], [], []
    for name in names:
        tensor = inits[name].const_value
        if isinstance(tensor, (ir.ExternalTensor, ir.LazyTensor)) or tensor.nbytes >= SPILL_MIN_BYTES:
            proto = onnx.TensorProto(name=name, data_type=int(tensor.dtype), dims=list(tensor.shape))
            proto.data_location = onnx.TensorProto.EXTERNAL      # a placeholder: the data comes below
            for key, value in (("location", "handed-over"), ("offset", "0"), ("length", str(tensor.nbytes))):
                proto.external_data.add(key=key, value=value)
            handed.append(name)
            arrays.append(np.ascontiguousarray(tensor.numpy()))
        else:
            proto = ir.serde.serialize_tensor(tensor)
            proto.name = name
        protos.append(proto)
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(nodes[i]) for i in node_idx], "calibration_piece",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)), None)
         for n, dt in inputs.items()],
        [onnx.helper.make_empty_tensor_value_info(n) for n in outputs], protos)
    proto = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()],
        ir_version=model.ir_version)
    proto.functions.extend(ir.serde.serialize_function(f) for f in model.functions.values())
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # MatMul weights are otherwise copied again into packed buffers: twice the piece's weights.
    opts.add_session_config_entry("session.disable_prepacking", "1")
    if handed:
        opts.add_external_initializers(handed, [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays])
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    del arrays
    release_mapped_pages([inits[n].const_value for n in handed])
    return session


def collect_stats_in_pieces(
    model: ir.Model,
    feeds: list[dict[str, np.ndarray]],
    taps: list[str],
    piece_bytes: int,
    gram_dir: str | os.PathLike,
    max_rows: int = 2048,
    gram_for: set[str] | None = None,
    seed: int = 0,
    progress=None,
    batch_size: int = 4,
    release=None,
) -> tuple[dict[str, ActivationStats], dict]:
    """collect_stats for models larger than memory: the graph runs piece by piece (see the module
    docstring), onnxruntime holding at most `piece_bytes` of weights; Gram matrices are written to
    `gram_dir` as soon as complete and come back memory-mapped. Samples run `batch_size` at a time
    (4: an 8192-wide activation of 4 x 128 tokens is 16 MB). `release()`, when given, is called
    once onnxruntime holds a piece's weights: it drops the pages of the input's memory-mapped
    weights that a lazily computed one (fold_layernorm's scaled weights) read, which this module
    cannot see. Returns (stats, info) with info {pieces, largest_piece_bytes, gram_files_bytes}."""
    if not feeds:
        raise CalibrationError("calibration data is empty")
    gram_for = set(gram_for or ())
    pieces = plan_pieces(model, piece_bytes, gram_for)
    graph = model.graph
    nodes = list(graph)
    rng = np.random.default_rng(seed)
    gram_dir = Path(gram_dir)
    gram_dir.mkdir(parents=True, exist_ok=True)
    tap_set = set(taps)
    accs: dict[str, _Accumulator] = {}
    stats: dict[str, ActivationStats] = {}
    info = {"pieces": len(pieces), "largest_piece_bytes": max(p.weight_bytes + p.gram_bytes for p in pieces),
            "gram_files_bytes": 0}

    def finish(name):
        acc = accs.pop(name)
        if acc.absmax is None:
            return
        st = acc.finish()
        if st.gram is not None:
            path = gram_dir / f"gram{len(stats)}.npy"
            np.save(path, st.gram)
            info["gram_files_bytes"] += path.stat().st_size
            st.gram = np.load(path, mmap_mode="r")
        stats[name] = st

    last_piece: dict[str, int] = {}
    for p, piece in enumerate(pieces):
        for i in piece.nodes:
            for v in nodes[i].inputs:
                if v is not None:
                    last_piece[v.name] = p
    batches = list(_stack_batches(feeds, batch_size))
    mask_name = _mask_name(feeds[0])
    # Per batch: {value name: array} of the values crossing the current cut, on disk (memory-mapped,
    # pages dropped after each read): memory holds one batch's activations, not every sample's.
    live = [dict(b) for b in batches]
    saved = [0]

    def accumulate(name, batch, value):
        acc = accs.setdefault(name, _Accumulator(max_rows, name in gram_for, rng))
        mask = batch.get(mask_name) if mask_name else None
        if value.dtype.kind == "f" and value.ndim >= 1:
            if mask is not None and value.ndim == 3 and value.shape[:2] == mask.shape:
                value = value[mask.astype(bool)]
            acc.add(value)

    def to_disk(value):
        path = gram_dir / f"act{saved[0]}.npy"
        saved[0] += 1
        np.save(path, value)
        return np.load(path, mmap_mode="r")

    for name in [v.name for v in graph.inputs if v.name in tap_set]:
        for b in batches:
            accumulate(name, b, b[name])
        finish(name)
    inits = graph.initializers
    for p, piece in enumerate(pieces):
        produced = [v.name for i in piece.nodes for v in nodes[i].outputs if v.name]
        made = set(produced)
        wanted = [n for n in produced if n in tap_set or last_piece.get(n, -1) > p]
        inputs = {}
        for i in piece.nodes:
            for v in nodes[i].inputs:
                if v is not None and v.name and v.name not in made and v.name not in inits and v.name not in inputs:
                    inputs[v.name] = live[0][v.name].dtype
        if wanted:
            session = _piece_session(model, nodes, piece.nodes, inputs, wanted)
            if release is not None:
                release()
            for n_done, (b, lv) in enumerate(zip(batches, live)):
                feed = {n: lv[n] for n in inputs}
                try:
                    values = session.run(wanted, feed)
                except Exception as exc:
                    raise CalibrationError(f"the model does not run on calibration batch {n_done} "
                                           f"(piece {p + 1} of {len(pieces)}): {ort_message(exc)}") from None
                _drop_pages(feed.values())
                for name, value in zip(wanted, values):
                    if name in tap_set:
                        accumulate(name, b, value)
                    if last_piece.get(name, -1) > p:
                        lv[name] = to_disk(value)
                del values
            del session
            for name in wanted:
                if name in tap_set:
                    finish(name)
        for lv in live:                   # values no later piece reads (their files go with gram_dir)
            for name in [n for n in lv if last_piece.get(n, -1) <= p and n not in batches[0]]:
                del lv[name]
        if progress:
            progress(p + 1, len(pieces))
    return stats, info
