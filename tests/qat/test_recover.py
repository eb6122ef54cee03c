"""`--recover distill` end to end on the tiny BERT: 0 steps is calibrated recovery, the compiled
model computes what the trained fake-quant student computed, the report says which model was kept."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import qcompiler
from models.tiny_bert import example_inputs
from qcompiler import calibration, model_io
from qcompiler.analyze import analyze
from qcompiler.cli import main
from qcompiler.context import CompileContext, CompileOptions
from qcompiler.pipeline import build_passes
from qcompiler.plan import make_plan
from qcompiler.qat.distill import DistillConfig, distill, stack_feeds
from qcompiler.qat.recover import build_student, write_back
from qcompiler.schemes import load_scheme

@pytest.fixture()
def calib(tmp_path):
    path = tmp_path / "calib.npz"
    feeds = example_inputs(batch=48, seq=12, seed=3)
    feeds["attention_mask"][::3, 9:] = 0
    np.savez(path, **feeds)
    return path


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_zero_steps_equals_calibrated_recovery(tiny_bert, calib, tmp_path):
    a = qcompiler.compile(tiny_bert, scheme="ternary", output=tmp_path / "a.onnx", calib=calib, verify=False)
    b = qcompiler.compile(tiny_bert, scheme="ternary", output=tmp_path / "b.onnx", calib=calib, verify=False,
                          recover="distill", recover_steps=0)
    assert "recover" not in a.report["passes"]
    assert b.report["passes"]["recover"]["chosen"] == "calibrated"
    ia, ib = _initializers(tmp_path / "a.onnx"), _initializers(tmp_path / "b.onnx")
    assert ia.keys() == ib.keys()
    for name in ia:
        assert np.array_equal(ia[name], ib[name]), name


@pytest.mark.parametrize("fmt, pass_name, extra", [
    ("ternary", "replace_matmul", "accuracy_level = 0"),
    ("bcq", "replace_matmul", "bits = 2\ngroup_size = 32\naccuracy_level = 0"),
    ("int4", "quantize_int4", "block_size = 32\nsymmetric = false\n[options.quantize_int4]\naccuracy_level = 0"),
], ids=["ternary", "bcq2", "int4"])
def test_compiled_model_is_the_trained_student(tiny_bert, calib, tmp_path, fmt, pass_name, extra, exact_scheme):
    torch.manual_seed(0)
    scheme_path = tmp_path / "scheme.toml"
    scheme_path.write_text(exact_scheme(fmt, pass_name, extra))
    scheme = load_scheme(str(scheme_path))
    model = model_io.load_model(tiny_bert)
    ctx = CompileContext(model=model, scheme=scheme, options=CompileOptions(calib_path=str(calib)))
    passes = build_passes(scheme, ctx)
    for p in passes:
        if p.stage == "canonical":
            p(model)
    ctx.roles = analyze(model)
    ctx.plan = make_plan(ctx.roles, scheme, [])
    feeds = calibration.load_calibration(calib, model)
    taps = sorted({lin.node.inputs[0].name for lin in ctx.roles.linears})
    ctx.stats = calibration.collect_stats(model, feeds, taps, gram_for=set(taps))

    student, teacher, quantized, fp = build_student(ctx, model)
    before = {name: fq.effective() for name, (_, fq) in quantized.items()}
    params = [p for _, fq in quantized.values() for p in fq.parameters()] + [p.value for p in fp.values()]
    history = distill(student, teacher, stack_feeds(feeds), DistillConfig(steps=12, max_seconds=None, lr=3e-3),
                      [{"params": params, "lr": 3e-3}])
    assert history["steps"] == 12
    changed = sum(not np.array_equal(before[n], fq.effective()) for n, (_, fq) in quantized.items())
    assert changed == len(quantized)                       # training moved every quantized weight
    write_back(model, quantized, fp)
    for p in passes:
        if p.stage != "canonical":
            p(model)
    methods = {e["method"] for e in ctx.pass_reports[pass_name]["linears"]}
    assert methods == {"on-grid (lossless)"}
    out = tmp_path / "compiled.onnx"
    model_io.save_model(model, out)

    sample = example_inputs(batch=2, seq=12, seed=9)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: sample[k] for k in (i.name for i in sess.get_inputs())})[0]
    with torch.no_grad():
        want = student(**{k: torch.from_numpy(v) for k, v in sample.items() if k in student.input_names})[0].numpy()
    # Float rounding only: the same weights, biases and LayerNorm parameters, summed in another order
    # (outputs are LayerNorm-ed, magnitude ~1-4; measured max abs difference below 1e-5).
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_cli_distill_writes_the_choice_into_the_report(tiny_bert, calib, tmp_path, capsys):
    report = tmp_path / "r.json"
    code = main([str(tiny_bert), "--scheme", "bcq2", "--calib", str(calib), "--recover", "distill",
                 "--recover-steps", "4", "-o", str(tmp_path / "o.onnx"), "--report", str(report), "-q"])
    assert code == 0
    rec = json.loads(report.read_text())["passes"]["recover"]
    assert rec["chosen"] in ("distill", "calibrated") and rec["steps"] == 4
    assert {"heldout_cosine_calibrated", "heldout_cosine_distilled", "seconds", "peak_rss_mb"} <= rec.keys()
    assert "| recovery |" in report.with_suffix(".md").read_text()


@pytest.mark.parametrize("args", [["--recover", "bogus"], ["--recover-steps", "3"], ["--recover", "distill",
                                                                                       "--recover-steps", "-1"]])
def test_cli_bad_recover_options(tiny_bert, tmp_path, capsys, args):
    code = main([str(tiny_bert), "--scheme", "ternary", "-o", str(tmp_path / "o.onnx"), "-q", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_bench_compiles_with_distillation(tiny_bert, calib, tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, **example_inputs(batch=6, seq=12, seed=8))
    out = tmp_path / "bench"
    code = main(["bench", str(tiny_bert), "--schemes", "ternary", "--recover", "distill", "--recover-steps", "3",
                 "--calib", str(calib), "--data", str(data), "--no-baselines", "--repeats", "1", "--out", str(out)])
    assert code == 0
    rows = [v for v in json.loads((out / "tiny_bert.bench.json").read_text())["variants"] if v["kind"] == "qcompiler"]
    assert [v["name"] for v in rows] == ["qcompiler ternary distill"] and not rows[0]["error"]
    assert (out / "tiny_bert.ternary.distill.onnx").exists()


def test_augmented_distillation_reports_its_samples(tiny_bert, calib, tmp_path):
    from pathlib import Path

    text = (Path(qcompiler.__file__).parent / "schemes" / "ternary.toml").read_text()
    scheme = tmp_path / "ternary_aug.toml"
    scheme.write_text(text.replace('name = "ternary"', 'name = "ternary_aug"') + "\n[options.recover]\naugment = 2\n")
    rep = qcompiler.compile(tiny_bert, scheme=str(scheme), output=tmp_path / "o.onnx", calib=calib, verify=False,
                            recover="distill", recover_steps=3)
    rec = rep.report["passes"]["recover"]
    assert rec["heldout"] == "last 12 of 48 calibration samples"
    assert rec["augmented_samples"] == 2 * 36 and rec["steps"] == 3
