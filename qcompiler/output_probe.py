"""The model's output error when some of its initializers are replaced (fake-quantized weights).

Used where a choice is made by its measured effect on the output (quantize_embeddings' measured
row precision): one FP32 reference run on a few calibration samples, then one run per candidate.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

__all__ = ["OutputProbe"]


def _initializers(graph: onnx.GraphProto):
    """Every initializer TensorProto of the graph and of its subgraphs (If / Loop / Scan bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _initializers(sub)


class OutputProbe:
    """error({initializer name: array}) -> mean over samples of the relative L2 error of the first
    float graph output (the primary output: logits, last_hidden_state), vs the FP32 model."""

    def __init__(self, model: ir.Model, feeds: list[dict[str, np.ndarray]], max_samples: int = 8):
        from qcompiler.model_io import inline_proto
        from qcompiler.verify import make_session

        self._make_session = make_session
        self.proto = inline_proto(model)
        if len(feeds) > max_samples:
            feeds = [feeds[i] for i in np.linspace(0, len(feeds) - 1, max_samples).round().astype(int)]
        self.feeds = feeds
        self._tensors = {t.name: t for t in _initializers(self.proto.graph)}
        self.runs = 0
        self._reference = self._run()

    def _run(self) -> list[np.ndarray]:
        sess = self._make_session(self.proto)
        self.runs += 1
        outs = []
        for feed in self.feeds:
            values = sess.run(None, {k: v for k, v in feed.items() if k in {i.name for i in sess.get_inputs()}})
            outs.append(next((v for v in values if np.asarray(v).dtype.kind == "f"), values[0]))
        return outs

    def error(self, replacements: dict[str, np.ndarray]) -> float:
        saved = {}
        try:
            for name, array in replacements.items():
                tensor = self._tensors[name]
                saved[name] = onnx.TensorProto()
                saved[name].CopyFrom(tensor)
                dtype = numpy_helper.to_array(tensor).dtype if tensor.data_type != onnx.TensorProto.FLOAT else np.float32
                tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))
            got = self._run()
        finally:
            for name, tensor in saved.items():
                self._tensors[name].CopyFrom(tensor)
        errs = []
        for r, g in zip(self._reference, got):
            a, b = np.asarray(r, np.float64), np.asarray(g, np.float64)
            errs.append(float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)))
        return float(np.mean(errs)) if errs else 0.0
