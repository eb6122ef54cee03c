"""Load and save models with onnx-ir: lazy weights in, atomic writes out.

Loading never reads weights eagerly (onnx-ir memory-maps external data), and
saving goes to a temporary file beside the destination that is renamed into
place only once complete, so an interrupted run leaves no partial output.
Temporaries carry the writer's process id; a later run removes those of dead
processes. `Spill` moves weights made during a compile out of memory as they
are made (streaming compiles of models larger than memory).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from qcompiler.errors import ModelLoadError, OutputError

# Above this serialized size the output keeps its weights in an external data file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
TMP_PREFIX = ".qcompile-tmp-"
# onnx-ir writes external data through a temporary directory named ".<data file name>.XXXX".
_TMP_PATTERN = re.compile(r"^\.?" + re.escape(TMP_PREFIX) + r"(\d+)-")
# Weights made during a streaming compile at least this big go to the spill file at once.
SPILL_MIN_BYTES = 1 << 20


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model lazily; raise ModelLoadError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"input model not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"input model is a directory, not a file: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"input model is empty: {path}")
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf gives many exception types for bad bytes
        raise ModelLoadError(f"not a readable ONNX model: {path} ({_first_line(exc)})") from None
    try:
        # Structure, opsets, node schemas and strict type/shape inference (a weight of the wrong
        # dtype or rank for its op); reads the proto, not the external data.
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ModelLoadError(f"not a valid ONNX model: {path} ({_first_line(exc)})") from None
    if not model.graph.outputs:
        raise ModelLoadError(f"ONNX model has no graph outputs: {path}")
    _check_external_data(model, path)
    _check_initializer_sizes(model)
    return model


def _check_initializer_sizes(model: ir.Model) -> None:
    """An initializer whose bytes do not match its dtype and shape is a broken file, not ours to guess."""
    for graph in model.graphs():
        for init in graph.initializers.values():
            tensor = init.const_value
            proto = getattr(tensor, "raw", None)
            if not isinstance(proto, onnx.TensorProto) or not proto.HasField("raw_data"):
                continue
            try:
                expected = tensor.nbytes
            except Exception:
                raise ModelLoadError(f"initializer {init.name} has an unsupported dtype ({proto.data_type})") from None
            if len(proto.raw_data) != expected:
                raise ModelLoadError(f"initializer {init.name} holds {len(proto.raw_data)} bytes but its dtype and "
                                     f"shape {list(proto.dims)} need {expected}")


def _check_external_data(model: ir.Model, path: Path) -> None:
    """Fail early, with the file name, when an external data file is missing or short."""
    for init in model.graph.initializers.values():
        tensor = init.const_value
        if isinstance(tensor, ir.ExternalTensor):
            location = Path(tensor.base_dir or path.parent) / tensor.location
            if not location.exists():
                raise ModelLoadError(f"external data file missing: {location} (needed by {init.name})")
            if tensor.length is not None and tensor.length != tensor.nbytes:
                raise ModelLoadError(f"external tensor {init.name} has length {tensor.length} but its dtype and "
                                     f"shape need {tensor.nbytes} bytes")
            needed = (tensor.offset or 0) + (tensor.length if tensor.length is not None else tensor.nbytes)
            if location.stat().st_size < needed:
                raise ModelLoadError(
                    f"external data file too short: {location} has {location.stat().st_size} bytes, "
                    f"{init.name} needs {needed}"
                )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def check_output_path(input_path: str | os.PathLike, output_path: str | os.PathLike) -> Path:
    """Refuse an output that would overwrite the input or cannot be written."""
    out = Path(output_path)
    if out.exists() and Path(input_path).exists() and out.resolve() == Path(input_path).resolve():
        raise OutputError(f"output path is the input model; refusing to overwrite it: {out}")
    if out.is_dir():
        raise OutputError(f"output path is a directory: {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"output directory does not exist: {parent}")
    if not parent.is_dir():
        raise OutputError(f"output directory is not a directory: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory is not writable: {parent}")
    return out


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(directory: str | os.PathLike) -> None:
    """Remove temporaries that a killed earlier run left in the output directory.

    Names hold the writer's pid (`.qcompile-tmp-<pid>-...`): those of live processes (another
    compile writing to the same directory) are left alone; names without a pid (older
    versions) are removed.
    """
    directory = Path(directory)
    for stale in list(directory.glob(TMP_PREFIX + "*")) + list(directory.glob("." + TMP_PREFIX + "*")):
        match = _TMP_PATTERN.match(stale.name)
        if match and _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()


def temporary_name(out: Path, suffix: str = "") -> Path:
    """A temporary path beside `out` owned by this process (see clean_stale_temporaries)."""
    directory = out.parent if str(out.parent) else Path(".")
    return directory / f"{TMP_PREFIX}{os.getpid()}-{out.name}{suffix}"


class Spill:
    """The output's external data, written while the compile runs.

    `flush(model)` appends every in-memory initializer of SPILL_MIN_BYTES or more (a packed
    weight a pass just made) to one temporary data file beside the output and replaces it by an
    ExternalTensor reading that file, then drops the resident pages of every memory-mapped input
    weight. Called after each weight a pass quantizes, it keeps the compile's memory to about one
    weight, whatever the model's size. `save_model` then copies the file into the final data file.
    """

    def __init__(self, output_path: str | os.PathLike, model: ir.Model) -> None:
        self.out = Path(output_path)
        # The input's memory-mapped weights, also after a pass removed them from the graph
        # (a pass's own records may still reference them, keeping their mappings open).
        self.sources = [init.const_value for graph in model.graphs() for init in graph.initializers.values()
                        if isinstance(init.const_value, ir.ExternalTensor)]
        self.path = temporary_name(self.out, ".spill")
        self.file = None
        self.bytes = 0
        self.tensors = 0

    def flush(self, model: ir.Model) -> None:
        for graph in model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if tensor is None or isinstance(tensor, (ir.ExternalTensor, ir.LazyTensor)):
                    continue
                if tensor.nbytes < SPILL_MIN_BYTES:
                    continue
                try:
                    value.const_value = self._write(tensor, value.name)
                except OSError as exc:
                    raise OutputError(f"cannot write {self.out}: {exc.strerror or exc}") from None
        release_mapped_pages(self.sources)

    def _write(self, tensor: ir.TensorProtocol, name: str) -> ir.ExternalTensor:
        if self.file is None:
            self.file = open(self.path, "wb")
        offset = self.file.tell()
        tensor.tofile(self.file)
        length = self.file.tell() - offset
        self.file.flush()
        self.bytes += length
        self.tensors += 1
        return ir.ExternalTensor(self.path.name, offset, length, tensor.dtype, shape=tensor.shape, name=name,
                                 base_dir=str(self.path.parent))

    def close(self) -> None:
        """Remove the spill file (after save_model copied it, or on failure)."""
        if self.file is not None:
            self.file.close()
            self.file = None
        with contextlib.suppress(OSError):
            self.path.unlink()


def release_mapped_pages(tensors) -> None:
    """Drop the resident pages of memory-mapped weights (they fault back in if read again).

    A file mapping's pages count in the process's RSS once touched; a streaming compile reads
    every input weight once, so without this its RSS would grow to the model's size.
    """
    for tensor in tensors:
        raw = tensor.raw if isinstance(tensor, ir.ExternalTensor) else None
        if isinstance(raw, mmap.mmap) and not raw.closed:
            with contextlib.suppress(OSError, ValueError):
                raw.madvise(mmap.MADV_DONTNEED)


def has_external_data(model: ir.Model) -> bool:
    return any(isinstance(init.const_value, ir.ExternalTensor)
               for graph in model.graphs() for init in graph.initializers.values())


def save_model(model: ir.Model, output_path: str | os.PathLike, external: bool | None = None) -> Path:
    """Write the model atomically; weights go to `<name>.data` when the model is large
    (or `external` is true).

    Tensors are written one at a time (memory-mapped or spilled ones copied in chunks), so
    saving never holds the weights in memory. The data file is renamed into place before the
    proto that names it; a failure removes both temporaries.
    """
    out = Path(output_path)
    directory = out.parent if str(out.parent) else Path(".")
    clean_stale_temporaries(directory)
    if external is None:
        external = _estimated_size(model) > EXTERNAL_DATA_THRESHOLD
    tmp = temporary_name(out, ".onnx")
    data_name = out.name + ".data"
    tmp_data = temporary_name(out, ".data")
    backup = temporary_name(out, ".previous")
    state = {"data_replaced": False}
    try:
        if external:
            ir.save(model, tmp, external_data=tmp_data.name)
            _retarget_external_data(tmp, tmp_data.name, data_name)
            # Two files cannot be replaced at once: the old proto moves away first, so a kill in
            # between leaves no model at the destination rather than an old proto reading new data.
            if out.exists():
                os.replace(out, backup)
            os.replace(tmp_data, directory / data_name)
            state["data_replaced"] = True
        else:
            ir.save(model, tmp)
        os.replace(tmp, out)
        with contextlib.suppress(OSError):
            backup.unlink()
    except BaseException as exc:
        for leftover in (tmp, tmp_data):
            with contextlib.suppress(OSError):
                leftover.unlink()
        if backup.exists() and not out.exists() and not state["data_replaced"]:
            with contextlib.suppress(OSError):
                os.replace(backup, out)   # the previous model and its data file are intact: put it back
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
        raise
    return out


def inline_proto(model: ir.Model):
    """The model as a ModelProto whose external tensors carry their bytes (for onnxruntime
    sessions built from bytes, which cannot resolve relative data files)."""
    proto = ir.to_proto(model)
    external = {name: init for graph in model.graphs() for name, init in graph.initializers.items()
                if isinstance(init.const_value, ir.ExternalTensor)}
    if not external:
        return proto
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name in external:
            tensor.raw_data = external[tensor.name].const_value.tobytes()
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    return proto


def _retarget_external_data(proto_path: Path, old_location: str, new_location: str) -> None:
    """Point every external tensor of a saved proto at the final data file name."""
    proto = onnx.load(str(proto_path), load_external_data=False)
    for tensor in _all_tensors(proto.graph):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old_location:
                entry.value = new_location
    with open(proto_path, "wb") as f:
        f.write(proto.SerializeToString())


def graph_protos(graph: onnx.GraphProto):
    """`graph` and every graph nested in its nodes' attributes (If branches, Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from graph_protos(sub)


def _all_tensors(graph: onnx.GraphProto):
    for g in graph_protos(graph):
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t


def _estimated_size(model: ir.Model) -> int:
    total = 0
    for graph in model.graphs():
        for init in graph.initializers.values():
            if init.const_value is not None:
                total += init.const_value.nbytes
    return total


def file_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a model, its external data files included."""
    path = Path(path)
    total = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return total
    seen = set()
    for tensor in _all_tensors(proto.graph):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                data = path.parent / entry.value
                if data.exists():
                    total += data.stat().st_size
    return total


def expose_nested_values(proto: onnx.ModelProto, names) -> list[str]:
    """Make values computed inside If branches (a merged decoder's, at any depth) readable as
    outputs of the main graph, under their own names, for calibration and verification taps.

    Each such value becomes an extra output of its branch and of the If; the other branch outputs
    an empty tensor of the same type there, so whichever branch runs, the output exists, and it is
    empty when the value was not computed. A value inside a Loop body (or a Scan body without
    scan_output_axes/directions) becomes an extra scan output: its values of every iteration,
    stacked on a new first axis. The proto is changed in place; returns the names that could not
    be exposed (other bodies)."""
    owner: dict[int, tuple] = {}            # id(subgraph) -> (If/Loop node, attribute name, parent graph)
    produced: dict[str, onnx.GraphProto] = {}
    types: dict[str, onnx.TypeProto] = {}

    def walk(graph: onnx.GraphProto) -> None:
        for vi in [*graph.value_info, *graph.input, *graph.output]:
            if vi.type.HasField("tensor_type"):
                types.setdefault(vi.name, vi.type)
        for node in graph.node:
            for out in node.output:
                produced.setdefault(out, graph)
            for attr in node.attribute:
                subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                for sub in subs:
                    owner[id(sub)] = (node, attr.name, graph)
                    for inp in sub.input:                 # a body's inputs (loop-carried state) too
                        produced.setdefault(inp.name, sub)
                    walk(sub)

    walk(proto.graph)
    skipped = []
    for name in names:
        graph = produced.get(name)
        if graph is None or graph is proto.graph:
            continue
        chain, g = [], graph
        while g is not proto.graph:
            node, attr_name, parent = owner[id(g)]
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("If", "Loop", "Scan") or (
                    node.op_type == "Scan" and any(a.name in ("scan_output_axes", "scan_output_directions")
                                                   for a in node.attribute)):
                break
            chain.append((g, node, attr_name))
            g = parent
        if g is not proto.graph:
            skipped.append(name)
            continue
        tensor_type = types.get(name)
        elem = tensor_type.tensor_type.elem_type if tensor_type is not None else onnx.TensorProto.FLOAT
        rank = len(tensor_type.tensor_type.shape.dim) if tensor_type is not None and \
            tensor_type.tensor_type.HasField("shape") else 1
        for branch, node, attr_name in chain:
            out = name
            # listed twice, onnxruntime returns None; a body input as a body output: a copy either way
            if any(o.name == name for o in [*branch.output, *branch.input]):
                out = f"{name}__tap"
                branch.node.append(onnx.helper.make_node("Identity", [name], [out]))
            branch.output.append(onnx.helper.make_tensor_value_info(out, elem, None))
            node.output.append(name)
            if node.op_type != "If":       # a body's extra output is a scan output: one slice per iteration
                continue
            other_name = "else_branch" if attr_name == "then_branch" else "then_branch"
            other = next(a.g for a in node.attribute if a.name == other_name)
            absent = f"{name}__absent_{len(other.node)}"
            empty = onnx.helper.make_tensor(absent, elem, [0] * max(rank, 1), [])
            other.node.append(onnx.helper.make_node("Constant", [], [absent], value=empty))
            other.output.append(onnx.helper.make_tensor_value_info(absent, elem, None))
    return skipped
