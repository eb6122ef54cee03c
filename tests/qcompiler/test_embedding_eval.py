"""Embedding helpers, on the tiny model."""

import numpy as np
import onnxruntime as ort

from qcompiler.embedding_eval import cosine_vs_reference, embed_with_session, latency_batch1, mean_pooled
from models.tiny_bert import build_tiny_bert, example_inputs


def test_mean_pooled_ignores_padding():
    h = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 1], [1, 0, 0]])
    np.testing.assert_allclose(mean_pooled(h, mask), [[2, 3], [6, 7]])


def test_cosine():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    mean, mn = cosine_vs_reference(a, np.array([[2.0, 0.0], [1.0, 1.0]]))
    assert abs(mn - np.sqrt(0.5)) < 1e-12 and abs(mean - (1 + np.sqrt(0.5)) / 2) < 1e-12


def test_embed_and_latency(tmp_path):
    sess = ort.InferenceSession(build_tiny_bert(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    batches = [example_inputs(2, 7, seed=1), example_inputs(3, 4, seed=2)]
    emb = embed_with_session(sess, batches)
    assert emb.shape == (5, 64)
    mean, mn = cosine_vs_reference(emb, emb)
    assert mn > 0.999999
    t = latency_batch1(sess, example_inputs(1, 8), repeats=5)
    assert 0 < t < 1
