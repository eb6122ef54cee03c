"""Opset and IR of compiled models: the input's opset is kept where the scheme's ops allow it (int8
and MatMulNBits int4 at 17; decomposed norms to 18 for the fusion patterns; the ai.qcompiler
function bodies and portable int4 at 21), the IR version is what the opsets need, and every output
passes onnx.checker full_check, onnxruntime's symbolic_shape_infer and its mobile-usability checker."""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompiler.passes.canonicalize import required_opset
from qcompiler.pipeline import compile_model
from qcompiler.schemes import load_scheme

# (tiny BERT export, scheme, target) -> default-domain opset of the output
CASES = [
    ("post_ln_17", "int8", "ort", 17),
    ("post_ln_17", "int4", "ort", 17),
    ("post_ln_17", "int4", "portable", 21),
    ("post_ln_17", "ternary", "ort", 21),
    ("post_ln_14", "int8", "ort", 18),      # LayerNorm decomposed at 14: fused on the opset-18 patterns
    ("post_ln_14", "int4", "ort", 18),
]


def _check_tools(path: pathlib.Path) -> None:
    from onnxruntime.tools.mobile_helpers import usability_checker
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    onnx.checker.check_model(str(path), full_check=True)
    inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=True, guess_output_rank=True)
    assert inferred is not None
    logger = logging.getLogger("mobile-usability")
    usability_checker.analyze_model(path, skip_optimize=False, logger=logger)   # raises on a model it cannot read


@pytest.mark.parametrize("export, scheme, target, opset", CASES, ids=[f"{e}-{s}-{t}" for e, s, t, _ in CASES])
def test_output_keeps_the_opset_the_scheme_allows(tiny_bert_dir, tmp_path, export, scheme, target, opset):
    from models.tiny_bert import example_inputs

    src = tiny_bert_dir / f"{export}.onnx"
    out = tmp_path / f"{export}.{scheme}.onnx"
    rep = compile_model(src, scheme=scheme, output=out, target=target, verify=False)
    model = onnx.load(str(out))
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[""] == opset, (opsets, rep["passes"]["canonicalize"]["opset"])
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    assert model.ir_version == max(needed, onnx.load(str(src)).ir_version), (model.ir_version, needed)
    for fn in model.functions:   # function bodies import the model's default-domain opset
        assert {o.domain: o.version for o in fn.opset_import}.get("", opset) == opset, fn.name
    _check_tools(out)
    # It runs, and close to FP32 (tiny random BERT: int8 ~1%, 4-bit/ternary 5-30% relative L2; 0.5
    # catches a broken graph, not accuracy).
    feeds = example_inputs()
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    so = ort.SessionOptions()
    if "ai.qcompiler" in opsets:
        from qcompiler import ops

        ops.register(so)
    got = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.5


def test_required_opset_per_scheme(tiny_bert_dir):
    import onnx_ir as ir

    decomposed = ir.load(tiny_bert_dir / "post_ln_14.onnx")
    fused = ir.load(tiny_bert_dir / "post_ln_17.onnx")
    assert required_opset(fused, load_scheme("int8"))[0] == 13
    assert required_opset(fused, load_scheme("int4"))[0] == 11          # int4 rows' BitShift
    assert required_opset(fused, load_scheme("int4"), "portable")[0] == 21
    assert required_opset(fused, load_scheme("kmeans4"))[0] == 21
    level, why = required_opset(decomposed, load_scheme("int8"))
    assert level == 18 and why.startswith("fold_layernorm")
    assert required_opset(fused, None) == (1, "")
