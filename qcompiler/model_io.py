"""Load and save models with onnx-ir: lazy weights in, atomic writes out.

Loading never reads weights eagerly (onnx-ir memory-maps external data), and
saving goes to a temporary file beside the destination that is renamed into
place only once complete, so an interrupted run leaves no partial output.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from qcompiler.errors import ModelLoadError, OutputError

# Above this serialized size the output keeps its weights in an external data file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
TMP_PREFIX = ".qcompile-tmp-"


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
    if not model.graph.outputs:
        raise ModelLoadError(f"ONNX model has no graph outputs: {path}")
    _check_external_data(model, path)
    return model


def _check_external_data(model: ir.Model, path: Path) -> None:
    """Fail early, with the file name, when an external data file is missing or short."""
    for init in model.graph.initializers.values():
        tensor = init.const_value
        if isinstance(tensor, ir.ExternalTensor):
            location = Path(tensor.base_dir or path.parent) / tensor.location
            if not location.exists():
                raise ModelLoadError(f"external data file missing: {location} (needed by {init.name})")
            needed = (tensor.offset or 0) + (tensor.length or 0)
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


def clean_stale_temporaries(directory: str | os.PathLike) -> None:
    """Remove temporary files that a killed earlier run left in the output directory."""
    for stale in Path(directory).glob(TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def save_model(model: ir.Model, output_path: str | os.PathLike) -> Path:
    """Write the model atomically; weights go to `<name>.data` when the model is large."""
    out = Path(output_path)
    directory = out.parent if str(out.parent) else Path(".")
    clean_stale_temporaries(directory)
    large = _estimated_size(model) > EXTERNAL_DATA_THRESHOLD
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".onnx", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    data_name = out.name + ".data"
    tmp_data = directory / (TMP_PREFIX + data_name)
    try:
        if large:
            ir.save(model, tmp, external_data=tmp_data.name)
        else:
            ir.save(model, tmp)
        if large:
            # The proto names its data file; rename data first so the pair is consistent.
            _retarget_external_data(tmp, tmp_data.name, data_name)
            os.replace(tmp_data, directory / data_name)
        os.replace(tmp, out)
    except OSError as exc:
        for leftover in (tmp, tmp_data):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        for leftover in (tmp, tmp_data):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise
    return out


def _retarget_external_data(proto_path: Path, old_location: str, new_location: str) -> None:
    """Point every external tensor of a saved proto at the final data file name."""
    proto = onnx.load(str(proto_path), load_external_data=False)
    for tensor in _all_tensors(proto.graph):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old_location:
                entry.value = new_location
    with open(proto_path, "wb") as f:
        f.write(proto.SerializeToString())


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _all_tensors(sub)


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
