"""`qcompile bench --task mt` on the tiny MT model: both files compiled per scheme, every figure of
the table in the JSON, the plot written, bad input in one line with exit 2, a failing scheme one row."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qcompiler.cli import main


def test_bench_mt_compiles_both_files_and_reports_every_variant(tiny_mt, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["bench", str(tiny_mt / "encoder.onnx"), "--task", "mt", "--schemes", "int8,ternary,no-such-scheme",
                 "--sentences", "8", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "mt.bench.json").read_text())
    rows = {v["name"]: v for v in result["variants"]}
    assert list(rows) == ["fp32", "ort quantize_dynamic int8", "ort MatMulNBits 4-bit b32", "qcompiler int8",
                          "qcompiler ternary", "qcompiler no-such-scheme"]
    assert rows["qcompiler no-such-scheme"]["error"]  # one failed row, the others ran
    for name, v in rows.items():
        if name == "qcompiler no-such-scheme":
            continue
        assert not v["error"], (name, v["error"])
        assert (out / f"decoder.{name.split()[-1]}.onnx").exists() or name == "fp32" or name.startswith("ort")
        for key in ("bleu", "chrf", "exact_match", "tokens_per_s"):
            assert v["metrics"][key] >= 0
        assert v["size"] > 0 and v["latency_ms"] > 0 and v["tokens_per_s_vs_fp32"] > 0 and v["tokens_per_s_vs_ort_int8"] > 0
    assert rows["qcompiler int8"]["size"] < rows["fp32"]["size"]
    for name in ("qcompiler int8", "qcompiler ternary"):  # per-layer errors of both files, from verification
        layers = rows[name]["layers"]
        assert set(layers) == {"encoder", "decoder"} and all(layers[p] for p in layers)
        assert all(np.isfinite(e) and e >= 0 for part in layers.values() for e in part.values())
    assert max(e for part in rows["qcompiler int8"]["layers"].values() for e in part.values()) < 0.1  # int8: ~1e-2
    assert rows["fp32"]["tokens_per_s_vs_fp32"] == 1.0
    assert (out / "mt.bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "mt.bench.md").read_text()
    assert "qcompiler ternary" in md and "failed" in md


def _one_line_exit_2(args, capsys, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err


def test_bench_mt_without_held_out_pairs_asks_for_data(tiny_mt, tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    for name in ("encoder.onnx", "decoder.onnx", "tokenizer.model"):
        shutil.copy(tiny_mt / name, model / name)
    _one_line_exit_2(["bench", str(model), "--task", "mt", "--out", str(tmp_path / "o")], capsys, "--data")


def test_bench_mt_on_a_lone_onnx_file_says_what_it_needs(tiny_bert, tmp_path, capsys):
    _one_line_exit_2(["bench", str(tiny_bert), "--task", "mt", "--out", str(tmp_path / "o")], capsys, "decoder.onnx")


@pytest.mark.parametrize("content", ["one column only\n", ""])
def test_bench_mt_bad_data_file(tiny_mt, tmp_path, capsys, content):
    data = tmp_path / "bad.tsv"
    data.write_text(content)
    _one_line_exit_2(["bench", str(tiny_mt), "--task", "mt", "--data", str(data), "--schemes", "",
                      "--no-baselines", "--out", str(tmp_path / "o")], capsys, "held-out")


def test_bench_mt_refuses_calib_option(tiny_mt, tmp_path, capsys):
    _one_line_exit_2(["bench", str(tiny_mt), "--task", "mt", "--calib", str(tiny_mt / "calib_decoder.npz")], capsys,
                     "calib_decoder.npz")


def test_bench_embeddings_on_a_directory_is_a_usage_error(tiny_mt, capsys):
    _one_line_exit_2(["bench", str(tiny_mt)], capsys, "directory")
