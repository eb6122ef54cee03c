"""fallback_check: the native kernels and the ONNX function fallback agree on compiled tiny BERTs."""

from __future__ import annotations

import onnx
import pytest

from qcompiler import calibration, model_io
from qcompiler.fallback_check import at_accuracy_level, compare_native_fallback, main
from qcompiler.model_io import graph_protos
from qcompiler.pipeline import compile_model


@pytest.mark.parametrize("scheme", ["ternary", "bcq2", "kmeans4", "mixed"])
def test_native_equals_fallback_at_level0(tiny_bert, tmp_path, scheme):
    out = tmp_path / f"{scheme}.onnx"
    compile_model(tiny_bert, scheme, out, verify=False)
    feeds = calibration.synthesize_inputs(model_io.load_model(out), samples=4, seed=3)
    proto = onnx.load(out)
    # accuracy_level 0: both sides use fp32 activations; the AVX2 kernels differ from the function
    # body (a fixed-order fp32 reference) only by summation order and FMA: a few ulps per dot
    # product, amplified through the layers of the model: 1e-4 absolute on O(1) hidden states.
    result = compare_native_fallback(at_accuracy_level(proto, 0), feeds)
    for r in result.values():
        assert r["max_abs"] < 1e-4 and r["cos_min"] > 0.999999, r
    # accuracy_level 4 (as compiled): int8 activations in the native lookup tables; the outputs
    # still agree closely (cosine bound from the contract's level-4 tolerance, loose on purpose).
    for r in compare_native_fallback(proto, feeds).values():
        assert r["cos_min"] > 0.99, r


def test_cli(tiny_bert, tmp_path, capsys):
    out = tmp_path / "t.onnx"
    compile_model(tiny_bert, "ternary", out, verify=False)
    assert main([str(out), "--samples", "2", "--level0"]) == 0
    assert "cosine mean" in capsys.readouterr().out
    assert main([str(tiny_bert)]) == 2          # no custom op: a usage error, one line
    assert "no ai.qcompiler op" in capsys.readouterr().err


def test_accuracy_level_is_rewritten_inside_subgraphs_too():
    """A merged decoder keeps its ai.qcompiler ops inside If branches: level 0 reaches them."""
    from onnx import TensorProto, helper

    op = helper.make_node("TernaryMatMul", ["x", "w"], ["y"], domain="ai.qcompiler", accuracy_level=4)
    branch = lambda name: helper.make_graph(  # noqa: E731
        [op], name, [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    cond = helper.make_node("If", ["c"], ["y"], then_branch=branch("then"), else_branch=branch("else"))
    graph = helper.make_graph([cond], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    proto = at_accuracy_level(helper.make_model(graph), 0)
    levels = [a.i for g in graph_protos(proto.graph) for node in g.node for a in node.attribute
              if a.name == "accuracy_level"]
    assert levels == [0, 0]
