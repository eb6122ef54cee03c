"""A tiny MT model built in about 20 s (cached under ~/.cache/qcompiler/models): step-bounded
training, so its weights are the same on every machine whatever the load."""

from __future__ import annotations

import pytest

from models.mt.train import BuildConfig, build

TINY = BuildConfig(train_size=3000, test_size=60, vocab_size=300, d_model=64, heads=4, ffn=128, layers=2,
                   train_seconds=600.0, max_steps=150, batch_tokens=1500, calib_samples=32, threads=1)


@pytest.fixture(scope="session")
def tiny_mt():
    """The tiny model's directory (encoder.onnx, decoder.onnx, tokenizer.model, test.tsv, calib_*.npz)."""
    return build(TINY, log=lambda *_: None, eval_sentences=20)


@pytest.fixture(scope="session")
def tiny_mt_config():
    return TINY
