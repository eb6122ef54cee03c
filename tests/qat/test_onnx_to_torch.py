"""The ONNX-to-torch evaluator reproduces onnxruntime on the tiny BERT graphs; unknown ops fail clearly."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from qcompiler.qat.onnx_to_torch import OnnxModule, UnsupportedOp
from models.tiny_bert import example_inputs

# float32 with different summation orders (MLAS vs torch) over two layers: measured 1.4e-6 max abs
# on outputs of magnitude ~1-4; 2e-5 leaves room for other CPUs' kernels.
ATOL = 2e-5


@pytest.mark.parametrize("variant", ["post_ln", "pre_ln", "rms"])
@pytest.mark.parametrize("opset", [14, 17])
def test_reproduces_onnxruntime_on_tiny_bert(tiny_bert_dir, variant, opset):
    path = str(tiny_bert_dir / f"{variant}_{opset}.onnx")
    feeds = example_inputs(batch=3, seq=10, seed=4)
    feeds["attention_mask"][1, 6:] = 0                            # padding goes through the mask path
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    ref = sess.run(None, {k: feeds[k] for k in names})
    module = OnnxModule(ir.load(path))
    with torch.no_grad():
        out = module(**{k: torch.from_numpy(feeds[k]) for k in names})
    for r, o in zip(ref, out):
        assert r.shape == tuple(o.shape)
        np.testing.assert_allclose(o.numpy(), r, rtol=0, atol=ATOL)
    if opset == 17 and variant != "rms":
        assert len(module.taps["hidden"]) >= 2 and len(module.taps["attention"]) == 2


def test_gradients_reach_initializers_given_as_weights(tiny_bert_dir):
    model = ir.load(str(tiny_bert_dir / "post_ln_17.onnx"))
    name = next(n for n, v in model.graph.initializers.items() if len(v.const_value.shape) == 2
                and v.const_value.shape[0] == 64 and v.const_value.shape[1] == 64)

    class Param(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.from_numpy(model.graph.initializers[name].const_value.numpy().copy()))

        def forward(self):
            return self.p

    module = OnnxModule(model, weights={name: Param()})
    feeds = example_inputs()
    out = module(**{k: torch.from_numpy(v) for k, v in feeds.items() if k in module.input_names})
    out[0].pow(2).mean().backward()
    assert module.weights["w0"].p.grad.abs().sum() > 0


def test_unknown_op_is_one_clear_error():
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="c")], "g",
                              [helper.make_tensor_value_info("x", 1, [3, 3])],
                              [helper.make_tensor_value_info("y", 1, [])])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(UnsupportedOp, match="op Det \\(node c\\) is not supported") as err:
        OnnxModule(model)
    assert "\n" not in str(err.value)
