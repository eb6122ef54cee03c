"""Drop-in fake-quantized torch modules: QuantLinear (for nn.Linear), QuantEmbedding (nn.Embedding).

Both hold a FakeQuantWeight: a latent float weight in MatMul orientation [K, N] plus the format's
trainable or fixed parameters, whose forward is the weight the compiled op multiplies by
(qcompiler.qat.fake_quant). A QuantSpec says which format, read from a scheme the same way the
compiler's passes read it (QuantSpec.from_plan), so the trained model packs to what it computed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from qcompiler.qat import fake_quant as fq

__all__ = ["QuantSpec", "FakeQuantWeight", "QuantLinear", "QuantEmbedding", "FORMATS"]

FORMATS = ("ternary", "bcq", "int4", "int8")


@dataclasses.dataclass
class QuantSpec:
    """One weight's format. group_size None = per output channel (the whole K)."""

    format: str
    bits: int | None = None
    group_size: int | None = None
    scale_dtype: str = "float16"
    symmetric: bool = False          # int4 only
    iterations: int = 10             # bcq init: alternating refinement rounds
    noise: float = 0.0               # MDNQ-style noise rate during training (0: off)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown fake-quant format {self.format!r} (one of {', '.join(FORMATS)})")
        if self.format == "bcq":
            self.bits = int(self.bits or 2)
            if not 1 <= self.bits <= 4:
                raise ValueError(f"binary codes take 1..4 bits, got {self.bits}")
        if self.format == "int4" and self.group_size is None:
            self.group_size = 32

    @classmethod
    def from_plan(cls, fmt: str, settings: dict[str, Any], noise: float = 0.0) -> "QuantSpec":
        """The spec of a plan entry (scheme [weights]: format, bits, group_size / block_size, ...)."""
        group = settings.get("group_size", settings.get("block_size"))
        scale_dtype = str(settings.get("scale_dtype", "float16" if fmt in ("ternary", "bcq") else "float32"))
        return cls(fmt, settings.get("bits"), None if group is None else int(group), scale_dtype,
                   bool(settings.get("symmetric", fmt == "int4")), int(settings.get("iterations", 10)), noise)

    def group(self, k: int) -> int:
        return k if self.group_size is None or self.group_size >= k else int(self.group_size)


class FakeQuantWeight(nn.Module):
    """A latent weight [K, N] whose forward is its quantized value (STE), outlier rows in float16."""

    def __init__(self, weight: torch.Tensor, spec: QuantSpec, outlier_idx=None):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(weight.detach().clone().float())
        k, n = self.weight.shape
        self.group_size = spec.group(k)
        idx = torch.as_tensor(np.asarray([] if outlier_idx is None else outlier_idx, np.int64))
        self.register_buffer("outlier_idx", idx)
        self.generator = torch.Generator().manual_seed(0)
        w = self._without_outliers(self.weight.detach()).numpy()
        if spec.format == "bcq":
            from qcompiler.quantizers.binary_code import quantize_binary_code

            b = quantize_binary_code(w, spec.bits, self.group_size, spec.iterations)
            self.alphas = nn.Parameter(torch.from_numpy(b.alphas.astype(np.float32)))   # [bits, N, G]
        elif spec.format == "int4":
            from qcompiler.passes.quantize_int4 import quantize_int4_weight

            q = quantize_int4_weight(w, self.group_size, spec.symmetric)
            self.scale = nn.Parameter(torch.from_numpy(q.scales.astype(np.float32)))       # [N, G]
            zp = np.zeros_like(q.scales) if q.zero_points is None else q.zero_points
            self.register_buffer("zero_point", torch.from_numpy(zp.astype(np.float32)))

    def _without_outliers(self, w: torch.Tensor) -> torch.Tensor:
        if self.outlier_idx.numel() == 0:
            return w
        return w.index_fill(0, self.outlier_idx, 0.0)

    def set_alphas(self, alphas: np.ndarray) -> None:
        """bcq: start from given alphas [bits, N, G] (e.g. those of calibrated recovery)."""
        with torch.no_grad():
            self.alphas.copy_(torch.from_numpy(np.asarray(alphas, np.float32)))

    def set_int4(self, scale: np.ndarray, zero_point: np.ndarray | None) -> None:
        """int4: start from given scales [N, G] and zero points (None: symmetric)."""
        with torch.no_grad():
            self.scale.copy_(torch.from_numpy(np.asarray(scale, np.float32)))
            zp = np.zeros_like(scale) if zero_point is None else zero_point
            self.zero_point.copy_(torch.from_numpy(np.asarray(zp, np.float32)))

    def forward(self) -> torch.Tensor:
        spec, w = self.spec, self.weight
        core = self._without_outliers(w)
        if spec.format == "ternary":
            deq = fq.twn_ternary(core, self.group_size, spec.scale_dtype)[0]
        elif spec.format == "bcq":
            deq = fq.bcq_round(core, self.alphas, self.group_size, spec.scale_dtype)[0]
        elif spec.format == "int4":
            deq = fq.int4_round(core, fq.round_scale(self.scale, spec.scale_dtype), self.zero_point,
                                self.group_size, spec.symmetric)
        else:
            deq = fq.int8_channel(core)
        if self.training and spec.noise > 0:
            deq = fq.mdnq_noise(w, deq, spec.noise, self.generator)
        return fq.outlier_rows(w, deq, self.outlier_idx)

    @torch.no_grad()
    def effective(self) -> np.ndarray:
        """The weight [K, N] the compiled op will multiply by (eval mode: no noise)."""
        was = self.training
        self.eval()
        try:
            return self.forward().detach().numpy().astype(np.float32)
        finally:
            self.train(was)


class QuantLinear(nn.Module):
    """Drop-in for nn.Linear (y = x W^T + b) with a fake-quantized weight."""

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool = True,
                 weight: torch.Tensor | None = None):
        super().__init__()
        w = weight if weight is not None else nn.Linear(in_features, out_features, bias=False).weight
        self.qweight = FakeQuantWeight(w.detach().T.contiguous(), spec)          # [K, N]
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, spec, linear.bias is not None, linear.weight)
        if linear.bias is not None:
            with torch.no_grad():
                q.bias.copy_(linear.bias)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.qweight()
        return y + self.bias if self.bias is not None else y


class QuantEmbedding(nn.Module):
    """Drop-in for nn.Embedding with row-wise fake-quantized rows: ternary (TWN per row), int8 (absmax
    per row) or int4 (symmetric blocks along the row, the int4 pass's block quantizer for the init)."""

    def __init__(self, weight: torch.Tensor, spec: QuantSpec, padding_idx: int | None = None):
        super().__init__()
        if spec.format == "bcq":
            raise ValueError("QuantEmbedding takes ternary, int8 or int4 rows")
        if spec.format == "int4":
            spec = dataclasses.replace(spec, symmetric=True)                   # quantize_rows: symmetric codes
        self.qweight = FakeQuantWeight(weight.detach().T.contiguous(), spec)    # [D, V]: a channel per row
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, spec: QuantSpec) -> "QuantEmbedding":
        return cls(emb.weight, spec, emb.padding_idx)

    @property
    def weight(self) -> torch.Tensor:
        """The fake-quantized table [V, D], so a head tied to `embedding.weight` reads it too."""
        return self.qweight().T

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight, self.padding_idx)
