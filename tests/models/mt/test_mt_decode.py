"""Decoding with the exported encoder + decoder-with-past: the cache changes nothing.

Tolerance 1e-4 absolute on logits: the same FP32 arithmetic in another order (concatenated
past vs one pass over the prefix, onnxruntime vs torch) differs by about 1e-6 here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.mt.data import read_tsv
from models.mt.decode import OnnxTranslator
from models.mt.tokenizer import BOS, EOS, Tokenizer
from models.mt.train import load_torch_model

ATOL = 1e-4


@pytest.fixture(scope="module")
def parts(tiny_mt):
    tok = Tokenizer(tiny_mt / "tokenizer.model")
    pairs = read_tsv(tiny_mt / "test.tsv")[:12]
    return OnnxTranslator(tiny_mt / "encoder.onnx", tiny_mt / "decoder.onnx", max_len=40), tok, pairs


def test_incremental_logits_equal_full_prefix_logits(parts):
    tr, tok, pairs = parts
    for en, fr in pairs[:4]:
        mask, cross = tr.encode(tok.encode(en))
        target = [BOS, *tok.encode(fr), EOS]
        past = tr.empty_past(1)
        for t in range(1, len(target)):
            step, past = tr.step(np.array([[target[t - 1]]], np.int64), mask, cross, past)
            full, _ = tr.step(np.array([target[:t]], np.int64), mask, cross, tr.empty_past(1))
            np.testing.assert_allclose(step, full, atol=ATOL, rtol=0)
        assert past[tr.past_names[0]].shape[2] == len(target) - 1


def test_greedy_with_cache_equals_greedy_redecoding(parts):
    tr, tok, pairs = parts
    outputs = [tr.greedy(tok.encode(en)) for en, _ in pairs]
    assert outputs == [tr.greedy_full(tok.encode(en)) for en, _ in pairs]
    assert any(len(o) > 2 for o in outputs)  # the trained model says something, not only EOS


def test_onnx_equals_torch_reference(parts, tiny_mt):
    tr, tok, pairs = parts
    model = load_torch_model(tiny_mt)
    en, fr = pairs[0]
    src = tok.encode(en) + [EOS]
    target = [BOS, *tok.encode(fr)]
    mask, cross = tr.encode(tok.encode(en))
    ort_logits = tr.decoder.run(["logits"], {"input_ids": np.array([target], np.int64), "encoder_attention_mask": mask,
                                             **cross, **tr.empty_past(1)})[0]
    with torch.no_grad():
        ref = model(torch.tensor([src]), torch.ones(1, len(src), dtype=torch.int64), torch.tensor([target])).numpy()
    np.testing.assert_allclose(ort_logits, ref, atol=ATOL, rtol=0)


def test_beam_of_width_one_is_greedy_and_beam_search_runs(parts):
    tr, tok, pairs = parts
    for en, _ in pairs[:4]:
        src = tok.encode(en)
        assert tr.beam(src, width=1) == tr.greedy(src)
        out = tr.beam(src, width=3)
        assert EOS not in out and BOS not in out and len(out) <= tr.max_len
