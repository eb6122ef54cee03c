"""The tiny BERT-like test model: exports at opset 14 and 17, runs in onnxruntime, has the expected forms."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.tiny_bert import OUTLIER_UNITS, build_tiny_bert, example_inputs, make_tiny_bert


def _ops(path):
    return collections.Counter(n.op_type for n in onnx.load(path).graph.node)


def _run(path, feeds):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _torch(variant, feeds):
    m = make_tiny_bert(variant)
    with torch.no_grad():
        return m(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()


@pytest.mark.parametrize("variant", ["post_ln", "pre_ln", "rms"])
@pytest.mark.parametrize("opset", [14, 17])
def test_exports_and_matches_torch(tmp_path, variant, opset):
    path = build_tiny_bert(tmp_path / "m.onnx", opset=opset, variant=variant)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # single file, no external data
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in model.graph.input)
    # dynamic batch and sequence: a shape other than the traced one
    for batch, seq in [(1, 5), (3, 20)]:
        feeds = example_inputs(batch, seq)
        y = _run(path, feeds)
        assert y.shape == (batch, seq, 64)
        np.testing.assert_allclose(y, _torch(variant, feeds), atol=1e-4, rtol=1e-4)
    assert np.isfinite(y).all() and y.std() > 0.3


def test_opset14_is_decomposed(tmp_path):
    ops = _ops(build_tiny_bert(tmp_path / "m.onnx", opset=14))
    assert "LayerNormalization" not in ops
    for op in ("ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Erf", "MatMul", "Softmax"):
        assert ops[op] > 0, op
    assert ops["Pow"] == ops["Sqrt"] == 5  # 1 embedding + 2 per layer LayerNorms
    assert ops["ReduceMean"] == 10
    assert ops["Erf"] == 2


def test_opset17_has_layernormalization(tmp_path):
    ops = _ops(build_tiny_bert(tmp_path / "m.onnx", opset=17))
    assert ops["LayerNormalization"] == 5
    assert ops["Erf"] == 2
    assert "Pow" not in ops and "ReduceMean" not in ops


def _consumers(model):
    cons = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            cons[i].append(n.op_type)
    return cons


def test_pre_ln_norm_outputs_feed_matmuls(tmp_path):
    model = onnx.load(build_tiny_bert(tmp_path / "m.onnx", opset=17, variant="pre_ln"))
    cons = _consumers(model)
    outputs = {o.name for o in model.graph.output}
    lns = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert len(lns) == 5  # 2 per layer + final
    inner = [n for n in lns if n.output[0] not in outputs]
    assert len(inner) == 4
    for n in inner:
        assert cons[n.output[0]] and set(cons[n.output[0]]) == {"MatMul"}, cons[n.output[0]]


def test_post_ln_norm_outputs_feed_residual(tmp_path):
    model = onnx.load(build_tiny_bert(tmp_path / "m.onnx", opset=17, variant="post_ln"))
    cons = _consumers(model)
    lns = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert any("Add" in cons[n.output[0]] for n in lns)


@pytest.mark.parametrize("opset", [14, 17])
def test_rms_is_decomposed(tmp_path, opset):
    ops = _ops(build_tiny_bert(tmp_path / "m.onnx", opset=opset, variant="rms"))
    assert "LayerNormalization" not in ops
    assert ops["Pow"] == ops["Sqrt"] == ops["ReduceMean"] == 5
    assert ops["Sub"] <= 1  # only the attention-mask (1 - mask); no mean subtraction


def test_seed_changes_weights_and_is_deterministic(tmp_path):
    feeds = example_inputs(1, 6)
    a = _run(build_tiny_bert(tmp_path / "a.onnx", seed=0), feeds)
    b = _run(build_tiny_bert(tmp_path / "b.onnx", seed=0), feeds)
    c = _run(build_tiny_bert(tmp_path / "c.onnx", seed=1), feeds)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_ffn_has_outlier_channels():
    m = make_tiny_bert("post_ln")
    feeds = {k: torch.from_numpy(v) for k, v in example_inputs(2, 16).items()}
    acts = []
    hook = m.layers[0].ffn.down.register_forward_hook(lambda mod, inp, out: acts.append(inp[0]))
    with torch.no_grad():
        m(**feeds)
    hook.remove()
    peak = acts[0].abs().amax(dim=(0, 1))
    assert (peak[list(OUTLIER_UNITS)] > 8 * peak.median()).all()


def test_cli(tmp_path):
    from models.tiny_bert import main

    out = tmp_path / "cli.onnx"
    main([str(out), "--opset", "14", "--variant", "rms"])
    assert out.exists() and _ops(str(out))["Pow"] == 5


def test_rms_norm_outputs_feed_matmuls(tmp_path):
    model = onnx.load(build_tiny_bert(tmp_path / "m.onnx", opset=17, variant="rms"))
    by_input = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            by_input[i].append(n)
    outputs = {o.name for o in model.graph.output}
    checked = 0
    for sqrt in (n for n in model.graph.node if n.op_type == "Sqrt"):
        (div,) = by_input[sqrt.output[0]]
        assert div.op_type == "Div"
        (mul,) = by_input[div.output[0]]  # times gamma
        assert mul.op_type == "Mul"
        if mul.output[0] in outputs:
            continue
        assert {c.op_type for c in by_input[mul.output[0]]} == {"MatMul"}
        checked += 1
    assert checked == 4
