"""Roles come from the dataflow: every tiny-BERT variant and the real MiniLM are labelled alike."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from qcompiler.analyze import analyze

EXPECTED_PER_LAYER = ["attn_q", "attn_k", "attn_v", "attn_out", "ffn_up", "ffn_down"]


@pytest.mark.parametrize("variant", ["post_ln", "pre_ln", "rms"])
@pytest.mark.parametrize("opset", [14, 17])
def test_tiny_bert_roles(tiny_bert_dir, variant, opset):
    roles = analyze(ir.load(tiny_bert_dir / f"{variant}_{opset}.onnx"))
    got = [(lin.role, lin.layer) for lin in roles.linears]
    assert sorted(got) == sorted((r, layer) for layer in range(2) for r in EXPECTED_PER_LAYER)
    assert len(roles.embeddings) == 3
    assert roles.num_layers == 2
    assert all(lin.bias is not None for lin in roles.linears)


@pytest.mark.slow
def test_minilm_roles():
    from models.minilm import minilm_onnx

    roles = analyze(ir.load(minilm_onnx()))
    counts = roles.by_role()
    assert {k: counts[k] for k in EXPECTED_PER_LAYER} == {k: 6 for k in EXPECTED_PER_LAYER}
    assert roles.num_layers == 6


def test_tied_lm_head_and_shared_weight():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[B, T] ids) => (float[B, T, V] logits, float[B, T, D] h2) {
        x = Gather(E, ids)
        h1 = MatMul(x, S)
        h2 = MatMul(h1, S)
        Et = Transpose<perm = [1, 0]>(E)
        logits = MatMul(h2, Et)
    }
    """
    import numpy as np
    import onnx

    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "E"),
        onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "S"),
    ])
    roles = analyze(ir.from_proto(model))
    heads = [lin for lin in roles.linears if lin.role == "lm_head"]
    assert len(heads) == 1 and heads[0].transposed and heads[0].weight.name == "E"
    assert roles.embeddings[0].tied_linears == heads
    shared = [lin for lin in roles.linears if lin.weight.name == "S"]
    assert len(shared) == 2


def test_weight_from_dequantize_is_not_a_linear():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[B, 4] x) => (float[B, 2] y) {
        w = DequantizeLinear(wq, s)
        y = MatMul(x, w)
    }
    """
    import numpy as np
    import onnx

    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(np.ones((4, 2), np.int8), "wq"),
        onnx.numpy_helper.from_array(np.array(0.1, np.float32), "s"),
    ])
    assert analyze(ir.from_proto(model)).linears == []
