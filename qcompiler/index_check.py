"""Token ids outside an embedding table, found in the user's samples before anything runs.

onnxruntime would refuse them mid-run (a Gather's range error, or a PackedGather's); checked here,
the message names the sample, the input, the id and the table's row count.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.errors import CalibrationError

# Ops an id input may pass through unchanged on its way to the Gather.
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


def _rows_of(node: ir.Node, ids: ir.Value) -> tuple[int, str] | None:
    """(rows, table name) when `ids` is the index input of a Gather on a constant table (axis 0) or
    of a PackedGather; else None."""
    if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2 and node.inputs[1] is ids:
        table = node.inputs[0]
        if table is None or table.const_value is None or node.attributes.get_int("axis", 0) != 0:
            return None
        shape = table.const_value.shape
        return (int(shape[0]), table.name) if len(shape) >= 1 else None
    if node.op_type == "PackedGather" and node.domain == "ai.qcompiler" and len(node.inputs) >= 5 \
            and node.inputs[4] is ids:
        row_bits = node.inputs[2]
        if row_bits is not None and row_bits.const_value is not None and len(row_bits.const_value.shape) == 1:
            return int(row_bits.const_value.shape[0]), node.inputs[0].name
    return None


def index_tables(model: ir.Model) -> dict[str, tuple[int, str]]:
    """{graph input: (rows, table)} for integer inputs that index an embedding table, through
    shape-only ops (subgraphs included: a merged decoder's branches read the outer input_ids)."""
    found: dict[str, tuple[int, str]] = {}
    for inp in model.graph.inputs:
        if inp.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            continue
        stack, seen = [inp], set()
        while stack:
            value = stack.pop()
            for use in value.uses():
                node = use.node
                if id(node) in seen:
                    continue
                seen.add(id(node))
                hit = _rows_of(node, value)
                if hit is not None and (inp.name not in found or hit[0] < found[inp.name][0]):
                    found[inp.name] = hit
                elif node.op_type in _PASS_THROUGH and use.idx == 0:
                    stack.extend(node.outputs)
    return found


def check_index_ranges(model: ir.Model, feeds: list[dict[str, np.ndarray]], what: str = "calibration sample") -> None:
    """CalibrationError naming the first id outside [-rows, rows) of the table it indexes."""
    tables = index_tables(model)
    if not tables:
        return
    for i, feed in enumerate(feeds):
        for name, (rows, table) in tables.items():
            a = feed.get(name)
            if a is None or a.size == 0 or a.dtype.kind not in "iu":
                continue
            bad = (a < -rows) | (a >= rows)
            if bad.any():
                where = tuple(int(j) for j in np.argwhere(bad)[0])
                raise CalibrationError(f"{what} {i}: input '{name}' holds id {int(a[where])} at position {list(where)}, "
                                       f"outside the {rows} rows of table '{table}' (ids -{rows} .. {rows - 1})")
