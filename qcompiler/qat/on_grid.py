"""Weights already on a format's quantization grid (trained with the quantizer in the loop) are
packed losslessly: their codes and scales are read off the values instead of re-quantized.

`find_on_grid(w, fmt, ...)` returns the RecoveredWeight (qcompiler.quantizers.recovery) whose
effective weight is exactly `w`, or None when `w` is not on the grid: every row except at most
`max_outliers` float16 rows (the ops' outlier channels) must be codes times scales that the packed
file stores exactly (float16 scales by default). Ternary, binary codes (1..4 bits) and int4.
"""

from __future__ import annotations

import numpy as np

from qcompiler.quantizers.binary_code import bcq_dequantize, nearest_combination, quantize_binary_code
from qcompiler.quantizers.recovery import RecoveredWeight
from qcompiler.quantizers.ternary import expand_groups, group_view, resolve_group_size

__all__ = ["find_on_grid", "outlier_candidates", "on_scheme_grid", "ON_GRID_FORMATS"]

ON_GRID_FORMATS = ("ternary", "bcq", "int4")


def _stored(x: np.ndarray, scale_dtype: str) -> bool:
    """Every value survives the trip through the file's scale dtype."""
    if scale_dtype != "float16":
        return True
    with np.errstate(over="ignore"):
        return bool(np.array_equal(x.astype(np.float16).astype(np.float32), x.astype(np.float32)))


def outlier_candidates(w: np.ndarray, group_size: int, max_outliers: int) -> np.ndarray:
    """Rows whose values are unique in their (group, column) for most columns: off-grid FP rows.
    On-grid rows share a few levels with many others; a float16 outlier row almost never does."""
    k, n = w.shape
    blocks = group_view(w, group_size)                                   # [G, B, N]
    order = np.argsort(blocks, axis=1, kind="stable")
    s = np.take_along_axis(blocks, order, axis=1)
    same_prev = np.zeros(s.shape, bool)
    same_prev[:, 1:] = s[:, 1:] == s[:, :-1]
    shared = same_prev.copy()
    shared[:, :-1] |= same_prev[:, 1:]
    unique_sorted = ~shared
    unique = np.empty_like(unique_sorted)
    np.put_along_axis(unique, order, unique_sorted, axis=1)
    frac = unique.reshape(-1, n)[:k].mean(axis=1)
    rows = np.argsort(-frac, kind="stable")[:max_outliers]
    return np.sort(rows[frac[rows] > 0.5]).astype(np.int64)


def _ternary(w: np.ndarray, gs: int, mask: np.ndarray, scale_dtype: str):
    k, n = w.shape
    blocks = group_view(np.abs(w) * mask, gs)
    alpha = blocks.max(axis=1)                                           # [G, N]
    a = expand_groups(alpha.T, k, gs)                                    # [K, N]
    on = (np.abs(w) == a) | (w == 0)
    if not on[mask[:, 0]].all() or not _stored(alpha, scale_dtype):
        return None
    codes = (np.sign(w) * (np.abs(w) == a) * mask).astype(np.int8)
    return codes, alpha.T.astype(np.float32).copy(), None


def _bcq_candidates(levels: np.ndarray, bits: int) -> list[np.ndarray]:
    """Alphas that may produce the distinct |values| of one group: closed forms when the levels are
    all present (bits 1-3; for 3 bits each way of naming the three smaller levels), then the
    numpy quantizer's own fit."""
    d = np.sort(np.unique(levels))[::-1].astype(np.float32)
    out = []
    if bits == 1 and len(d) == 1:
        out.append(d[:1])
    elif bits == 2 and len(d) in (1, 2):
        out.append(np.array([(d[0] + d[-1]) / 2, (d[0] - d[-1]) / 2], np.float32))
    elif bits == 3 and len(d) == 4:
        for x, y in ((1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2)):
            a2, a1 = (d[0] - d[x]) / 2, (d[0] - d[y]) / 2
            out.append(np.array([d[0] - a1 - a2, a1, a2], np.float32))
    out.append(quantize_binary_code(levels[:, None] * np.sign(np.arange(len(levels)) % 2 - 0.5)[:, None],
                                    bits, None, 20).alphas[:, 0, 0])
    return out


def _bcq_closed_form(w: np.ndarray, gs: int, mask: np.ndarray, bits: int) -> np.ndarray:
    """Alphas [bits, N, G] for 1-2 bits from each group's largest and smallest |value| (all at once)."""
    a = np.abs(group_view(w, gs))                                        # [G, B, N]
    valid = group_view(mask.astype(np.float32), gs) > 0                   # [G, B, 1]
    big = np.where(valid, a, -np.inf).max(axis=1)
    small = np.where(valid, a, np.inf).min(axis=1)
    big, small = np.where(np.isfinite(big), big, 0), np.where(np.isfinite(small), small, 0)
    if bits == 1:
        return big.T[None].astype(np.float32)
    return np.stack([((big + small) / 2).T, ((big - small) / 2).T]).astype(np.float32)


def _bcq(w: np.ndarray, gs: int, mask: np.ndarray, bits: int, scale_dtype: str):
    k, n = w.shape
    g = -(-k // gs)
    rows = np.nonzero(mask[:, 0])[0]
    rows_of = np.arange(k) // gs

    def check(alphas):                                                   # [G, N]: group reproduced exactly
        planes = nearest_combination(w, np.transpose(alphas[:, :, rows_of], (0, 2, 1))).astype(np.int8)
        same = (bcq_dequantize(planes, alphas, gs) == w) | ~mask
        return planes, group_view(same.astype(np.float32), gs).min(axis=1) > 0

    alphas = _bcq_closed_form(w, gs, mask, bits) if bits <= 2 else np.zeros((bits, n, g), np.float32)
    if scale_dtype == "float16":
        alphas = alphas.astype(np.float16).astype(np.float32)
    _, ok = check(alphas)
    for gi, col in zip(*np.nonzero(~ok)):                                # the rest, one group at a time
        r = rows[(rows >= gi * gs) & (rows < (gi + 1) * gs)]
        if len(r) == 0:
            continue
        x = w[r, col]
        for a in _bcq_candidates(np.abs(x), bits):
            if scale_dtype == "float16":
                a = a.astype(np.float16).astype(np.float32)
            signs = nearest_combination(x, a[:, None])
            if np.array_equal((signs * a[:, None]).astype(np.float32).sum(axis=0, dtype=np.float32), x):
                alphas[:, col, gi] = a
                break
        else:
            return None
    planes, ok = check(alphas)
    if not ok.all():
        return None
    return planes, alphas, None


def _int4(w: np.ndarray, gs: int, mask: np.ndarray, symmetric: bool, scale_dtype: str):
    k, n = w.shape
    lo, hi = (-8, 7) if symmetric else (0, 15)
    blocks = group_view(w, gs)                                           # [G, B, N]
    valid = group_view(mask.astype(np.float32), gs)[..., :1] > 0         # [G, B, 1]
    valid = np.broadcast_to(valid, blocks.shape)
    absb = np.where(valid & (blocks != 0), np.abs(blocks), np.inf)
    smallest = absb.min(axis=1)                                          # [G, N]: m * scale, m >= 1
    smallest = np.where(np.isfinite(smallest), smallest, 1.0).astype(np.float32)
    done = np.zeros(smallest.shape, bool)
    scale, zp, steps = np.ones_like(smallest), np.zeros_like(smallest), np.zeros_like(blocks)
    signs = (1, -1) if symmetric else (1,)                               # symmetric full range: a scale may be < 0
    for m, sign in ((m, sign) for m in range(1, hi - lo + 1) for sign in signs):   # smallest level: usually +-1
        s_m = (sign * smallest / np.float32(m)).astype(np.float32)
        st = np.rint(blocks / s_m[:, None, :])
        kmin = np.where(valid, st, np.inf).min(axis=1)
        kmax = np.where(valid, st, -np.inf).max(axis=1)
        z = np.zeros_like(s_m) if symmetric else np.clip(-kmin, 0, hi)
        fits = (kmin + z >= lo) & (kmax + z <= hi)
        exact = np.where(valid, (st * s_m[:, None, :]).astype(np.float32) == blocks, True).all(axis=1)
        new = fits & exact & ~done
        scale, zp = np.where(new, s_m, scale), np.where(new, z, zp)
        steps = np.where(new[:, None, :], st, steps)
        done |= new
        if done.all():
            break
    if not done.all() or not _stored(scale, scale_dtype):
        return None
    codes = (steps + zp[:, None, :]).reshape(-1, n)[:k]
    codes = np.where(mask, codes, zp[np.arange(k) // gs] if not symmetric else 0)
    dtype = np.int8 if symmetric else np.uint8
    return codes.astype(dtype), scale.T.copy(), None if symmetric else zp.T.astype(np.uint8).copy()


def find_on_grid(w: np.ndarray, fmt: str, bits: int | None = None, group_size: int | None = None,
                 scale_dtype: str = "float16", symmetric: bool = False, max_outliers: int = 8,
                 outliers: np.ndarray | None = None) -> RecoveredWeight | None:
    """Codes and scales that reproduce `w` [K, N] exactly (outlier rows in float16), or None.
    `outliers` names the float16 rows when they are known; otherwise they are looked for."""
    if fmt not in ON_GRID_FORMATS:
        return None
    w = np.asarray(w, np.float32)
    k, n = w.shape
    gs = resolve_group_size(k, group_size)
    bits = {"ternary": 2, "int4": 4}.get(fmt, int(bits or 2))
    if outliers is not None:
        tried = [np.asarray(outliers, np.int64)]
    else:
        levels = {"ternary": 3, "int4": 16}.get(fmt, 2 ** bits)
        if len(np.unique(w[:gs, 0])) > levels + max_outliers:           # off the grid: say so cheaply
            return None
        tried = [np.zeros(0, np.int64)]
        cands = outlier_candidates(w, gs, max_outliers) if max_outliers > 0 else tried[0]
        if len(cands):
            tried.append(cands)
    for outliers in tried:
        mask = np.ones((k, 1), bool)
        mask[outliers] = False
        w_in = np.where(mask, w, 0.0).astype(np.float32)
        if fmt == "ternary":
            got = _ternary(w_in, gs, mask, scale_dtype)
        elif fmt == "bcq":
            got = _bcq(w_in, gs, mask, bits, scale_dtype)
        else:
            got = _int4(w_in, gs, mask, symmetric, scale_dtype)
        if got is None or not _stored(w[outliers], "float16"):
            continue
        codes, scales, zps = got
        if fmt == "bcq":
            deq = bcq_dequantize(codes, scales, gs)
        elif fmt == "int4":
            zpe = 0.0 if zps is None else expand_groups(zps, k, gs).astype(np.float32)
            deq = ((codes.astype(np.float32) - zpe) * expand_groups(scales, k, gs)).astype(np.float32)
        else:
            deq = (codes.astype(np.float32) * expand_groups(scales, k, gs)).astype(np.float32)
        outlier_w = (w[outliers].astype(np.float64) - deq[outliers]).astype(np.float16)
        eff = deq.copy()
        eff[outliers] = w[outliers]
        if not np.array_equal(eff, w):
            continue
        return RecoveredWeight(fmt, bits, gs, codes, scales, zps, outliers, outlier_w, eff,
                               {"method": "on-grid", "n_outliers": int(len(outliers))})
    return None



def on_scheme_grid(w: np.ndarray, grids: list[tuple]) -> str | None:
    """The first of `grids` ((format, bits, group_size, scale_dtype, symmetric, max_outliers) each)
    that reproduces w [K, N] exactly, or None. A weight trained
    with the quantizer in the loop (qcompiler.qat) is on its scheme's grid; FP32 weights are not."""
    for fmt, bits, group, scale_dtype, symmetric, max_outliers in grids:
        if find_on_grid(w, fmt, bits, group, scale_dtype, symmetric, max_outliers) is not None:
            return fmt
    return None
