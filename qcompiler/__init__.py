"""qcompiler: compile FP32 transformer ONNX graphs into small, fast low-bit ONNX graphs.

    import qcompiler
    result = qcompiler.compile("model.onnx", scheme="int4", output="model.int4.onnx", calib="calib.npz")
    print(result.size_after, result.verification["outputs"])

`qcompiler.compile` is documented in qcompiler.api; `qcompiler.ops` is the native op library
(`qcompiler.ops.register(session_options)` to run the compiled models with its kernels).
"""

__version__ = "0.1.0"

from qcompiler.api import CompileResult, WeightResult, compile  # noqa: E402,A004

__all__ = ["compile", "CompileResult", "WeightResult", "__version__"]
