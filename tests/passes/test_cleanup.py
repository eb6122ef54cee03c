"""cleanup: Constant attributes onnxruntime's symbolic shape inference can read, IR version per opset."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from qcompiler.passes.cleanup import Cleanup

# value_ints in the main graph and in an If branch; IR 8 with opset 21 (what the upgrade left).
GRAPH = """
<ir_version: 8, opset_import: ["" : 21]>
g (float[2,6] x, bool c) => (float[3,4] y) {
  shape = Constant <value_ints = [3, 4]> ()
  r = Reshape(x, shape)
  y = If (c) <
    then_branch = g1 () => (float[3,4] o1) { k = Constant <value_float = 2.0> () o1 = Mul(r, k) },
    else_branch = g2 () => (float[3,4] o2) { o2 = Neg(r) }
  >
}
"""


def test_constants_become_tensors_and_ir_version_follows_opset():
    proto = onnx.parser.parse_model(GRAPH)
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(2, 6)}
    model = ir.from_proto(proto)
    Cleanup(None, Cleanup.Options(stamp=False))(model)
    out = ir.to_proto(model)
    assert out.ir_version == 10     # opset 21 needs IR 10
    constants = [n for n in out.graph.node if n.op_type == "Constant"]
    constants += [n for a in out.graph.node[-1].attribute for n in a.g.node if n.op_type == "Constant"]
    assert len(constants) == 2 and all([a.name for a in n.attribute] == ["value"] for n in constants)
    onnx.checker.check_model(out, full_check=True)
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    SymbolicShapeInference.infer_shapes(out, auto_merge=True)   # raised on value_ints before
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for c in (True, False):
        f = {**feeds, "c": np.array(c)}
        want = ort.InferenceSession(proto.SerializeToString(), so).run(None, f)[0]
        got = ort.InferenceSession(out.SerializeToString(), so).run(None, f)[0]
        np.testing.assert_array_equal(got, want)
