"""Calibration in pieces gives the statistics of calibration in one session (streaming compiles)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from models.large_synthetic import write_chain
from qcompiler import calibration


def _chain(tmp_path, layers=5, dim=64):
    m = ir.load(write_chain(tmp_path / "c.onnx", layers=layers, dim=dim))
    rng = np.random.default_rng(0)
    feeds = [{"h0": rng.standard_normal((1, dim)).astype(np.float32)} for _ in range(20)]
    return m, feeds, [f"h{i}" for i in range(layers)]


def test_pieces_hold_at_most_the_budget_or_one_node(tmp_path):
    m, _, taps = _chain(tmp_path)
    w, g = 64 * 64 * 4, 8 * 64 * 64                     # one weight, one Gram
    assert [p.nodes for p in calibration.plan_pieces(m, w + g, set(taps))] == [[0], [1], [2], [3], [4]]
    assert [p.nodes for p in calibration.plan_pieces(m, 2 * (w + g), set(taps))] == [[0, 1], [2, 3], [4]]
    assert [p.nodes for p in calibration.plan_pieces(m, 1, set())] == [[0], [1], [2], [3], [4]]
    assert [p.nodes for p in calibration.plan_pieces(m, 10**9, set(taps))] == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("piece_bytes", [1, 10**9])
def test_pieces_give_the_stats_of_one_session(tmp_path, piece_bytes):
    m, feeds, taps = _chain(tmp_path)
    whole = calibration.collect_stats(m, feeds, taps, gram_for=set(taps))
    pieces, info = calibration.collect_stats_in_pieces(m, feeds, taps, piece_bytes, tmp_path / "g", gram_for=set(taps))
    assert info["pieces"] == (5 if piece_bytes == 1 else 1)
    assert sorted(pieces) == sorted(whole)
    for t in taps:
        a, b = whole[t], pieces[t]
        assert isinstance(b.gram, np.memmap) and a.rows_seen == b.rows_seen == 20
        # onnxruntime's MatMul with and without prepacked weights (one session vs pieces) sums in
        # another order: float32 rounding, relative 1e-5
        np.testing.assert_allclose(b.channel_absmax, a.channel_absmax, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.gram, a.gram, rtol=1e-5, atol=1e-5 * np.abs(a.gram).max())
        np.testing.assert_allclose(b.samples, a.samples, rtol=1e-5, atol=1e-6)


def test_control_flow_is_not_cut(tmp_path):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reliability"))
    import fuzz_models as fm

    onnx.save(fm.if_model(), str(tmp_path / "if.onnx"))
    with pytest.raises(calibration.PiecesUnsupported, match="subgraphs"):
        calibration.plan_pieces(ir.load(tmp_path / "if.onnx"), 10**9)
