"""The torch path of training-aware recovery: swap a torch model's modules for fake-quantized ones by
a scheme, train against the FP32 teacher, export, compile: the compiled model is the trained one."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import qcompiler
from qcompiler.qat.convert import export_modules, quantize_modules
from qcompiler.qat.modules import QuantEmbedding, QuantLinear
from qcompiler.qat.trainer import QATConfig, kd_loss, train_qat
from qcompiler.schemes import load_scheme

class TinyLM(nn.Module):
    """Embedding, a post-LN block with an FFN, and an output layer (tied to the table when `tied`)."""

    def __init__(self, vocab=40, d=32, ffn=64, tied=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.up, self.down, self.ln = nn.Linear(d, ffn), nn.Linear(ffn, d), nn.LayerNorm(d)
        self.mix = nn.Linear(d, d)
        self.head = None if tied else nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        x = self.ln(x + self.down(torch.relu(self.up(self.mix(x)))))
        return x @ self.embed.weight.T if self.head is None else self.head(x)


def _role(name, module):
    return {"up": "ffn_up", "down": "ffn_down"}.get(name, "linear")


@pytest.fixture()
def trained(tmp_path, request, exact_scheme):
    fmt, pass_name, extra = request.param
    torch.manual_seed(0)
    path = tmp_path / "scheme.toml"
    path.write_text(exact_scheme(fmt, pass_name, extra, roles='[roles.ffn_down]\nformat = "keep"\n'))
    teacher = TinyLM().eval()
    student = TinyLM()
    student.load_state_dict(teacher.state_dict())
    swapped = quantize_modules(student, load_scheme(str(path)), _role, embeddings=False)
    ids = torch.randint(0, 40, (64, 10), generator=torch.Generator().manual_seed(1))

    def batches():
        for i in itertools.count():
            yield ids[(i * 8) % 64:(i * 8) % 64 + 8]

    def loss_fn(batch):
        with torch.no_grad():
            t = teacher(batch)
        return kd_loss(student(batch), t, batch, ignore_index=-1, kd_weight=0.5)

    before = {n: m.qweight.effective() for n, m in student.named_modules() if isinstance(m, QuantLinear)}
    history = train_qat(student, batches(), loss_fn, QATConfig(steps=15, lr=3e-3, warmup=2), show=False)
    return student, swapped, before, history, path


CASES = [("ternary", "replace_matmul", "accuracy_level = 0"),
         ("bcq", "replace_matmul", "bits = 2\ngroup_size = 16\naccuracy_level = 0"),
         ("int4", "quantize_int4", "block_size = 16\nsymmetric = false\n[options.quantize_int4]\naccuracy_level = 0")]


@pytest.mark.parametrize("trained", CASES, ids=["ternary", "bcq2", "int4"], indirect=True)
def test_trained_export_compiles_losslessly(trained, tmp_path):
    student, swapped, before, history, scheme = trained
    fmt = load_scheme(str(scheme)).weights["format"]
    # the scheme's role rule leaves ffn_down FP32; the embedding stays (embeddings=False)
    assert swapped == {"up": fmt, "mix": fmt, "head": fmt}
    assert isinstance(student.down, nn.Linear) and isinstance(student.embed, nn.Embedding)
    assert history["steps"] == 15 and history["loss_last"] < history["loss_first"]
    for name, w in before.items():                      # training moved every quantized weight
        assert not np.array_equal(w, student.get_submodule(name).qweight.effective())

    exported = export_modules(student)
    assert not any(isinstance(m, (QuantLinear, QuantEmbedding)) for m in exported.modules())
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = student(ids).numpy()
        np.testing.assert_array_equal(exported(ids).numpy(), want)   # the same weights, the same ops
    onnx_path = tmp_path / "lm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(exported, (ids,), str(onnx_path), input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}}, opset_version=17, dynamo=False)
    out = tmp_path / "lm.q.onnx"
    report = qcompiler.compile(str(onnx_path), scheme=str(scheme), output=str(out), verify=False)
    pass_name = "quantize_int4" if fmt == "int4" else "replace_matmul"
    methods = [e["method"] for e in report.report["passes"][pass_name]["linears"]]
    assert methods == ["on-grid (lossless)"] * 3
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy()})[0]
    # float rounding only (same weights, another summation order); logits ~1-5, measured < 1e-5
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_quant_embedding_feeds_a_tied_head():
    model = TinyLM(tied=True)
    swapped = quantize_modules(model, "ternary", lambda name, m: None)    # linears left FP32
    assert swapped == {"embed": "int4 rows"}                             # ternary.toml: int4 embedding rows
    ids = torch.tensor([[1, 2, 3]])
    out = model(ids)
    out.sum().backward()
    assert model.embed.qweight.weight.grad is not None                   # both uses reach the latent table
    table = model.embed.weight.detach()
    assert torch.equal(model.embed(ids).detach(), table[ids])


def test_kd_loss_ignores_padding_and_is_zero_at_the_teacher():
    logits = torch.randn(2, 5, 11)
    labels = logits.argmax(-1)
    labels[1, 3:] = 0
    loss, parts = kd_loss(logits, logits, labels, ignore_index=0, kd_weight=1.0)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)
    loss_ce, parts_ce = kd_loss(logits, logits, labels, ignore_index=0, kd_weight=0.0)
    keep = labels != 0
    want = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert float(loss_ce) == pytest.approx(float(want), rel=1e-6)
