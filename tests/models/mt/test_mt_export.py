"""The exported pair as the compiler sees it: inputs/outputs of the decoder-with-past, and the roles
the analysis finds (self- and cross-attention of one decoder layer counted as one layer)."""

from __future__ import annotations

import onnx_ir as ir

from qcompiler.analyze import analyze


def test_decoder_signature(tiny_mt, tiny_mt_config):
    import onnx

    m = onnx.load(tiny_mt / "decoder.onnx", load_external_data=False)
    inputs = [i.name for i in m.graph.input]
    outputs = [o.name for o in m.graph.output]
    n = tiny_mt_config.layers
    assert inputs[:2] == ["input_ids", "encoder_attention_mask"]
    assert sum(name.startswith("cross_") for name in inputs) == 2 * n
    assert sum(name.startswith("past_") for name in inputs) == 2 * n
    assert outputs[0] == "logits" and sum(name.startswith("present_") for name in outputs) == 2 * n
    assert m.opset_import[0].version == 17


def test_decoder_roles_and_layers(tiny_mt, tiny_mt_config):
    roles = analyze(ir.load(tiny_mt / "decoder.onnx"))
    n = tiny_mt_config.layers
    counts = roles.by_role()
    assert counts["attn_q"] == 2 * n and counts["attn_out"] == 2 * n  # self + cross attention
    assert counts["attn_k"] == n and counts["attn_v"] == n           # cross K/V come from the encoder
    assert counts["ffn_up"] == n and counts["ffn_down"] == n
    assert roles.num_layers == n
    per_layer = {}
    for lin in roles.linears:
        if lin.layer is not None and lin.role.startswith(("attn", "ffn")):
            per_layer.setdefault(lin.layer, []).append(lin.role)
    assert all(sorted(r) == sorted(["attn_q", "attn_k", "attn_v", "attn_out", "attn_q", "attn_out", "ffn_up", "ffn_down"])
               for r in per_layer.values())


def test_encoder_holds_the_cross_projections(tiny_mt, tiny_mt_config):
    roles = analyze(ir.load(tiny_mt / "encoder.onnx"))
    assert roles.num_layers == tiny_mt_config.layers
    assert roles.by_role()["linear"] == 2 * tiny_mt_config.layers  # cross key/value projections, one pair per decoder layer
