"""`qcompile bench --schemes NAME@TARGET`: a scheme compiled for another target is its own variant
beside the default one (int4 as MatMulNBits and as the library's Int4MatMul in one run)."""

from __future__ import annotations

import json

import onnx
import pytest

from qcompiler.bench import scheme_and_target
from qcompiler.cli import main
from qcompiler.errors import UsageError


def test_scheme_and_target_spelling():
    assert scheme_and_target("int4") == ("int4", "ort", "int4")
    assert scheme_and_target("int4@qcompiler") == ("int4", "qcompiler", "int4@qcompiler")
    assert scheme_and_target("my/schemes/fast.toml@portable") == ("my/schemes/fast.toml", "portable", "fast@portable")
    for bad in ("int4@gpu", "@qcompiler", "int4@"):
        with pytest.raises(UsageError, match="target after @"):
            scheme_and_target(bad)


def _ops(path) -> set:
    return {(n.domain, n.op_type) for n in onnx.load(str(path)).graph.node}


def test_bench_compiles_a_scheme_for_two_targets(tiny_bert, tmp_path):
    out = tmp_path / "out"
    assert main(["bench", str(tiny_bert), "--schemes", "int4,int4@qcompiler", "--no-baselines", "--repeats", "2",
                 "--out", str(out)]) == 0
    result = json.loads((out / "tiny_bert.bench.json").read_text())
    rows = {v["name"]: v for v in result["variants"]}
    assert list(rows) == ["fp32", "qcompiler int4", "qcompiler int4@qcompiler"]
    assert all(not v["error"] for v in rows.values()), rows
    assert ("com.microsoft", "MatMulNBits") in _ops(rows["qcompiler int4"]["path"])
    native = _ops(rows["qcompiler int4@qcompiler"]["path"])
    assert ("ai.qcompiler", "Int4MatMul") in native and ("com.microsoft", "MatMulNBits") not in native


def test_bench_unknown_target_is_one_line_exit_2(tiny_bert, tmp_path, capsys):
    assert main(["bench", str(tiny_bert), "--schemes", "int4@gpu", "--no-baselines", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "int4@gpu" in err, err
