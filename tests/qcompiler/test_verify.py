"""Verification inputs: a held-out part of the user's data when given, synthesized (and said so) otherwise."""

from __future__ import annotations

import json

import numpy as np

from qcompiler.pipeline import compile_model
from qcompiler.verify import split_held_out


def _calib(path, n, seq=10, pad_from=None):
    rng = np.random.default_rng(3)
    mask = np.ones((n, seq), np.int64)
    if pad_from is not None:
        mask[::2, pad_from:] = 0          # every other sample padded at the end
    np.savez(path, input_ids=rng.integers(1, 90, (n, seq)), attention_mask=mask)
    return path


def test_split_held_out():
    feeds = [{"i": np.array([k])} for k in range(40)]
    cal, ver, text, held = split_held_out(feeds, 8)
    assert len(cal) == 32 and [f["i"][0] for f in ver] == list(range(32, 40)) and held and "held-out" in text
    cal, ver, _, held = split_held_out(feeds[:10], 8)     # 10 < 16: the last quarter, still the user's
    assert len(cal) == 8 and len(ver) == 2 and held
    cal, ver, text, held = split_held_out(feeds[:1], 8)
    assert cal == ver and not held and "not held out" in text


def test_few_samples_verify_on_held_out_user_data(tiny_bert, tmp_path):
    calib = _calib(tmp_path / "c.npz", 10, pad_from=6)
    rep = compile_model(tiny_bert, scheme="int8", output=tmp_path / "o.onnx", calib=calib,
                        report_path=tmp_path / "r.json")
    ver = rep["verification"]
    assert ver["synthesized"] is False and ver["samples"] == 2 and "held-out" in ver["inputs"]
    assert "8 samples; 2 more held out" in rep["calibration"]
    out = ver["outputs"]["last_hidden_state"]
    # The masked mean-pooled cosine beside the per-token one, and the headline a gate reads.
    assert 0.9 < out["pooled_cosine_mean"] <= 1.0 and 0.9 < out["cosine_mean"] <= 1.0
    assert ver["primary"] == {"output": "last_hidden_state", "metric": "mean_pooled_cosine",
                              "cosine_mean": out["pooled_cosine_mean"], "cosine_min": out["pooled_cosine_min"],
                              "rel_l2": out["rel_l2"]}
    assert "Warning" not in (tmp_path / "r.md").read_text()


def test_synthesized_verification_says_so_everywhere(tiny_bert, tmp_path, capsys):
    from rich.console import Console

    from qcompiler.report import print_summary

    rep = compile_model(tiny_bert, scheme="int8", output=tmp_path / "o.onnx", report_path=tmp_path / "r.json")
    assert rep["verification"]["synthesized"] is True
    assert json.loads((tmp_path / "r.json").read_text())["verification"]["synthesized"] is True
    assert any(n.startswith("verified on synthesized inputs") for n in rep["notes"])
    assert "**Warning: verified on synthesized inputs, not on your data.**" in (tmp_path / "r.md").read_text()
    console = Console(file=open(tmp_path / "summary.txt", "w"), width=200)
    print_summary(rep, console)
    console.file.close()
    assert "verified on SYNTHESIZED inputs, not on your data" in (tmp_path / "summary.txt").read_text()
