"""A compiled file fed back: its ai.qcompiler nodes checked against the op contract before compiling.

An op this version does not define, a domain version it does not read, or a node whose constant
inputs and attributes break the contract (runtime_ops.formats.validate: the checks the native
library and the function bodies make) is a ModelLoadError, exit 2, even when nothing runs the
model (a streaming compile, --no-verify); inputs fed at run time are checked by the library then.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.errors import ModelLoadError

DOMAIN = "ai.qcompiler"


def _stand_in(op_type: str, i: int, value: ir.Value | None, attrs: dict):
    """The input as numpy: constants as they are; A / indices (run-time activations) by a one-row
    stand-in without rows; None for an absent input; False when unknown (not checkable)."""
    if value is None or not value.name:
        return None
    if value.const_value is not None and not value.is_graph_input():
        return value.const_value.numpy()
    if op_type != "PackedGather" and i == 0:
        dtype = np.float16 if value.dtype == ir.DataType.FLOAT16 else np.float32
        k = attrs.get("K")
        return np.zeros((0, int(k)) if isinstance(k, int) and 1 <= k <= 1 << 31 else (0, 1), dtype)   # no rows: no memory
    if op_type == "PackedGather" and i == 4:
        return np.zeros(1, np.int32 if value.dtype == ir.DataType.INT32 else np.int64)
    return False


def check_compiled_nodes(model: ir.Model) -> int:
    """ModelLoadError for the first ai.qcompiler node that breaks the contract; returns how many were checked."""
    from qcompiler.ops import contract

    version = model.opset_imports.get(DOMAIN)
    if version is not None and version != contract.OPSET_VERSION:
        raise ModelLoadError(f"the model imports {DOMAIN} version {version}; this qcompiler reads version "
                             f"{contract.OPSET_VERSION} (a file from another version, or altered)")
    checked = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain != DOMAIN:
            continue
        label = f"node '{node.name}' ({DOMAIN} {node.op_type})" if node.name else f"an {DOMAIN} {node.op_type} node"
        if node.op_type not in contract.OPS:
            raise ModelLoadError(f"{label}: this qcompiler does not define that op (it knows "
                                 f"{', '.join(sorted(contract.OPS))}): a file from another version, or altered")
        attrs = {name: a.value for name, a in node.attributes.items() if a.type == ir.AttributeType.INT}
        inputs = [_stand_in(node.op_type, i, v, attrs) for i, v in enumerate(node.inputs)]
        if any(x is False for x in inputs):
            continue
        try:
            contract.validate(node.op_type, inputs, attrs)
        except contract.ContractError as exc:
            raise ModelLoadError(f"{label} breaks the op contract: {exc}") from None
        checked += 1
    return checked
