"""Shared fixtures: small models built in seconds, and the cached real MiniLM."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    from models.tiny_bert import build_tiny_bert

    d = tmp_path_factory.mktemp("tiny_bert")
    for variant in ("post_ln", "pre_ln", "rms"):
        for opset in (14, 17):
            build_tiny_bert(str(d / f"{variant}_{opset}.onnx"), opset=opset, variant=variant)
    return d


@pytest.fixture()
def tiny_bert(tiny_bert_dir, tmp_path):
    """A fresh copy of the opset-17 post-LN tiny BERT in a test's own folder."""
    dst = tmp_path / "tiny_bert.onnx"
    dst.write_bytes((tiny_bert_dir / "post_ln_17.onnx").read_bytes())
    return dst


def make_linear_model(path, k=8, n=4, opset=17, seed=0, bias=True):
    """x [B, K] -> MatMul(W) (+ b) -> y: the smallest model with a weight."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y0" if bias else "y"], name="proj")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["y0", "b"], ["y"], name="proj_bias"))
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", 1, ["B", k])],
                              [helper.make_tensor_value_info("y", 1, ["B", n])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path
