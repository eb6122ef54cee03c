"""Fake quantizers in torch with a straight-through estimator: the compiler's formats, trainable.

Every function takes a weight in MatMul orientation [K, N] (the compiler's convention, see
qcompiler/quantizers/ternary.py) and returns the weight the compiled op multiplies by, with
gradients passing straight through to the latent weight (and, where the format has trainable
scales, to them). The rules are the numpy quantizers' own: TWN delta = 0.7 mean|w| (ternary.py),
nearest sign combination for binary codes (binary_code.py), round-clip with zero point for int4
(uniform.py), absmax/127 per channel for int8; scales go through float16 when the format stores
them so (the packed ops' default scale dtype), so a fake-quant forward is the compiled weight.
"""

from __future__ import annotations

import itertools

import torch

from qcompiler.quantizers.ternary import TWN_DELTA_FACTOR

__all__ = [
    "ste", "round_scale", "group_blocks", "ungroup", "twn_ternary", "bcq_round", "int4_round",
    "int8_channel", "outlier_rows", "mdnq_noise",
]


def ste(latent: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Value of `quantized`, gradient of identity to `latent` (plus whatever flows into `quantized`)."""
    return quantized + (latent - latent.detach())


def round_scale(s: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """Scales as the packed file stores them (float16 by default), gradient straight through."""
    if scale_dtype == "float16":
        return s + (s.detach().to(torch.float16).to(s.dtype) - s.detach())
    return s


def group_blocks(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[K, N] -> [G, B, N], zero-padded along K (ternary.group_view)."""
    k, n = w.shape
    g = -(-k // group_size)
    if g * group_size != k:
        w = torch.nn.functional.pad(w, (0, 0, 0, g * group_size - k))
    return w.reshape(g, group_size, n)


def ungroup(blocks: torch.Tensor, k: int) -> torch.Tensor:
    return blocks.reshape(-1, blocks.shape[-1])[:k]


def _counts(k: int, group_size: int, device) -> torch.Tensor:
    g = -(-k // group_size)
    return torch.clamp(k - torch.arange(g, device=device) * group_size, max=group_size).to(torch.float32)


def twn_ternary(w: torch.Tensor, group_size: int, scale_dtype: str = "float16",
                delta_factor: float = TWN_DELTA_FACTOR) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TWN (ternary.quantize_ternary, method "twn"): returns (dequantized [K, N] with STE, codes, alpha [N, G])."""
    k, n = w.shape
    with torch.no_grad():
        blocks = group_blocks(w.detach(), group_size)
        a = blocks.abs()
        delta = delta_factor * a.sum(dim=1) / _counts(k, group_size, w.device)[:, None]
        keep = a > delta[:, None, :]
        n_keep = keep.sum(dim=1)
        alpha = torch.where(n_keep > 0, (a * keep).sum(dim=1) / n_keep.clamp(min=1), torch.zeros_like(delta))
        codes = torch.sign(blocks) * keep
        alpha_q = round_scale(alpha, scale_dtype)
        deq = ungroup(codes * alpha_q[:, None, :], k)
    return ste(w, deq), ungroup(codes, k), alpha_q.T


def sign_combinations(bits: int, device=None) -> torch.Tensor:
    """[2^bits, bits] of +-1 in itertools.product order (binary_code.sign_combinations)."""
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=bits)), device=device)


def bcq_round(w: torch.Tensor, alphas: torch.Tensor, group_size: int, scale_dtype: str = "float16"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary codes given alphas [bits, N, G] (binary_code.nearest_combination): the nearest of the
    2^bits values sum_i s_i alpha_i per element. Returns (dequantized [K, N], planes [bits, K, N]);
    the gradient reaches w straight through and the alphas through the planes."""
    k, n = w.shape
    bits = alphas.shape[0]
    a = round_scale(alphas, scale_dtype)                                   # [bits, N, G]
    with torch.no_grad():
        blocks = group_blocks(w.detach(), group_size)                      # [G, B, N]
        ag = a.detach().permute(0, 2, 1)                                   # [bits, G, N]
        combos = sign_combinations(bits, w.device)                         # [C, bits]
        values = torch.einsum("cb,bgn->cgn", combos, ag)                   # [C, G, N]
        order = torch.argsort(values, dim=0)
        sorted_vals = torch.gather(values, 0, order)
        idx = torch.zeros(blocks.shape, dtype=torch.long, device=w.device)
        for j in range(len(combos) - 1):
            idx += (blocks > (0.5 * (sorted_vals[j] + sorted_vals[j + 1]))[:, None, :]).long()
        chosen = torch.gather(order[:, :, None, :].expand(-1, -1, blocks.shape[1], -1), 0, idx[None])[0]
        planes = torch.stack([torch.where((chosen >> (bits - 1 - i)) & 1 == 1, 1.0, -1.0) for i in range(bits)])
        planes = torch.stack([ungroup(p, k) for p in planes])              # [bits, K, N]
    rows = torch.arange(k, device=w.device) // group_size
    deq = torch.zeros_like(w)
    for i in range(bits):                                                  # the contract's order: plane 0 first
        deq = deq + planes[i] * a[i][:, rows].T
    return ste(w, deq), planes


def int4_round(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int,
               symmetric: bool = False) -> torch.Tensor:
    """Blockwise round-clip (uniform.quantize_blockwise's codes given its scales): scale, zero
    point [N, G]; codes 0..15 (or -8..7 symmetric). Gradient: STE to w, LSQ-style to the scale."""
    k, n = w.shape
    lo, hi = (-8, 7) if symmetric else (0, 15)
    rows = torch.arange(k, device=w.device) // group_size
    s = scale[:, rows].T                                                   # [K, N]
    zp = zero_point[:, rows].T.to(w.dtype)
    with torch.no_grad():
        q = torch.clamp(torch.round(w.detach() / s.detach()) + zp, lo, hi)
    return ste(w, (q - zp) * s)


def int8_channel(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per output channel (uniform.quantize_per_channel_symmetric): absmax maps to 127."""
    with torch.no_grad():
        absmax = w.detach().abs().amax(dim=0, keepdim=True)
        s = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
        deq = torch.clamp(torch.round(w.detach() / s), -127, 127) * s
    return ste(w, deq)


def outlier_rows(w: torch.Tensor, deq: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The packed ops keep outlier input channels as float16 rows added exactly: those rows of the
    result are the latent rows rounded to float16 (STE), the others the quantized ones."""
    if idx.numel() == 0:
        return deq
    rows = w[idx]
    rows16 = ste(rows, rows.detach().to(torch.float16).to(w.dtype))
    return deq.index_copy(0, idx, rows16)


_NOISES = ("uniform", "gaussian", "laplace")


def mdnq_noise(w: torch.Tensor, deq: torch.Tensor, rate: float, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """MDNQ-style noise: a random `rate` of the elements take w + noise instead of their quantized
    value, the noise drawn from a distribution picked at random among uniform, gaussian and laplace,
    with the per-channel RMS of the quantization error, so the model learns to tolerate it."""
    if rate <= 0:
        return deq
    with torch.no_grad():
        err = (deq.detach() - w.detach())
        rms = err.pow(2).mean(dim=0, keepdim=True).sqrt()
        kind = _NOISES[int(torch.randint(len(_NOISES), (1,), generator=generator))]
        if kind == "uniform":
            noise = (torch.rand(w.shape, generator=generator) * 2 - 1) * (3 ** 0.5)
        elif kind == "gaussian":
            noise = torch.randn(w.shape, generator=generator)
        else:
            u = torch.rand(w.shape, generator=generator) - 0.5
            noise = -torch.sign(u) * torch.log1p(-2 * u.abs()) / (2 ** 0.5)
        mask = torch.rand(w.shape, generator=generator) < rate
    return torch.where(mask, w + noise * rms, deq)
