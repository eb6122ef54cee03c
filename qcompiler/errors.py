"""User-facing error types: one exception per kind of user mistake.

The CLI turns a `UsageError` into one line on stderr and exit code 2; anything
else is an internal error (exit 1). Library callers catch them as exceptions.
"""


class QCompilerError(Exception):
    """Base class of every error qcompiler raises on purpose."""

    exit_code = 1


class UsageError(QCompilerError):
    """The user asked for something impossible: bad path, bad option, bad scheme."""

    exit_code = 2


class ModelLoadError(UsageError):
    """The input is missing, not ONNX, truncated, or its external data is unreadable."""


class SchemeError(UsageError):
    """Unknown scheme name or an invalid scheme file."""


class CalibrationError(UsageError):
    """Calibration data does not fit the model (names, dtypes, shapes, empty)."""


class OutputError(UsageError):
    """The output cannot be written (same as input, unwritable directory, disk full)."""


class MissingExtra(UsageError):
    """A feature needs an optional dependency group that is not installed."""


def require_extra(module: str, extra: str, feature: str):
    """Import ``module`` or raise MissingExtra naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{feature} needs {module.split('.')[0]}: pip install 'qcompiler[{extra}]'") from None


class QualityGateError(QCompilerError):
    """The compiled model's verified accuracy is below the user's gate (--min-cosine): nothing written."""

    exit_code = 3


def ort_message(exc: BaseException, limit: int = 400) -> str:
    """onnxruntime's error as one line that keeps its point: the '[ONNXRuntimeError] : 2 : ... :'
    prefix and the 'Please fix ...' advice dropped, 'Non-zero status code returned while running
    Gather node. Name:'n' Status Message: m' as "Gather node 'n': m", continuation lines joined
    (a shape error's indices sit on the lines after 'for the following indices')."""
    import re

    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ", "", text)
    text = re.sub(r"Non-zero status code returned while running (\S+) node\. Name:'([^']*)' Status Message: ",
                  lambda m: f"{m.group(1)} node '{m.group(2)}': " if m.group(2) else f"{m.group(1)} node: ", text)
    text = re.sub(r"\s*Please fix either the inputs(/outputs)? or the model\.?", "", text)
    text = re.sub(r"\S+\.(cc|h|cpp):\d+ \S+ ", "", text)       # source locations of ORT_ENFORCE messages
    return text if len(text) <= limit else text[: limit - 3] + "..."
