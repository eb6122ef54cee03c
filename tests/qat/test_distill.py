"""Distillation: padding trimmed without changing results, the loss goes down on the tiny BERT."""

from __future__ import annotations

import onnx_ir as ir
import torch

from models.tiny_bert import example_inputs
from qcompiler.qat.distill import DistillConfig, distill, pooled, trim_padding
from qcompiler.qat.modules import FakeQuantWeight, QuantSpec
from qcompiler.qat.onnx_to_torch import OnnxModule


def _batch(seed=0):
    feeds = example_inputs(batch=16, seq=12, seed=seed)
    feeds["attention_mask"][:, 8:] = 0                       # every sample right-padded after 8
    feeds["attention_mask"][::2, 5:] = 0
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def test_trim_padding_keeps_the_pooled_output(tiny_bert_dir):
    module = OnnxModule(ir.load(str(tiny_bert_dir / "post_ln_17.onnx")))
    batch = {k: v for k, v in _batch().items() if k in module.input_names}
    trimmed = trim_padding(batch)
    assert trimmed["input_ids"].shape[1] == 8
    with torch.no_grad():
        full = pooled(module(**batch)[0], batch["attention_mask"].float())
        short = pooled(module(**trimmed)[0], trimmed["attention_mask"].float())
    # float32, same positions summed; masked keys add exp(-large) = 0: measured equal to 1e-6
    torch.testing.assert_close(short, full, rtol=0, atol=1e-5)


def test_distillation_lowers_the_loss(tiny_bert_dir):
    torch.manual_seed(0)
    model = ir.load(str(tiny_bert_dir / "post_ln_17.onnx"))
    weights = {name: FakeQuantWeight(torch.from_numpy(v.const_value.numpy().copy()), QuantSpec("ternary"))
               for name, v in model.graph.initializers.items()
               if len(v.const_value.shape) == 2 and min(v.const_value.shape) >= 64}
    student, teacher = OnnxModule(model, weights=weights), OnnxModule(model)
    train = {k: v for k, v in _batch(1).items() if k in student.input_names}
    params = [w.weight for w in weights.values()]
    history = distill(student, teacher, train, DistillConfig(steps=25, max_seconds=None, lr=2e-3, warmup=2),
                      [{"params": params, "lr": 2e-3}])
    assert history["steps"] == 25
    assert history["loss_last"] < 0.8 * history["loss_first"]


def test_trim_padding_leaves_decoder_style_batches_alone():
    """A source mask beside inputs whose padded axis is not axis 1 (cross-attention keys
    [B, H, S, d]) must not be trimmed: that broke --recover distill on the MT decoder."""
    import torch

    from qcompiler.qat.distill import trim_padding

    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.int64)
    enc = {"input_ids": torch.ones(2, 4, dtype=torch.int64), "attention_mask": mask}
    assert trim_padding(enc)["input_ids"].shape == (2, 2)          # encoder-style: trimmed
    dec = {"src_mask": mask, "cross_key": torch.zeros(2, 3, 4, 8), "input_ids": torch.ones(2, 1, dtype=torch.int64)}
    out = trim_padding(dec)
    assert out["src_mask"].shape == (2, 4) and out["cross_key"].shape == (2, 3, 4, 8)
