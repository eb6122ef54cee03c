"""A tiny BERT-like encoder with seeded random weights, exported to ONNX: the test model.

Three variants, all with inputs ``input_ids`` int64 [batch, seq] and ``attention_mask`` int64
[batch, seq] (dynamic axes ``batch`` and ``seq``) and output ``last_hidden_state`` float32
[batch, seq, 64]:

- ``post_ln`` (BERT): embeddings (word + position + token type 0) -> LayerNorm, then 2 layers of
  ``x = LN(x + Attn(x)); x = LN(x + FFN(x))``. Every LayerNorm output also feeds a residual Add,
  so the "fold LayerNorm into the following MatMuls" pass must leave it (or split it).
- ``pre_ln`` (GPT-2 like): embeddings without LayerNorm, 2 layers of
  ``x = x + Attn(LN(x)); x = x + FFN(LN(x))`` and a final LayerNorm. Inside the layers every
  consumer of a LayerNorm output is a MatMul (q, k, v projections; FFN up), the foldable case.
  The final LayerNorm feeds the graph output (a case the folding pass must leave alone).
- ``rms`` (LLaMA like): as ``pre_ln`` but RMSNorm (no mean, no beta), written out as
  ``x / sqrt(mean(x**2) + eps) * gamma``, i.e. Pow/ReduceMean/Add/Sqrt/Div/Mul in every opset.

Hidden 64, 4 heads of 16, FFN 256 with exact (Erf) GELU, vocab 1000, 512 positions,
2 token types. Weights are seeded (``torch.manual_seed(seed)``) and not degenerate: linear weights
have std 1/sqrt(fan_in) (activations keep unit-order spread), LayerNorm gammas are 1 + N(0, 0.1^2)
and betas N(0, 0.05^2), biases N(0, 0.02^2), embeddings N(0, 1). In every layer two FFN hidden
units (``OUTLIER_UNITS``) get their W1 row and b1 entry scaled by ``OUTLIER_SCALE`` (their
activations, the inputs of the FFN down projection, are ~20x the others: the outlier channels of
real models), with the matching W2 column scaled by 1/4.

Exporter: the legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), because
it gives the textbook forms that real exported transformer graphs contain:

- opset 14: LayerNorm decomposed as ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add;
  GELU as Div, Erf, Add, Mul, Mul; Linear as MatMul + Add; attention with Reshape/Transpose,
  MatMul, Div (by sqrt(head dim)), Add (mask), Softmax.
- opset 17-19: the same, except each LayerNorm is one LayerNormalization node
  (the decomposed RMSNorm of ``rms`` stays decomposed at every opset).
- opset 20+: as 17, and GELU becomes one Gelu node.

The dynamo exporter (torch 2.13) does not give the decomposed forms at opset 14: it translates
at opset 18 with LayerNormalization, fails to down-convert ("No Previous Version of
LayerNormalization") and returns an opset-18 graph, so it is not used. Output is a single ONNX file,
no external data. Building and exporting takes well under a second.

CLI: ``python -m models.tiny_bert OUT.onnx [--opset N] [--variant post_ln|pre_ln|rms] [--seed S]``
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
from torch import nn

from models.onnx_export import export_encoder

VARIANTS = ("post_ln", "pre_ln", "rms")

VOCAB = 1000
MAX_POSITIONS = 512
TYPE_VOCAB = 2
HIDDEN = 64
HEADS = 4
FFN = 256
LAYERS = 2
LN_EPS = 1e-12
RMS_EPS = 1e-6
OUTLIER_UNITS = (7, 131)
OUTLIER_SCALE = 20.0


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * gamma, written so it exports decomposed."""

    def __init__(self, dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return x / torch.sqrt(var + self.eps) * self.weight


def _norm(variant: str) -> nn.Module:
    return RMSNorm(HIDDEN) if variant == "rms" else nn.LayerNorm(HIDDEN, eps=LN_EPS)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(HIDDEN, HIDDEN)
        self.k = nn.Linear(HIDDEN, HIDDEN)
        self.v = nn.Linear(HIDDEN, HIDDEN)
        self.o = nn.Linear(HIDDEN, HIDDEN)
        self.head_dim = HIDDEN // HEADS

    def forward(self, x, mask_add):
        q, k, v = self.q(x), self.k(x), self.v(x)
        # Shapes are taken from the projection, not from x, so that in the pre-norm variants
        # the only consumers of a norm output are MatMuls (no Shape node on it).
        b, s = q.shape[0], q.shape[1]

        def split(t):
            return t.view(b, s, HEADS, self.head_dim).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + mask_add, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, HIDDEN)
        return self.o(ctx)


class FeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(HIDDEN, FFN)
        self.down = nn.Linear(FFN, HIDDEN)

    def forward(self, x):
        return self.down(nn.functional.gelu(self.up(x)))  # exact (erf) GELU


class Layer(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        self.variant = variant
        self.attn = Attention()
        self.ffn = FeedForward()
        self.norm1 = _norm(variant)
        self.norm2 = _norm(variant)

    def forward(self, x, mask_add):
        if self.variant == "post_ln":
            x = self.norm1(x + self.attn(x, mask_add))
            return self.norm2(x + self.ffn(x))
        x = x + self.attn(self.norm1(x), mask_add)
        return x + self.ffn(self.norm2(x))


class TinyBert(nn.Module):
    def __init__(self, variant: str = "post_ln"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.word = nn.Embedding(VOCAB, HIDDEN)
        self.position = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type = nn.Embedding(TYPE_VOCAB, HIDDEN)
        self.register_buffer("position_ids", torch.arange(MAX_POSITIONS).unsqueeze(0), persistent=False)
        # BERT normalises the embeddings; the pre-norm models (GPT-2, LLaMA) do not.
        self.emb_norm = _norm(variant) if variant == "post_ln" else None
        self.layers = nn.ModuleList(Layer(variant) for _ in range(LAYERS))
        # Pre-norm models end with a final norm.
        self.final_norm = None if variant == "post_ln" else _norm(variant)

    def forward(self, input_ids, attention_mask):
        seq = input_ids.shape[1]
        x = (
            self.word(input_ids)
            + self.position(self.position_ids[:, :seq])
            + self.token_type(torch.zeros_like(input_ids))
        )
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        mask_add = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_add)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x


@torch.no_grad()
def _init_weights(model: TinyBert, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    for name, p in model.named_parameters():
        if isinstance(_owner(model, name), (nn.LayerNorm, RMSNorm)):
            if name.endswith("weight"):
                p.copy_(1.0 + randn(*p.shape, std=0.1))
            else:
                p.copy_(randn(*p.shape, std=0.05))
        elif name.endswith("bias"):
            p.copy_(randn(*p.shape, std=0.02))
        elif p.dim() == 2 and "word" not in name and "position" not in name and "token_type" not in name:
            p.copy_(randn(*p.shape, std=1.0 / math.sqrt(p.shape[1])))  # Linear [out, in]
        else:
            p.copy_(randn(*p.shape, std=1.0 if "word" in name else 0.5))
    for layer in model.layers:
        for unit in OUTLIER_UNITS:
            layer.ffn.up.weight[unit] *= OUTLIER_SCALE
            layer.ffn.up.bias[unit] = abs(float(layer.ffn.up.bias[unit])) * OUTLIER_SCALE + 0.5
            layer.ffn.down.weight[:, unit] *= 0.25


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    mod = model
    for part in param_name.split(".")[:-1]:
        mod = getattr(mod, part)
    return mod


def make_tiny_bert(variant: str = "post_ln", seed: int = 0) -> TinyBert:
    """The torch module, in eval mode, with seeded weights."""
    model = TinyBert(variant)
    _init_weights(model, seed)
    return model.eval()


def example_inputs(batch: int = 2, seq: int = 12, seed: int = 0) -> dict:
    """Random int64 numpy feeds for the tiny model; the second row has 3 padded positions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if batch > 1 and seq > 3:
        mask[1, -3:] = 0
        ids[1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def build_tiny_bert(path, opset: int = 17, variant: str = "post_ln", seed: int = 0) -> str:
    """Build the tiny encoder and export it to ``path`` (single-file ONNX). Returns the path."""
    path = str(path)
    model = make_tiny_bert(variant, seed)
    ids = torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(2, 8, dtype=torch.int64)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    export_encoder(model, (ids, mask), tmp, opset)
    os.replace(tmp, path)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m models.tiny_bert", description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output .onnx path")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--variant", choices=VARIANTS, default="post_ln")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(build_tiny_bert(a.out, opset=a.opset, variant=a.variant, seed=a.seed))


if __name__ == "__main__":
    main()
