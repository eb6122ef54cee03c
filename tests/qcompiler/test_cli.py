"""The CLI's contract with users: one line and exit 2 on bad input, input never changed,
no partial output; --list-schemes; the default output name."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcompiler.cli import main

SCHEME_COPY = 'name = "copy"\nsummary = "cleanup only"\npasses = ["cleanup"]\n'


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("qcompile: error:"), err
    assert "Traceback" not in err


def test_missing_file(tmp_path, capsys):
    code, _, err = _run([str(tmp_path / "nope.onnx")], capsys)
    assert code == 2
    _one_line_error(err)
    assert "not found" in err


@pytest.mark.parametrize("content", [b"this is not onnx", b"\x08\x07\x12\x04"])
def test_not_onnx(tmp_path, capsys, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    code, _, err = _run([str(bad), "-q"], capsys)
    assert code == 2
    _one_line_error(err)
    assert list(tmp_path.iterdir()) == [bad]


def test_truncated_file(tiny_bert, tmp_path, capsys):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny_bert.read_bytes()[: tiny_bert.stat().st_size // 2])
    code, _, err = _run([str(truncated), "-q"], capsys)
    assert code == 2
    _one_line_error(err)
    assert not (tmp_path / "truncated.int8.onnx").exists()


def test_unknown_scheme(tiny_bert, capsys):
    before = _digest(tiny_bert)
    code, _, err = _run([str(tiny_bert), "--scheme", "int7"], capsys)
    assert code == 2
    _one_line_error(err)
    assert "unknown scheme" in err
    assert _digest(tiny_bert) == before


def test_output_equal_to_input(tiny_bert, capsys):
    before = _digest(tiny_bert)
    code, _, err = _run([str(tiny_bert), "-o", str(tiny_bert), "-q"], capsys)
    assert code == 2
    _one_line_error(err)
    assert _digest(tiny_bert) == before


def test_unwritable_output_dir(tiny_bert, tmp_path, capsys):
    code, _, err = _run([str(tiny_bert), "-o", str(tmp_path / "no" / "such" / "dir" / "m.onnx"), "-q"], capsys)
    assert code == 2
    _one_line_error(err)


def test_output_parent_is_a_file(tiny_bert, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = _run([str(tiny_bert), "-o", str(blocker / "m.onnx"), "-q"], capsys)
    assert code == 2
    _one_line_error(err)


def _copy_scheme(tmp_path):
    scheme = tmp_path / "copy.toml"
    scheme.write_text(SCHEME_COPY)
    return str(scheme)


def test_calibration_mismatch(tiny_bert, tmp_path, capsys):
    calib = tmp_path / "calib.npz"
    np.savez(calib, wrong_name=np.zeros((2, 4), np.int64))
    code, _, err = _run([str(tiny_bert), "--calib", str(calib), "-q", "--scheme", _copy_scheme(tmp_path)], capsys)
    assert code == 2
    _one_line_error(err)
    assert "calibration" in err
    assert not (tmp_path / "tiny_bert.copy.onnx").exists()


def test_calibration_wrong_dtype_and_empty(tiny_bert, tmp_path, capsys):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=np.zeros((2, 4), np.float32), attention_mask=np.ones((2, 4), np.int64))
    scheme = _copy_scheme(tmp_path)
    code, _, err = _run([str(tiny_bert), "--calib", str(calib), "-q", "--scheme", scheme], capsys)
    assert code == 2 and "dtype" in err
    np.savez(calib, input_ids=np.zeros((0, 4), np.int64), attention_mask=np.ones((0, 4), np.int64))
    code, _, err = _run([str(tiny_bert), "--calib", str(calib), "-q", "--scheme", scheme], capsys)
    assert code == 2
    _one_line_error(err)


def test_unknown_option_is_one_line(tiny_bert, capsys):
    code, _, err = _run([str(tiny_bert), "--bogus"], capsys)
    assert code == 2
    _one_line_error(err)


def test_model_without_matmul_compiles_to_a_copy(tmp_path, capsys):
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", 1, [2])], [helper.make_tensor_value_info("y", 1, [2])])
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    scheme = tmp_path / "copy.toml"
    scheme.write_text(SCHEME_COPY)
    out = tmp_path / "relu.out.onnx"
    code, stdout, err = _run([str(src), "--scheme", str(scheme), "-o", str(out)], capsys)
    assert code == 0, err
    assert "compiled to a copy" in err
    assert onnx.load(str(out)).graph.node[0].op_type == "Relu"


def test_default_output_name_and_report(tiny_bert, tmp_path, capsys):
    scheme = tmp_path / "copy.toml"
    scheme.write_text(SCHEME_COPY)
    report = tmp_path / "r.json"
    code, stdout, err = _run([str(tiny_bert), "--scheme", str(scheme), "--report", str(report), "-q"], capsys)
    assert code == 0, err
    assert stdout.strip().endswith("tiny_bert.copy.onnx")
    assert (tmp_path / "tiny_bert.copy.onnx").exists()
    assert report.exists() and report.with_suffix(".md").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".qcompile-tmp-")]
    assert leftovers == []


def test_list_schemes_a_row_each_with_where_it_runs():
    out = subprocess.run([sys.executable, "-m", "qcompiler", "--list-schemes"], capture_output=True, text=True,
                         check=True).stdout
    from qcompiler.schemes import builtin_scheme_names, load_scheme

    rows = [line for line in out.splitlines() if line[:1].strip() and line.split()[0] in builtin_scheme_names()]
    assert [r.split()[0] for r in rows] == builtin_scheme_names()
    for row in rows:
        assert load_scheme(row.split()[0]).runs in row   # every built-in scheme says where it runs
    assert "bits/w" in out.splitlines()[0]


def test_list_passes_names_every_pass_in_order():
    from qcompiler.passes import PASS_TABLE

    out = subprocess.run([sys.executable, "-m", "qcompiler", "--list-passes"], capture_output=True, text=True,
                         check=True).stdout
    assert [line.split()[0] for line in out.splitlines()] == list(PASS_TABLE)


def test_memory_budget_streams_or_refuses_bad_sizes(tiny_bert, tmp_path, capsys):
    import json

    out, report = tmp_path / "s.onnx", tmp_path / "s.json"
    code, _, err = _run([str(tiny_bert), "--scheme", "int8", "-o", str(out), "--report", str(report),
                         "--memory-budget", "0", "-q"], capsys)
    assert code == 0, err
    assert any("streaming compile" in n for n in json.loads(report.read_text())["notes"])
    for bad in ("2X", "-1G", "lots"):
        code, _, err = _run([str(tiny_bert), "-o", str(tmp_path / "b.onnx"), "--memory-budget", bad], capsys)
        assert code == 2
        _one_line_error(err)
        assert "--memory-budget" in err
