"""QAT of the MT model from its torch source: folding the norms changes nothing, the trained export's
linears all pack losslessly in both files, bad arguments exit 2."""

from __future__ import annotations

import json

import pytest
import torch

import qcompiler
from models.mt.qat import build_qat_dir, fold_norms, main, role_of
from models.mt.train import load_torch_model


def test_folding_the_norms_keeps_the_function(tiny_mt):
    model, folded = load_torch_model(tiny_mt), load_torch_model(tiny_mt)
    fold_norms(folded)
    assert torch.equal(folded.encoder[0].ln1.weight, torch.ones_like(folded.encoder[0].ln1.weight))
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 0, 0]])
    tgt = torch.tensor([[1, 11, 12], [1, 13, 0]])
    with torch.no_grad():
        a, b = model(src, (src != 0).long(), tgt), folded(src, (src != 0).long(), tgt)
    # exact in real arithmetic; float32 rounds (n * g) @ W and n @ (g * W) differently (~1e-6 here)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)


def test_roles_follow_the_compiler_names():
    assert role_of("encoder.0.attn.q", None) == "attn_q"
    assert role_of("decoder.1.cross.o", None) == "attn_out"
    assert role_of("decoder.2.ffn.down", None) == "ffn_down"


def test_trained_export_packs_losslessly(tiny_mt, tmp_path):
    out = build_qat_dir(tiny_mt, "ternary", steps=3, out=tmp_path / "qat", log=lambda *_: None,
                        batch_tokens=1500, show=False)
    meta = json.loads((out / "meta.json").read_text())["qat"]
    assert meta["training"]["steps"] == 3 and meta["modules"]["embed"] == "int4 rows"
    assert sum(fmt == "ternary" for fmt in meta["modules"].values()) == len(meta["modules"]) - 1
    for part in ("encoder", "decoder"):
        report = qcompiler.compile(str(out / f"{part}.onnx"), scheme="ternary", output=str(tmp_path / f"{part}.q.onnx"),
                                   calib=str(out / f"calib_{part}.npz"), verify=False)
        methods = {e["method"] for e in report.report["passes"]["replace_matmul"]["linears"]}
        assert methods == {"on-grid (lossless)"}, part
        assert not report.report["passes"].get("fold_layernorm", {}).get("folded")   # folded in torch already


@pytest.mark.parametrize("args", [["--steps", "0"], ["--kd-weight", "2"], ["--scheme", "nope"]])
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_a_scheme_without_trainable_linears_is_refused(tiny_mt, tmp_path):
    from qcompiler.errors import UsageError

    with pytest.raises(UsageError, match="no linear format QAT can train"):
        build_qat_dir(tiny_mt, "kmeans4", steps=1, out=tmp_path / "q", log=lambda *_: None, show=False)
    assert not any(tmp_path.iterdir())                     # the staged directory is gone
