"""merge_linears: q/k/v as one op over concatenated output channels, the same outputs bit for bit."""

from __future__ import annotations

from importlib import resources

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from models.tiny_bert import example_inputs
from qcompiler import ops
from qcompiler.passes.merge_linears import MergeLinears
from qcompiler.pipeline import compile_model

SCHEMES = ["ternary", "bcq2", "kmeans4", "int4", "mixed"]
MERGEABLE = ("TernaryMatMul", "BinaryCodeMatMul", "CodebookMatMul", "MatMulNBits")


def _without_merge(scheme: str, tmp_path) -> str:
    text = (resources.files("qcompiler") / "schemes" / f"{scheme}.toml").read_text()
    assert '"merge_linears", ' in text, "the built-in scheme runs merge_linears"
    path = tmp_path / f"{scheme}_nomerge.toml"
    path.write_text(text.replace('"merge_linears", ', ""))
    return str(path)


def _run(path, feeds, library: bool):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if library:
        ops.register(so)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _ops(path) -> list[str]:
    return [n.op_type for n in ir.load(str(path)).graph.all_nodes() if n.op_type in MERGEABLE]


@pytest.fixture(scope="module")
def compiled(tiny_bert_dir, tmp_path_factory):
    """{scheme: (merged path, unmerged path, report)} of the post-LN tiny BERT (2 layers, q/k/v each)."""
    out, done = tmp_path_factory.mktemp("merge"), {}
    src = str(tiny_bert_dir / "post_ln_17.onnx")
    for scheme in SCHEMES:
        a, b = out / f"{scheme}.onnx", out / f"{scheme}.nomerge.onnx"
        rep = compile_model(src, scheme, output=a, verify=False, progress=False)
        compile_model(src, _without_merge(scheme, out), output=b, verify=False, progress=False)
        done[scheme] = (a, b, rep)
    return done


@pytest.mark.parametrize("scheme", SCHEMES)
def test_qkv_merged_and_outputs_bit_identical(compiled, scheme):
    merged, plain, rep = compiled[scheme]
    entries = rep["passes"]["merge_linears"]["merged"]
    layers = 2
    assert len(entries) == layers and all(len(e["nodes"]) == 3 for e in entries), entries
    assert len(_ops(merged)) == len(_ops(plain)) - 2 * layers
    feeds = example_inputs(batch=2, seq=12)
    for library in (True, False):   # native kernels (every output channel from the same row scale and
        # weight bytes) and the ONNX function fallback: exact, no tolerance
        a, b = _run(merged, feeds, library), _run(plain, feeds, library)
        for x, y in zip(a, b):
            assert np.array_equal(x, y), (scheme, library, float(np.abs(x - y).max()))


def _load_unmerged(compiled, scheme):
    return ir.load(str(compiled[scheme][1]))


def _merge(model):
    p = MergeLinears()
    p(model)
    return [n for n in model.graph.all_nodes() if n.op_type == "TernaryMatMul"]


def test_different_attributes_are_not_merged(compiled):
    model = _load_unmerged(compiled, "ternary")
    qkv = [n for n in model.graph.all_nodes() if n.op_type == "TernaryMatMul"][:3]
    assert len({id(n.inputs[0]) for n in qkv}) == 1
    qkv[2].attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", 0)
    nodes = _merge(model)
    widths = sorted(int(n.attributes["N"].value) for n in nodes)
    # layer 0: q + k merged, v alone (level 0); layer 1: q + k + v
    assert int(qkv[2].attributes["N"].value) in widths and len(nodes) == len(_ops(compiled["ternary"][0])) + 1


def test_different_outlier_channels_are_not_merged(compiled):
    model = _load_unmerged(compiled, "ternary")
    qkv = [n for n in model.graph.all_nodes() if n.op_type == "TernaryMatMul"][:3]
    idx = qkv[1].inputs[4]
    arr = idx.const_value.numpy().copy()
    arr[0] = (arr[0] + 1) % 32 if (arr[0] + 1) % 32 not in arr else (arr[0] + 2) % 32
    idx.const_value = ir.tensor(arr)
    nodes = _merge(model)
    assert len(nodes) == len(_ops(compiled["ternary"][0])) + 1


def test_shared_weight_is_not_merged(compiled):
    model = _load_unmerged(compiled, "ternary")
    qkv = [n for n in model.graph.all_nodes() if n.op_type == "TernaryMatMul"][:3]
    qkv[1].replace_input_with(2, qkv[0].inputs[2])     # k reads q's scales too: one initializer, two ops
    nodes = _merge(model)
    assert len(nodes) == len(_ops(compiled["ternary"][0])) + 2


def test_ops_of_a_file_fed_back_are_left_as_they_are(tiny_bert_dir, tmp_path):
    """Compiled with --exclude attn_v (q and k merged), then again: v is compiled but not merged into
    the op the first run wrote, whose packed weights stay byte for byte."""
    import onnx

    from qcompiler.cli import main

    src, first, second = tiny_bert_dir / "post_ln_17.onnx", tmp_path / "qk.onnx", tmp_path / "qkv.onnx"
    assert main([str(src), "-s", "ternary", "-o", str(first), "-q", "--no-verify", "--exclude", "attn_v"]) == 0
    assert main([str(first), "-s", "ternary", "-o", str(second), "-q", "--no-verify"]) == 0
    widths = lambda p: sorted(int(a.i) for n in onnx.load(p).graph.node if n.op_type == "TernaryMatMul"  # noqa: E731
                              for a in n.attribute if a.name == "N")
    # hidden 64: out and ffn_down 64 wide, ffn_up 256, q + k 128; the second run adds v (64) beside q + k
    assert widths(first) == [64] * 4 + [128] * 2 + [256] * 2, widths(first)
    assert widths(second) == [64] * 6 + [128] * 2 + [256] * 2, widths(second)
    old = {i.name: i.raw_data for i in onnx.load(first).graph.initializer if i.data_type == onnx.TensorProto.UINT8}
    new = {i.name: i.raw_data for i in onnx.load(second).graph.initializer}
    assert old and all(new.get(k) == v for k, v in old.items())
