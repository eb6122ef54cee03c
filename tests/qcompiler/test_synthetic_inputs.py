"""Inputs synthesized from a model's signature, and .npz samples of a fixed batch (small ONNX graphs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qcompiler import calibration
from qcompiler.errors import CalibrationError
from qcompiler.synthetic_inputs import present_name, read_config, synthesize

STATIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[2, 12] input_ids, int64[2, 12] attention_mask) => (float[2, 12, 8] y) {
    e = Gather(table, input_ids)
    m = Cast<to = 1>(attention_mask)
    mu = Unsqueeze(m, axes)
    y0 = Mul(e, mu)
    y = MatMul(y0, w)
}
"""


def _static() -> ir.Model:
    proto = onnx.parser.parse_model(STATIC)
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "table"),
        onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(np.array([2], np.int64), "axes")])
    return ir.from_proto(proto)


def _toy_decoder() -> onnx.ModelProto:
    """A decoder with one cache pair: present.0.key = Concat(past_key_values.0.key, embedding), the
    mask dim written as Optimum writes it ("past_sequence_length + sequence_length")."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["e"]),                      # [B, S, 4]
        helper.make_node("Unsqueeze", ["e", "one"], ["e4"]),                            # [B, 1, S, 4]
        helper.make_node("Concat", ["past_key_values.0.key", "e4"], ["present.0.key"], axis=2),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["mf", "one"], ["msum"], keepdims=1),             # [B, 1]
        helper.make_node("Cast", ["position_ids"], ["pf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pf", "two"], ["pf3"]),
        helper.make_node("Add", ["e", "pf3"], ["ep"]),
        helper.make_node("MatMul", ["ep", "w"], ["h"]),
        helper.make_node("Unsqueeze", ["msum", "two"], ["msum3"]),
        helper.make_node("Add", ["h", "msum3"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "toy", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                      ["batch_size", "past_sequence_length + sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT,
                                      ["batch_size", 1, "past_sequence_length", 4]),
    ], [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", 40]),
        helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT,
                                      ["batch_size", 1, "past_sequence_length + sequence_length", 4]),
    ], [onnx.numpy_helper.from_array(rng.standard_normal((40, 4)).astype(np.float32), "table"),
        onnx.numpy_helper.from_array(rng.standard_normal((4, 40)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
        onnx.numpy_helper.from_array(np.array([2], np.int64), "two")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_fixed_dims_are_taken_as_they_are():
    model = _static()
    feeds = synthesize(model, samples=3)
    assert all(f["input_ids"].shape == (2, 12) and f["attention_mask"].shape == (2, 12) for f in feeds)
    assert all(f["input_ids"].max() < 50 for f in feeds)        # the table's own vocabulary
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString())
    for f in feeds:
        session.run(None, f)


def test_cache_inputs_follow_a_prompt_and_its_continuation():
    proto = _toy_decoder()
    model = ir.from_proto(proto)
    feeds = synthesize(model, samples=6, seq_len=8)
    prompts = [f for f in feeds if f["past_key_values.0.key"].shape[2] == 0]
    conts = [f for f in feeds if f["past_key_values.0.key"].shape[2] > 0]
    assert len(prompts) == 3 and len(conts) == 3
    session = ort.InferenceSession(proto.SerializeToString())
    for prompt, cont in zip(prompts, conts):
        past = cont["past_key_values.0.key"].shape[2]
        assert past == prompt["input_ids"].shape[1] == 8
        assert cont["attention_mask"].shape[1] == past + cont["input_ids"].shape[1]       # past + new
        np.testing.assert_array_equal(cont["position_ids"][0], past + np.arange(cont["input_ids"].shape[1]))
        np.testing.assert_array_equal(prompt["position_ids"][0], np.arange(8))
        # The continuation's past is the prompt's own present output, bit for bit.
        present = session.run(["present.0.key"], prompt)[0]
        np.testing.assert_array_equal(cont["past_key_values.0.key"], present)
        session.run(None, cont)
    assert present_name("past_key_values.3.decoder.value", ["logits", "present.3.decoder.value"]) == \
        "present.3.decoder.value"


def test_npz_of_a_fixed_batch(tmp_path):
    model = _static()
    rng = np.random.default_rng(2)
    rows = tmp_path / "rows.npz"     # [N * 2, 12]: cut into batches of the model's 2
    np.savez(rows, input_ids=rng.integers(0, 50, (6, 12)), attention_mask=np.ones((6, 12), np.int64))
    feeds = calibration.load_calibration(rows, model)
    assert len(feeds) == 3 and feeds[0]["input_ids"].shape == (2, 12)
    stacked = tmp_path / "stacked.npz"   # [samples, 2, 12]
    np.savez(stacked, input_ids=rng.integers(0, 50, (4, 2, 12)), attention_mask=np.ones((4, 2, 12), np.int64))
    feeds = calibration.load_calibration(stacked, model)
    assert len(feeds) == 4 and feeds[3]["attention_mask"].shape == (2, 12)
    stats = calibration.collect_stats(model, feeds, ["y0"])
    assert stats["y0"].rows_seen == 4 * 2 * 12      # every row of every batch (masks of ones)
    odd = tmp_path / "odd.npz"
    np.savez(odd, input_ids=rng.integers(0, 50, (5, 12)), attention_mask=np.ones((5, 12), np.int64))
    with pytest.raises(CalibrationError, match="multiple of the model's fixed batch 2"):
        calibration.load_calibration(odd, model)
    short = tmp_path / "short.npz"
    np.savez(short, input_ids=rng.integers(0, 50, (4, 10)), attention_mask=np.ones((4, 10), np.int64))
    with pytest.raises(CalibrationError, match="fixed dim is 12"):
        calibration.load_calibration(short, model)


def test_sizes_come_from_the_config_beside_the_model(tmp_path):
    proto = helper.make_model(helper.make_graph(
        [helper.make_node("ReduceMean", ["input_features"], ["y"], keepdims=0)], "speech",
        [helper.make_tensor_value_info("input_features", TensorProto.FLOAT,
                                       ["batch_size", "feature_size", "encoder_sequence_length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])]), opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "config.json").write_text('{"num_mel_bins": 16, "max_source_positions": 50}')
    path = tmp_path / "encoder_model.onnx"
    onnx.save(proto, path)
    feeds = synthesize(ir.from_proto(proto), samples=1, config=read_config(path))
    assert feeds[0]["input_features"].shape == (1, 16, 100)   # Whisper's encoder takes 2 x positions frames
