"""qcompiler: compile FP32 transformer ONNX graphs into small, fast low-bit ONNX graphs.

    import qcompiler
    result = qcompiler.compile("model.onnx", scheme="int4", output="model.int4.onnx")
"""

__version__ = "0.1.0"


def compile(model_path, scheme="int8", output=None, **kwargs):  # noqa: A001 - the natural name
    """Compile `model_path` with `scheme`; returns the report (dict). See qcompiler.pipeline."""
    from qcompiler.pipeline import compile_model

    return compile_model(model_path, scheme=scheme, output=output, **kwargs)
