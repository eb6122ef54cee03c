"""Uniform (linear) integer quantization: int8 per channel, int4 blockwise with MSE clipping.

Conventions: a weight is float32 [K, N] in MatMul orientation (K inputs, N outputs);
"per channel" means per output column n. Symmetric codes are in [-qmax, qmax] with
qmax = 2^(b-1) - 1 (the most negative code is never used, so negation is exact);
asymmetric codes are unsigned in [0, 2^b - 1] with a zero point.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Quantized:
    codes: np.ndarray        # integer codes, same shape as the weight (int8 or uint8)
    scales: np.ndarray       # float32; shape [N] per channel, or [N, G] blockwise
    zero_points: np.ndarray | None  # same shape as scales (uint8) for asymmetric, else None
    block_size: int | None = None   # blockwise along K when not None
    rows: bool = False              # codes [V, D] with blocks along D (embedding rows)

    def dequantize(self) -> np.ndarray:
        if self.rows:
            transposed = Quantized(self.codes.T, self.scales, self.zero_points, self.block_size)
            return np.ascontiguousarray(transposed.dequantize().T)
        if self.block_size is None:
            zp = 0 if self.zero_points is None else self.zero_points.astype(np.float32)
            return ((self.codes.astype(np.float32) - zp) * self.scales).astype(np.float32)
        k, n = self.codes.shape
        g = self.scales.shape[1]
        pad = g * self.block_size - k
        codes = np.pad(self.codes.astype(np.float32), ((0, pad), (0, 0))).reshape(g, self.block_size, n)
        zp = 0.0 if self.zero_points is None else self.zero_points.T.astype(np.float32)[:, None, :]
        w = (codes - zp) * self.scales.T[:, None, :]
        return w.reshape(g * self.block_size, n)[:k].astype(np.float32)


def quantize_per_channel_symmetric(w: np.ndarray, bits: int = 8, axis: int = 1) -> Quantized:
    """Symmetric per-channel codes along `axis` (the output channel); max |w| maps to qmax."""
    w = np.asarray(w, dtype=np.float32)
    qmax = 2 ** (bits - 1) - 1
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    absmax = np.max(np.abs(w), axis=reduce_axes, keepdims=True)
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
    return Quantized(codes, scale.reshape(-1), None)


def _block_view(w: np.ndarray, block_size: int) -> tuple[np.ndarray, int]:
    """[K, N] -> [G, B, N] zero-padded along K."""
    k, n = w.shape
    g = -(-k // block_size)
    padded = np.pad(w, ((0, g * block_size - k), (0, 0)))
    return padded.reshape(g, block_size, n), g


def quantize_blockwise(
    w: np.ndarray,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    search_clip: bool = True,
    grid: int = 20,
    min_ratio: float = 0.5,
    full_range: bool = False,
    refine: int = 0,
) -> Quantized:
    """Blockwise codes along K; the clipping range of each block minimises its squared error.

    With `search_clip`, each block tries `grid` shrink factors of its range between
    `min_ratio` and 1 and keeps the one with the least reconstruction error (plain
    min/max wastes codes on single outliers). Returns codes [K, N] and scales [N, G].

    `full_range` (symmetric only) also uses the code -2^(b-1): the block's largest-magnitude
    value may map to -8 (scale of that value's opposite sign) or to +7, whichever errs less, as
    onnxruntime's MatMulNBits quantizer does; on MiniLM int4 block 32 it cuts the weight error
    from 0.096 to 0.085. `refine` > 0 then re-fits each block's scale by least squares on its
    codes (alternating, kept only where the error drops): another small gain, also asymmetric.
    """
    w = np.asarray(w, dtype=np.float32)
    k, n = w.shape
    blocks, g = _block_view(w, block_size)                     # [G, B, N]
    ratios = np.linspace(1.0, min_ratio, grid) if search_clip else np.array([1.0])
    best_err = np.full((g, n), np.inf, dtype=np.float32)
    best_scale = np.ones((g, n), dtype=np.float32)
    best_zp = np.zeros((g, n), dtype=np.float32)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax - 1 if full_range else -qmax
        if full_range:
            idx = np.abs(blocks).argmax(axis=1)[:, None, :]
            extreme = np.take_along_axis(blocks, idx, axis=1)[:, 0, :]   # signed, [G, N]
            targets = (float(qmin), float(qmax))
        else:
            extreme = np.abs(blocks).max(axis=1)                     # [G, N]
            targets = (float(qmax),)
        for r in ratios:
            for target in targets:
                scale = np.where(extreme != 0, extreme * r / target, 1.0).astype(np.float32)
                q = np.clip(np.rint(blocks / scale[:, None, :]), qmin, qmax)
                err = ((q * scale[:, None, :] - blocks) ** 2).sum(axis=1)
                better = err < best_err
                best_err = np.where(better, err, best_err)
                best_scale = np.where(better, scale, best_scale)
        for _ in range(refine):
            best_scale, best_err = _refit_scale(blocks, best_scale, best_zp, best_err, qmin, qmax)
        codes = np.clip(np.rint(blocks / best_scale[:, None, :]), qmin, qmax).astype(np.int8)
        zero_points = None
    else:
        levels = 2 ** bits - 1
        lo, hi = blocks.min(axis=1), blocks.max(axis=1)
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)      # keep 0 exactly representable
        for r in ratios:
            scale = np.where(hi - lo > 0, (hi - lo) * r / levels, 1.0).astype(np.float32)
            zp = np.clip(np.rint(-lo * r / scale), 0, levels)
            q = np.clip(np.rint(blocks / scale[:, None, :]) + zp[:, None, :], 0, levels)
            err = (((q - zp[:, None, :]) * scale[:, None, :] - blocks) ** 2).sum(axis=1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_scale = np.where(better, scale, best_scale)
            best_zp = np.where(better, zp, best_zp)
        for _ in range(refine):
            best_scale, best_err = _refit_scale(blocks, best_scale, best_zp, best_err, 0, levels)
        codes = np.clip(np.rint(blocks / best_scale[:, None, :]) + best_zp[:, None, :], 0, levels).astype(np.uint8)
        zero_points = best_zp.T.astype(np.uint8).copy()
    codes = codes.reshape(g * block_size, n)[:k]
    return Quantized(np.ascontiguousarray(codes), best_scale.T.copy(), zero_points, block_size)


def _refit_scale(blocks, scale, zp, err, lo, hi):
    """One least-squares scale update per block for fixed codes; kept only where the error drops."""
    q = np.clip(np.rint(blocks / scale[:, None, :]) + zp[:, None, :], lo, hi) - zp[:, None, :]
    qq = (q * q).sum(axis=1)
    fitted = (q * blocks).sum(axis=1) / np.where(qq > 0, qq, 1.0)
    fitted = np.where((qq > 0) & (fitted != 0), fitted, scale).astype(np.float32)
    q = np.clip(np.rint(blocks / fitted[:, None, :]) + zp[:, None, :], lo, hi) - zp[:, None, :]
    new_err = ((q * fitted[:, None, :] - blocks) ** 2).sum(axis=1)
    better = new_err < err
    return np.where(better, fitted, scale).astype(np.float32), np.where(better, new_err, err)


def quantize_rows(table: np.ndarray, bits: int = 8, block_size: int | None = None, search_clip: bool = False) -> Quantized:
    """Row-wise symmetric codes for an embedding table [V, D] (a scale per row or per row block).

    Returns codes [V, D] and scales [V] (per row) or [V, G] (blockwise along D).
    """
    table = np.asarray(table, dtype=np.float32)
    if block_size is None:
        q = quantize_per_channel_symmetric(table, bits=bits, axis=0)
        return Quantized(q.codes, q.scales[:, None], None, table.shape[1], rows=True)
    q = quantize_blockwise(table.T, bits=bits, block_size=block_size, symmetric=True, search_clip=search_clip)
    return Quantized(np.ascontiguousarray(q.codes.T), q.scales, None, block_size, rows=True)
