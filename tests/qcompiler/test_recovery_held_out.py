"""The tiny model compiled with calibrated recovery on given samples: a held-out split of them checks
recovery, the report (.json and .md) carries the figures, and on that split no shipped weight is
worse than plain rounding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcompiler.pipeline import compile_model


def _calib(path, n=48, seq=20, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 1000, (n, seq))
    ids[:, 0], ids[:, -1] = 1, 2
    np.savez(path, input_ids=ids, attention_mask=np.ones((n, seq), np.int64))
    return path


@pytest.mark.parametrize("scheme", ["ternary", "int4"])
def test_held_out_split_reported_and_never_worse_than_plain(tiny_bert, tmp_path, scheme):
    calib = _calib(tmp_path / "calib.npz")
    rep_path = tmp_path / "report.json"
    compile_model(tiny_bert, scheme=scheme, output=tmp_path / "out.onnx", calib=calib, report_path=rep_path,
                  verify=False, calib_augment=1)
    rep = json.loads(rep_path.read_text())
    held = rep["recovery_held_out"]
    assert held["linears"] == 12                                    # 2 layers x 6 linears
    for key in ("fit_output_rel_error", "held_output_rel_error", "plain_held_output_rel_error", "carry_over"):
        assert isinstance(held[key], float) and held[key] > 0
    assert "held-out split" in rep["calibration"] and "unlabeled variants" in rep["calibration"]
    assert "recovery on held-out samples" in (tmp_path / "report.md").read_text()
    linears = next(d["linears"] for d in rep["passes"].values() if isinstance(d, dict) and "linears" in d)
    for e in linears:
        h = e["held_out"]
        if e["method"] == "gptq":
            assert h["held_output_rel_error"] <= h["plain_held_output_rel_error"]
        else:
            assert e["method"].startswith("plain (recovery worse") and h["worse_than_plain"]


def test_no_split_when_asked_or_too_few(tiny_bert, tmp_path):
    calib = _calib(tmp_path / "calib.npz")
    rep = compile_model(tiny_bert, scheme="ternary", output=tmp_path / "a.onnx", calib=calib, verify=False,
                        recovery_holdout=0)
    assert rep["recovery_held_out"] is None and "held-out split" not in rep["calibration"]
    few = _calib(tmp_path / "few.npz", n=8)
    rep = compile_model(tiny_bert, scheme="ternary", output=tmp_path / "b.onnx", calib=few, verify=False)
    assert rep["recovery_held_out"] is None
