"""--min-cosine: a compile whose verified cosine is below the gate fails with exit 3 and writes nothing."""

from __future__ import annotations

import pytest

from qcompiler.cli import main
from qcompiler.errors import QualityGateError, UsageError
from qcompiler.quality_gate import check_gate, gate_figure


def test_gate_figure_prefers_the_pooled_cosine_and_takes_the_worst_output():
    ver = {"outputs": {"a": {"cosine_mean": 0.99, "pooled_cosine_mean": 0.995},
                       "b": {"cosine_mean": 0.97}, "ids": {"rel_l2": 0.0}}}
    assert gate_figure(ver) == ("b", "cosine_mean", 0.97)
    assert gate_figure({"outputs": {"a": {"cosine_mean": 0.9, "pooled_cosine_mean": 0.95}}}) == \
        ("a", "pooled_cosine_mean", 0.95)
    assert gate_figure(None) is None
    primary = {"output": "a", "metric": "mean_pooled_cosine", "cosine_mean": 0.995}
    assert gate_figure({**ver, "primary": primary}) == ("a", "mean_pooled_cosine", 0.995)


def test_check_gate():
    ver = {"outputs": {"y": {"cosine_mean": 0.95}}}
    assert check_gate(ver, None) == ""
    assert "passed" in check_gate(ver, 0.9)
    with pytest.raises(QualityGateError):
        check_gate(ver, 0.96)
    with pytest.raises(UsageError):
        check_gate(ver, 1.5)
    with pytest.raises(UsageError):
        check_gate({"outputs": {}}, 0.5)


def test_cli_exit_3_and_nothing_written(tiny_bert, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code = main([str(tiny_bert), "--scheme", "ternary", "-o", str(out), "--min-cosine", "0.99999", "-q"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "quality gate failed" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_bert.onnx"]   # the input only: no output, no temporary
    code = main([str(tiny_bert), "--scheme", "int8", "-o", str(out), "--min-cosine", "0.5", "-q"])
    assert code == 0 and out.exists()


def test_gate_needs_verification(tiny_bert, tmp_path, capsys):
    code = main([str(tiny_bert), "-o", str(tmp_path / "o.onnx"), "--min-cosine", "0.5", "--no-verify", "-q"])
    assert code == 2 and "needs verification" in capsys.readouterr().err


def test_verification_says_when_the_library_could_not_run_it(tiny_bert, tmp_path, monkeypatch):
    import onnxruntime as ort

    import qcompiler

    result = qcompiler.compile(tiny_bert, "ternary", tmp_path / "n.onnx")
    assert result.verification["runtime"] == "native"
    monkeypatch.setattr(ort, "__version__", "1.20.1")          # register() refuses: the fallback runs
    result = qcompiler.compile(tiny_bert, "ternary", tmp_path / "f.onnx")
    assert result.verification["runtime"].startswith("fallback: onnxruntime 1.20.1 cannot load")
    assert any("ONNX function fallback" in n for n in result.notes)
