"""qcompiler's native onnxruntime op library (ai.qcompiler ops) and its Python side: the contract.

`library_path()` / `register(session_options)` load the native kernels; `qcompiler.ops.contract`
holds the formats, packers, numpy references and ONNX function bodies.
"""

from __future__ import annotations

import glob
import os

__all__ = ["library_path", "register", "LibraryNotBuilt", "RuntimeTooOld", "MIN_ONNXRUNTIME"]

_LIB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib")
LIB_NAME = "libqcompiler_ops.so"
# The library is built on onnxruntime's C API version 21 (release 1.21): an older onnxruntime
# refuses that API version and would leave every model on the slow function fallback.
MIN_ONNXRUNTIME = (1, 21)


class LibraryNotBuilt(RuntimeError):
    """The native library was not built (run `make native` or `pip install -e .`)."""


class RuntimeTooOld(RuntimeError):
    """The running onnxruntime is older than the C API the library was built on."""


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


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_runtime() -> str:
    """The running onnxruntime's version; RuntimeTooOld when it cannot serve the library."""
    import onnxruntime

    version = onnxruntime.__version__
    if _version_tuple(version) < MIN_ONNXRUNTIME:
        need = ".".join(map(str, MIN_ONNXRUNTIME))
        raise RuntimeTooOld(f"onnxruntime {version} cannot load the qcompiler op library (built on the "
                            f"{need} C API): pip install 'onnxruntime>={need}'")
    return version


def register(session_options) -> str:
    """Register the ai.qcompiler kernels with an onnxruntime SessionOptions; returns the path.

    Raises RuntimeTooOld on an onnxruntime older than the library's C API (which would otherwise
    print a warning and run every model on the function fallback), LibraryNotBuilt when the
    library is missing.
    """
    check_runtime()
    path = library_path()
    session_options.register_custom_ops_library(path)
    return path
