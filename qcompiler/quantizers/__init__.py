"""Numpy quantizers, one file per format family: they turn float weights into codes and scales.

Packing those codes into the bytes an op reads is the op contract's job (qcompiler.ops.formats
for our custom ops; onnx/onnxruntime layouts for the standard ones).
"""
