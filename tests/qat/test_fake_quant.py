"""Fake quantizers: the numpy quantizers' own math in torch, gradients straight through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcompiler.qat import fake_quant as fq
from qcompiler.qat.modules import FakeQuantWeight, QuantEmbedding, QuantLinear, QuantSpec
from qcompiler.quantizers.binary_code import bcq_dequantize, nearest_combination
from qcompiler.quantizers.ternary import quantize_ternary
from qcompiler.quantizers.uniform import quantize_per_channel_symmetric


def _w(k=96, n=24, seed=0):
    return np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32) * 0.05


@pytest.mark.parametrize("group", [None, 32])
def test_twn_is_the_numpy_quantizer(group):
    # Same codes exactly; scales equal after the float16 rounding the packed file applies
    # (torch sums in float32, numpy in float64: alphas may differ in the last float32 bits).
    w = _w()
    t = quantize_ternary(w, group)
    deq, codes, alpha = fq.twn_ternary(torch.from_numpy(w), t.group_size)
    assert np.array_equal(codes.numpy(), t.codes)
    assert np.array_equal(alpha.numpy(), t.scales.astype(np.float16).astype(np.float32))


def test_bcq_round_is_nearest_combination():
    w = _w()
    alphas = (np.abs(np.random.default_rng(1).standard_normal((2, 24, 3))) * 0.03).astype(np.float16).astype(np.float32)
    deq, planes = fq.bcq_round(torch.from_numpy(w), torch.from_numpy(alphas), 32)
    rows = np.arange(96) // 32
    ref = nearest_combination(w, np.transpose(alphas[:, :, rows], (0, 2, 1)))
    assert np.array_equal(planes.numpy(), ref)
    assert np.array_equal(deq.detach().numpy(), bcq_dequantize(ref.astype(np.int8), alphas, 32))


def test_int8_is_per_channel_symmetric():
    w = _w()
    q = quantize_per_channel_symmetric(w)
    assert np.allclose(fq.int8_channel(torch.from_numpy(w)).numpy(), q.dequantize(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("spec", [QuantSpec("ternary"), QuantSpec("bcq", 2, 32), QuantSpec("int4", group_size=32),
                                  QuantSpec("int8")], ids=lambda s: s.format)
def test_ste_step_reduces_the_loss(spec):
    # A bias-free student from another random init learns a teacher linear: only the straight-through
    # gradient of the latent weight (and the format's scales) can lower the loss.
    torch.manual_seed(0)
    teacher = torch.nn.Linear(64, 16, bias=False)
    student = QuantLinear.from_linear(torch.nn.Linear(64, 16, bias=False), spec)
    x = torch.randn(256, 64)
    y = teacher(x).detach()
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(student(x), y)
        opt.zero_grad()
        loss.backward()
        assert student.qweight.weight.grad is not None and student.qweight.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[1] < losses[0] and losses[-1] < 0.5 * losses[0]


def test_outlier_rows_are_float16_latent_rows():
    w = torch.from_numpy(_w())
    f = FakeQuantWeight(w, QuantSpec("ternary"), [3, 50])
    eff = f.effective()
    assert np.array_equal(eff[[3, 50]], w.numpy()[[3, 50]].astype(np.float16).astype(np.float32))
    others = np.delete(eff, [3, 50], axis=0)
    assert len(np.unique(np.abs(others[:, 0]))) <= 2          # 0 and alpha


def test_noise_only_while_training():
    w = torch.from_numpy(_w())
    f = FakeQuantWeight(w, QuantSpec("ternary", noise=0.5))
    f.train()
    noisy = f().detach().numpy()
    assert not np.array_equal(noisy, f.effective())
    f.eval()
    assert np.array_equal(f().detach().numpy(), f.effective())


def test_quant_embedding_rows():
    emb = torch.nn.Embedding(50, 16)
    q = QuantEmbedding.from_embedding(emb, QuantSpec("ternary"))
    out = q(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 3, 16)
    row = out[0, 0].detach().numpy()
    assert len(np.unique(np.abs(row))) <= 2                     # one scale per row


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown fake-quant format"):
        QuantSpec("int3")
