"""Which weight formats take which activation float types: a float16 / bfloat16 model is compiled
where the format's ops take its activations (int4: MatMulNBits and int4 DequantizeLinear; embedding
rows, dequantized into the table's type) and refused with a reason where they do not."""

from __future__ import annotations

import onnx_ir as ir

from qcompiler.errors import UsageError

# format -> activation types its ops take (formats not listed: float32 only)
ACTIVATION_TYPES = {
    "int4": (ir.DataType.FLOAT, ir.DataType.FLOAT16),
}
_WHY = {
    "int8": "onnxruntime's DynamicQuantizeLinear / MatMulInteger take float32 activations",
}


def check_activation_types(ctx) -> None:
    """UsageError (exit 2) when a linear planned in a format reads activations that format cannot take."""
    for lin in ctx.roles.linears:
        wp = ctx.plan.get(lin.name)
        if wp is None or wp.format == "keep" or lin.role == "embedding":
            continue
        dtype = lin.node.inputs[0].dtype
        if dtype is None or dtype in ACTIVATION_TYPES.get(wp.format, (ir.DataType.FLOAT,)):
            continue
        why = _WHY.get(wp.format, "the ai.qcompiler ops take float32 activations")
        raise UsageError(f"{dtype.name.lower()} activations at '{lin.node.name or lin.name}': format {wp.format} is "
                         f"not supported there ({why}); use --scheme int4 (MatMulNBits takes float16) or compile "
                         f"the float32 export")
