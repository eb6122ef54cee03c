"""Sentence-embedding helpers shared by the benchmarks and the tests (numpy + onnxruntime only).

- ``mean_pooled(last_hidden_state, attention_mask)``: mask-weighted mean over the sequence.
- ``embed_with_session(session, feeds_batches)``: run a session over batches, return the
  mean-pooled embeddings stacked [n, hidden].
- ``cosine_vs_reference(ref_emb, emb)``: (mean, min) of the row-wise cosine similarities.
- ``latency_batch1(session, feeds, repeats)``: median seconds per run on batch-1 inputs.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

import numpy as np


def mean_pooled(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean of ``last_hidden_state`` [b, s, h] over the positions where ``attention_mask`` [b, s] is 1."""
    m = np.asarray(attention_mask, dtype=np.float32)[:, :, None]
    summed = (np.asarray(last_hidden_state, dtype=np.float32) * m).sum(axis=1)
    return summed / np.maximum(m.sum(axis=1), 1e-9)


def _session_feeds(session, feeds: Mapping[str, np.ndarray]) -> dict:
    """Only the feeds the session declares as inputs (e.g. drops token_type_ids if absent)."""
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


def embed_with_session(session, feeds_batches: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Mean-pooled embeddings [n, hidden] of every batch (the session's first output is last_hidden_state)."""
    out = []
    for feeds in feeds_batches:
        hidden = session.run(None, _session_feeds(session, feeds))[0]
        out.append(mean_pooled(hidden, feeds["attention_mask"]))
    return np.concatenate(out, axis=0)


def cosine_vs_reference(ref_emb: np.ndarray, emb: np.ndarray) -> tuple[float, float]:
    """(mean, min) cosine similarity between matching rows of ``ref_emb`` and ``emb``."""
    a = np.asarray(ref_emb, dtype=np.float64)
    b = np.asarray(emb, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: reference {a.shape} vs {b.shape}")
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(cos.mean()), float(cos.min())


def latency_batch1(session, feeds, repeats: int = 50, warmup: int = 3) -> float:
    """Median wall time in seconds of ``session.run`` on batch-1 inputs.

    ``feeds`` is one dict of batch-1 arrays, or a list of them (cycled, e.g. one per sentence).
    """
    items = [feeds] if isinstance(feeds, Mapping) else list(feeds)
    items = [_session_feeds(session, f) for f in items]
    for i in range(warmup):
        session.run(None, items[i % len(items)])
    times = []
    for i in range(repeats):
        f = items[i % len(items)]
        t0 = time.perf_counter()
        session.run(None, f)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
