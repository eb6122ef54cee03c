"""The real all-MiniLM-L6-v2 exported to ONNX (cached export; first export about 6 s)."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.slow

SENTENCES = [
    "The cat sat on the mat.",
    "Quantization makes neural networks smaller while keeping most of their accuracy.",
    "Where is the nearest train station, please?",
    "hello",
    "After the storm, the whole street was covered in leaves and broken branches, "
    "and the children spent the afternoon collecting them into large piles by the fence.",
]


@pytest.fixture(scope="module")
def minilm_path():
    from models.minilm import minilm_onnx

    return minilm_onnx()


def test_graph_interface(minilm_path):
    model = onnx.load(minilm_path, load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    for i in model.graph.input:
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "seq"]
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["LayerNormalization"] == 13 and ops["MatMul"] == 48 and ops["Erf"] == 6
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)


def test_cache_is_reused(minilm_path):
    import os

    from models.minilm import minilm_onnx

    before = os.stat(minilm_path).st_mtime_ns
    assert minilm_onnx() == minilm_path
    assert os.stat(minilm_path).st_mtime_ns == before


def test_encode():
    from models.minilm import encode

    feeds = encode(["a b c", "a much longer sentence than the first one"], max_len=8)
    assert set(feeds) == {"input_ids", "attention_mask"}
    assert feeds["input_ids"].dtype == np.int64 and feeds["attention_mask"].dtype == np.int64
    assert feeds["input_ids"].shape == (2, 8)
    assert feeds["attention_mask"][0].sum() == 5  # [CLS] a b c [SEP]
    assert feeds["input_ids"][0, 0] == 101 and feeds["input_ids"][0, 4] == 102


def test_matches_sentence_transformers(minilm_path):
    from qcompiler.embedding_eval import cosine_vs_reference, embed_with_session
    from models.minilm import encode, reference_embeddings

    sess = ort.InferenceSession(minilm_path, providers=["CPUExecutionProvider"])
    # two batches of different size and padding
    emb = embed_with_session(sess, [encode(SENTENCES[:2]), encode(SENTENCES[2:])])
    ref = reference_embeddings(SENTENCES)
    mean, mn = cosine_vs_reference(ref, emb)
    assert mn > 0.9999, (mean, mn)
