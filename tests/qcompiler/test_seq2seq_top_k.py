"""Beam search's candidate selection equals the full stable sort it replaced (ties in index order,
-inf entries as at the forced-EOS step), exactly: integer-valued scores make ties common."""

import numpy as np

from qcompiler.seq2seq import _beam_candidates, _top_k_stable


def test_top_k_equals_stable_argsort_with_ties_and_inf():
    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(1, 300))
        x = rng.integers(-4, 4, n).astype(np.float32)
        if trial % 3 == 0:
            x[rng.random(n) < 0.6] = -np.inf
        if trial % 7 == 0:
            x[:] = -np.inf
            x[int(rng.integers(n))] = 0.0
        k = int(rng.integers(1, 12))
        np.testing.assert_array_equal(_top_k_stable(x, k), np.argsort(-x, kind="stable")[:k])


def _full_candidates(logits, beam_scores, k, pad):
    """The reference: the whole score matrix as beam search built it before, then the stable top-k."""
    m = logits.max(1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    if pad >= 0:
        logp[:, pad] = -np.inf
    scores = (beam_scores[:, None] + logp).ravel()
    flat = np.argsort(-scores, kind="stable")[:k]
    return flat, scores[flat]


def test_beam_candidates_equal_the_full_score_matrix(monkeypatch):
    """Exact equality (indices and float64 scores) with the full matrix, over peaked and flat rows,
    quantized logits (ties), the pad column and margins small enough to force the fallback."""
    from qcompiler import seq2seq

    sizes = []
    monkeypatch.setattr(seq2seq, "_top_k_stable", lambda x, k: sizes.append(x.size) or _top_k_stable(x, k))
    rng = np.random.default_rng(1)
    paths = {"scored candidates": 0, "full matrix": 0}
    for trial in range(1500):
        b, v, k = int(rng.integers(1, 6)), int(rng.integers(3, 400)), int(rng.integers(1, 10))
        logits = (rng.standard_normal((b, v)) * rng.choice([0.1, 1.0, 5.0])).astype(np.float32)
        if trial % 2:
            logits = np.round(logits * 2) / 2  # many exact ties
        logits[:, int(rng.integers(v))] += float(rng.choice([0.0, 10.0]))
        beam_scores = np.sort(-rng.random(b) * rng.choice([0.01, 3.0]))[::-1]
        pad = int(rng.integers(-1, v))
        margins = [(0.0,), (0.5,), (0.0, 0.5), (3.0, 8.0, 20.0)][trial % 4]
        flat, scores = seq2seq._beam_candidates(logits, beam_scores, k, pad, margins=margins)
        ref_flat, ref_scores = _full_candidates(logits, beam_scores, k, pad)
        np.testing.assert_array_equal(flat, ref_flat)
        np.testing.assert_array_equal(scores, ref_scores)
        paths["full matrix" if sizes[-1] == b * v else "scored candidates"] += 1
    assert min(paths.values()) > 200, paths  # both paths ran


def test_greedy_token_bans_the_pad_as_a_full_ban_would():
    """The pad is banned by re-taking the argmax only when it won: the same token as banning first,
    ties included (integer logits)."""
    import types

    from qcompiler.seq2seq import Seq2SeqTranslator

    rng = np.random.default_rng(2)
    for _ in range(3000):
        v = int(rng.integers(2, 30))
        logits = rng.integers(-3, 3, (1, v)).astype(np.float32)
        pad = int(rng.integers(-1, v))
        banned = logits[0].copy()
        if pad >= 0:
            banned[pad] = -np.inf
        me = types.SimpleNamespace(pad=pad, eos=0)
        assert Seq2SeqTranslator._greedy_token(me, logits, False) == int(banned.argmax())
