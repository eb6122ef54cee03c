"""The Python API: `qcompiler.compile(model, scheme=..., ...)` -> CompileResult.

The command line is a thin layer over this function. A model can be a path, an
onnx.ModelProto or an onnx_ir.Model; calibration data a path to an .npz or a dict of arrays.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qcompiler.errors import CalibrationError, UsageError

__all__ = ["compile", "CompileResult", "WeightResult"]


@dataclasses.dataclass(frozen=True)
class WeightResult:
    """What became of one weight: its role, layer, format ("keep" = left FP32) and why."""

    name: str
    role: str
    layer: int | None
    format: str
    reason: str = ""
    rel_l2: float | None = None     # the linear's output error vs FP32 in verification, when measured


@dataclasses.dataclass(frozen=True)
class CompileResult:
    """The outcome of one compile. `report` holds every figure (the JSON report's content)."""

    output: Path
    input: str
    scheme: str
    target: str
    size_before: int
    size_after: int
    calibration: str | None
    weights: list[WeightResult]
    verification: dict | None
    notes: list[str]
    seconds: float
    report: dict[str, Any]

    @property
    def compression(self) -> float:
        """size_before / size_after."""
        return self.size_before / self.size_after if self.size_after else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.report)


def _result(rep: dict[str, Any]) -> CompileResult:
    weights = [WeightResult(w["name"], w["role"], w.get("layer"), w["format"], w.get("reason", ""), w.get("rel_l2"))
               for w in rep.get("weights", [])]
    return CompileResult(output=Path(rep["output"]), input=str(rep["input"]), scheme=rep["scheme"],
                         target=rep["target"], size_before=int(rep["size_before"]), size_after=int(rep["size_after"]),
                         calibration=rep.get("calibration"), weights=weights, verification=rep.get("verification"),
                         notes=list(rep.get("notes", [])), seconds=float(rep.get("seconds_total", 0.0)), report=rep)


def _calibration_file(calib: Any, tmp: Path) -> str | None:
    if calib is None or isinstance(calib, (str, os.PathLike)):
        return None if calib is None else str(calib)
    if not isinstance(calib, Mapping) or not calib:
        raise CalibrationError("calib must be a path to an .npz or a non-empty dict {input name: array [samples, ...]}")
    arrays = {}
    for name, value in calib.items():
        if not isinstance(name, str):
            raise CalibrationError(f"calib keys must be model input names, got {name!r}")
        arrays[name] = np.asarray(value)
    path = tmp / "calibration.npz"
    np.savez(path, **arrays)
    return str(path)


def _model_file(model: Any, tmp: Path) -> tuple[str, bool]:
    """A path to read the model from, and whether it is a temporary copy."""
    if isinstance(model, (str, os.PathLike)):
        return str(model), False
    import onnx
    import onnx_ir as ir

    path = tmp / "model.onnx"
    if isinstance(model, onnx.ModelProto):
        onnx.save_model(model, str(path), save_as_external_data=model.ByteSize() > 1_900_000_000,
                        location="model.onnx.data")
    elif isinstance(model, ir.Model):
        ir.save(model, str(path))
    else:
        raise UsageError(f"model must be a path, an onnx.ModelProto or an onnx_ir.Model, not {type(model).__name__}")
    return str(path), True


def compile(  # noqa: A001 - the natural name
    model: str | os.PathLike | Any,
    scheme: str = "int8",
    output: str | os.PathLike | None = None,
    *,
    calib: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    exclude: list[str] | tuple[str, ...] = (),
    target: str = "ort",
    verify: bool = True,
    min_cosine: float | None = None,
    report_path: str | os.PathLike | None = None,
    prune_ffn: float | None = None,
    recover: str = "calibrated",
    recover_steps: int | None = None,
    memory_budget: int | None = None,
    progress: bool = False,
    console=None,
) -> CompileResult:
    """Compile an FP32 ONNX model with a scheme and return what was done and measured.

    model: a path, an ``onnx.ModelProto`` or an ``onnx_ir.Model`` (then ``output`` is required).
    scheme: a built-in name (``qcompile --list-schemes``) or a path to a scheme ``.toml``.
    output: where to write (default: ``<model>.<scheme>.onnx`` beside a model path); written
        atomically, never over the input.
    calib: calibration inputs, an ``.npz`` path or ``{input name: array [samples, ...]}``;
        without it, schemes that need statistics synthesize inputs and the result's notes say so.
    exclude: weights kept FP32: a role (``ffn_down``), ``layer:N`` or a glob on weight/node names;
        a pattern that matches nothing is a UsageError.
    target: ``"ort"`` (stock onnxruntime, contrib ops allowed: int4 as MatMulNBits), ``"qcompiler"``
        (onnxruntime with this project's op library: int4 as Int4MatMul) or ``"portable"`` (standard
        ONNX only).
    verify: run the compiled model beside the original and record its error.
    min_cosine: quality gate: raise QualityGateError (nothing written) when the verified cosine
        is below it.
    report_path: also write the report as JSON (+ .md, + .png).

    Raises a subclass of ``qcompiler.errors.QCompilerError`` on bad input (UsageError and its
    kinds: ModelLoadError, SchemeError, CalibrationError, OutputError, MissingExtra) and
    QualityGateError for a failed gate.
    """
    from qcompiler.pipeline import compile_model

    with tempfile.TemporaryDirectory(prefix="qcompile-api-") as tmp_dir:
        tmp = Path(tmp_dir)
        model_path, temporary = _model_file(model, tmp)
        if temporary and output is None:
            raise UsageError("output= is required when the model is given in memory (a ModelProto or onnx_ir.Model)")
        calib_path = _calibration_file(calib, tmp)
        rep = compile_model(model_path, scheme=scheme, output=output, report_path=report_path, calib=calib_path,
                            exclude=list(exclude), target=target, verify=verify, min_cosine=min_cosine,
                            prune_ffn=prune_ffn, recover=recover, recover_steps=recover_steps,
                            memory_budget=memory_budget, progress=progress, console=console)
    if temporary:
        rep["input"] = f"<in-memory {type(model).__name__}>"
    return _result(rep)
