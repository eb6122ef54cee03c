"""--list-schemes figures come from a bench run (record_bench), never typed by hand."""

from __future__ import annotations

import json

from qcompiler.scheme_table import record_bench, scheme_table


def _result():
    row = lambda name, kind, size, cos, lat, err="": {"name": name, "kind": kind, "size": size, "error": err,
                                                      "metrics": {"cosine_mean": cos}, "latency_ms": lat}
    return {"model": "m.onnx", "samples": 16, "variants": [
        row("fp32", "fp32", 400, 1.0, 10.0), row("ort quantize_dynamic int8", "onnxruntime", 100, 0.99, 5.0),
        row("qcompiler int8", "qcompiler", 101, 0.995, 4.0), row("qcompiler int4", "qcompiler", 60, 0.99, 8.0),
        row("qcompiler ternary", "qcompiler", 0, 0.0, None, err="boom")]}


def test_record_then_list(tmp_path):
    path = record_bench(_result(), tmp_path / "measured.json", model_name="tiny", command="test")
    data = json.loads(path.read_text())
    assert set(data["schemes"]) == {"int8", "int4"}              # a failed row is not recorded
    assert data["schemes"]["int8"]["bits_per_weight"] == round(32 * 101 / 400, 2)
    assert data["schemes"]["int8"]["speed_vs_ort_int8"] == 1.25 and data["schemes"]["int4"]["speed_vs_fp32"] == 1.25
    text = scheme_table(path)
    int8 = next(line for line in text.splitlines() if line.startswith("int8 "))
    assert "8.08" in int8 and "0.9950" in int8 and "1.25x" in int8
    assert "measured on tiny" in text and data["machine"] in text


def test_without_figures_it_says_how_to_get_them(tmp_path):
    assert "make demo" in scheme_table(tmp_path / "none.json")
