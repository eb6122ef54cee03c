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
    squared_error: float | None = None  # sum of (dequantized - w)^2, when the quantizer computed it
    squared_norm: float | None = None   # sum of w^2, likewise

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
    padded = w if g * block_size == k else np.pad(w, ((0, g * block_size - k), (0, 0)))
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
    zoom: int = 0,
) -> Quantized:
    """Blockwise codes along K; the clipping range of each block minimises its squared error.

    With `search_clip`, each block tries `grid` shrink factors of its range between
    `min_ratio` and 1 and keeps the one with the least reconstruction error (plain
    min/max wastes codes on single outliers); `zoom` > 0 then halves the grid step that many
    times around each block's best factor (two candidates per halving), so a coarse grid
    with zoom finds the factor as finely as a dense grid at a fraction of the candidates
    (grid 3 from 1 to 0.6 + zoom 2 tries 7 factors at a resolution of 0.05; grid 20 to 0.5
    tries 20 at 0.026; on MiniLM's linears the first errs 1.7% less, thanks to the zoom's
    factors off the dense grid and one refit).
    Returns codes [K, N] and scales [N, G].

    `full_range` (symmetric only) also uses the code -2^(b-1): the block's largest-magnitude
    value may map to -8 (scale of that value's opposite sign) or to +7, whichever errs less, as
    onnxruntime's MatMulNBits quantizer does; on MiniLM int4 block 32 it cuts the weight error
    from 0.096 to 0.085. `refine` > 0 then re-fits each block's scale by least squares on its
    codes (alternating, kept only where the error drops): another small gain, also asymmetric.

    All candidates of a step are scored for every block at once, in float32, in two reused
    buffers (a candidate costs six passes over the weight); codes are round(w / scale) + zero point.
    """
    w = np.asarray(w, dtype=np.float32)
    k, n = w.shape
    blocks, g = _block_view(w, block_size)                     # [G, B, N]
    search = _ClipSearch(blocks, bits, symmetric, full_range)
    ratios = np.linspace(1.0, min_ratio, grid).astype(np.float32) if search_clip and grid > 1 \
        else np.ones(1, np.float32)
    for base in search.bases:
        for r in ratios:
            search.consider(base * r, r)
    step = np.float32((1.0 - min_ratio) / (len(ratios) - 1)) if len(ratios) > 1 else np.float32(0)
    for _ in range(zoom if step > 0 else 0):
        step = step / np.float32(2)
        best_s, best_r = search.best_scale.copy(), search.best_ratio.copy()
        for sign in (np.float32(1), np.float32(-1)):
            r = best_r + sign * step
            search.consider(best_s / best_r * r, r)
    for _ in range(refine):
        search.refit()
    codes = search.codes().reshape(block_size, g, n).transpose(1, 0, 2).reshape(g * block_size, n)[:k]
    zero_points = None if symmetric else search.zero_point.reshape(g, n).T.astype(np.uint8).copy()
    return Quantized(np.ascontiguousarray(codes), search.best_scale.reshape(g, n).T.copy(), zero_points, block_size,
                     squared_error=float(search.best_err.sum(dtype=np.float64)),
                     squared_norm=float(np.einsum("bm,bm->m", search.x, search.x).sum(dtype=np.float64)))


class _ClipSearch:
    """Per-block scale search: the best scale of every block, its squared error and the grid ratio it
    came from; zero points (asymmetric) are fixed by the block's min/max.

    The blocks [G, B, N] are laid out once as x [B, G*N] (element b of every block in one row), so
    every per-block parameter is a row vector and each pass over x runs along long rows.
    A candidate scale s is scored as s^2 * sum((clip(rint(u)) - u)^2) with u = x / s + zp, which
    is the block's squared reconstruction error sum(((q - zp) * s - x)^2)."""

    def __init__(self, blocks: np.ndarray, bits: int, symmetric: bool, full_range: bool) -> None:
        g, b, n = blocks.shape
        x = self.x = np.ascontiguousarray(blocks.transpose(1, 0, 2)).reshape(b, g * n)
        if symmetric:
            qmax = 2 ** (bits - 1) - 1
            self.lo, self.hi = (-qmax - 1 if full_range else -qmax), qmax
            if full_range:
                idx = np.abs(x).argmax(axis=0)[None]
                extreme = np.take_along_axis(x, idx, axis=0)[0]              # signed, [G*N]
                targets = (self.lo, self.hi)
            else:
                extreme = np.abs(x).max(axis=0)
                targets = (self.hi,)
            self.bases = [np.where(extreme != 0, extreme / np.float32(t), np.float32(1)).astype(np.float32)
                          for t in targets]
            self.zero_point = None
        else:
            self.lo, self.hi = 0, 2 ** bits - 1
            lo = np.minimum(x.min(axis=0), np.float32(0))           # keep 0 exactly representable
            hi = np.maximum(x.max(axis=0), np.float32(0))
            base = np.where(hi - lo > 0, (hi - lo) / np.float32(self.hi), np.float32(1)).astype(np.float32)
            self.bases = [base]
            self.zero_point = np.clip(np.rint(-lo / base), 0, self.hi).astype(np.float32)
        self.best_err = np.full(g * n, np.inf, dtype=np.float32)
        self.best_scale = np.ones(g * n, dtype=np.float32)
        self.best_ratio = np.ones(g * n, dtype=np.float32)
        self._u = np.empty_like(x)
        self._q = np.empty_like(x)

    def _scaled(self, scale: np.ndarray, divide: bool = False) -> np.ndarray:
        """u = x / scale (+ zero point) into the first buffer."""
        if divide:
            np.divide(self.x, scale, out=self._u)
        else:
            np.multiply(self.x, np.float32(1) / scale, out=self._u)
        if self.zero_point is not None:
            self._u += self.zero_point
        return self._u

    def _rounded(self, scale: np.ndarray, divide: bool = False) -> np.ndarray:
        q = np.rint(self._scaled(scale, divide), out=self._q)
        return np.clip(q, self.lo, self.hi, out=q)

    def consider(self, scale: np.ndarray, ratio) -> None:
        scale = np.asarray(scale, dtype=np.float32)
        q = self._rounded(scale)
        q -= self._u
        err = np.einsum("bm,bm->m", q, q) * (scale * scale)
        better = err < self.best_err
        self.best_err = np.where(better, err, self.best_err)
        self.best_scale = np.where(better, scale, self.best_scale)
        self.best_ratio = np.where(better, ratio, self.best_ratio)

    def refit(self) -> None:
        """One least-squares scale per block for its current codes, kept where the error drops."""
        q = self._rounded(self.best_scale, divide=True)
        if self.zero_point is not None:
            q -= self.zero_point
        qq = np.einsum("bm,bm->m", q, q)
        qx = np.einsum("bm,bm->m", q, self.x)
        fitted = qx / np.where(qq > 0, qq, np.float32(1))
        fitted = np.where((qq > 0) & (fitted != 0), fitted, self.best_scale).astype(np.float32)
        self.consider(fitted, self.best_ratio)

    def codes(self) -> np.ndarray:
        """[B, G*N] codes of the best scales, round(x / scale) + zero point."""
        return self._rounded(self.best_scale, divide=True).astype(np.uint8 if self.zero_point is not None else np.int8)


def quantize_rows(table: np.ndarray, bits: int = 8, block_size: int | None = None, search_clip: bool = False) -> Quantized:
    """Row-wise symmetric codes for an embedding table [V, D] (a scale per row or per row block).

    Returns codes [V, D] and scales [V] (per row) or [V, G] (blockwise along D).
    """
    table = np.asarray(table, dtype=np.float32)
    if block_size is None:
        q = quantize_per_channel_symmetric(table, bits=bits, axis=0)
        return Quantized(q.codes, q.scales[:, None], None, table.shape[1], rows=True)
    # Rows are independent: a slice of them at a time keeps the search's temporaries (three copies)
    # at ROWS_ELEMENTS, not three copies of the whole table.
    step = max(1, ROWS_ELEMENTS // max(table.shape[1], 1))
    parts = [quantize_blockwise(table[s:s + step].T, bits=bits, block_size=block_size, symmetric=True,
                                search_clip=search_clip) for s in range(0, table.shape[0], step)]
    return Quantized(np.concatenate([np.ascontiguousarray(q.codes.T) for q in parts]),
                     np.concatenate([q.scales for q in parts]), None, block_size, rows=True,
                     squared_error=sum(q.squared_error for q in parts))


ROWS_ELEMENTS = 1 << 22     # table elements quantize_rows searches at a time (16 MB of float32)
