"""`--recover distill` on graphs exported by the installed exporters (random tiny models of
models/hf_exports.py), and its refusal, before calibration, of a graph it cannot train through."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from models.compat import feeds_for
from models.hf_exports import export
from qcompiler import calibration
from qcompiler.cli import main


def _distill(path, scheme: str, steps: int, tmp_path) -> dict:
    """Compile `path` with --recover distill on 24 synthesized samples; the recover pass's report."""
    feeds = feeds_for(path, n=24, seed=3)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
    report = tmp_path / "r.json"
    code = main([str(path), "--scheme", scheme, "--calib", str(calib), "--recover", "distill",
                 "--recover-steps", str(steps), "-o", str(tmp_path / "o.onnx"), "--report", str(report), "-q"])
    assert code == 0
    return json.loads(report.read_text())["passes"]["recover"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])     # DeBERTa-v2: If and GatherElements on the way
def test_distill_runs_on_optimum_export(arch, tmp_path):
    path = export(arch) / "model.onnx"
    rec = _distill(path, "ternary", 6, tmp_path)
    assert rec["steps"] == 6 and rec["trained_weights"] >= 8 and rec["chosen"] in ("distill", "calibrated")
    assert rec["loss_first"] > 0


def test_unsupported_op_is_refused_before_calibration(tiny_bert, tmp_path, capsys, monkeypatch):
    model = onnx.load(str(tiny_bert))
    out = model.graph.output[0]
    for node in model.graph.node:
        node.output[:] = [f"{o}_pre" if o == out.name else o for o in node.output]
    model.graph.node.append(helper.make_node("Selu", [f"{out.name}_pre"], [out.name], name="odd_selu"))
    src = tmp_path / "selu.onnx"
    onnx.save(model, str(src))

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran")

    monkeypatch.setattr(calibration, "collect_stats", no_calibration)
    code = main([str(src), "--scheme", "ternary", "--recover", "distill", "-o", str(tmp_path / "o.onnx"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "op Selu (node odd_selu)" in err and "--recover calibrated" in err
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.slow
def test_distill_runs_on_dynamo_export(tmp_path):
    from models.op_census import _Wrapper, _export, _inputs, _source_model

    model = _source_model("bert")
    kind, args, names = _inputs("bert", model)
    path = tmp_path / "bert_dynamo.onnx"
    _export(_Wrapper.make(model, kind), args, names, path, "dynamo")
    assert {"Gelu", "LayerNormalization"} <= {n.op_type for n in onnx.load(str(path)).graph.node}
    rec = _distill(path, "bcq2", 4, tmp_path)
    assert rec["steps"] == 4 and rec["trained_weights"] >= 8


@pytest.mark.slow
def test_distill_runs_on_static_shape_dynamo_export(tmp_path):
    path = export("bert", "dynamo-static") / "model.onnx"           # inputs fixed at [2, 12]
    rec = _distill(path, "ternary", 4, tmp_path)
    assert rec["steps"] == 4 and "batches of 2 rows" in rec["static_shapes"]
