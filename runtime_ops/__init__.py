"""qcompiler's native onnxruntime op library (ai.qcompiler ops) and its Python side: the contract.

`library_path()` / `register(session_options)` load the native kernels; `runtime_ops.contract`
holds the formats, packers, numpy references and ONNX function bodies.
"""

from __future__ import annotations

import glob
import os

__all__ = ["library_path", "register", "LibraryNotBuilt"]

_LIB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib")
LIB_NAME = "libqcompiler_ops.so"


class LibraryNotBuilt(RuntimeError):
    """The native library was not built (run `make native` or `pip install -e .`)."""


def library_path() -> str:
    """Path of the built shared library (env QCOMPILER_OPS_LIB overrides)."""
    env = os.environ.get("QCOMPILER_OPS_LIB")
    if env:
        return env
    candidates = [os.path.join(_LIB_DIR, LIB_NAME)] + sorted(glob.glob(os.path.join(_LIB_DIR, "libqcompiler_ops*.so")))
    existing = [c for c in candidates if os.path.isfile(c)]
    if not existing:
        raise LibraryNotBuilt(f"{LIB_NAME} not found in {_LIB_DIR}: run `make native` or `pip install -e .`")
    return max(existing, key=os.path.getmtime)


def register(session_options) -> str:
    """Register the ai.qcompiler kernels with an onnxruntime SessionOptions; returns the path."""
    path = library_path()
    session_options.register_custom_ops_library(path)
    return path
