"""Ternary weights (TWN / TernaryBERT): W ~= alpha * t with t in {-1, 0, +1}, alpha per channel or group.

Conventions (shared by binary_code, codebook and recovery): a weight is float32 [K, N] in MatMul
orientation; scales live per output channel n and per group of `group_size` consecutive K elements,
shape [N, G] with G = ceil(K / group_size); group_size None means one group per channel (G = 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "TernaryWeight", "resolve_group_size", "group_view", "group_counts", "expand_groups",
    "quantize_ternary", "quantize_ternary_rows", "TWN_DELTA_FACTOR",
]

TWN_DELTA_FACTOR = 0.7


def resolve_group_size(k: int, group_size: int | None) -> int:
    """None (or >= K) means per output channel: one group of K elements."""
    if group_size is None or group_size >= k:
        return max(k, 1)
    if group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")
    return int(group_size)


def group_view(w: np.ndarray, group_size: int) -> np.ndarray:
    """[K, N] -> [G, B, N], zero-padded along K (padding is never selected, see group_counts)."""
    k, n = w.shape
    g = -(-k // group_size)
    return np.pad(w, ((0, g * group_size - k), (0, 0))).reshape(g, group_size, n)


def group_counts(k: int, group_size: int) -> np.ndarray:
    """Number of real (non-padding) elements in each group, [G]."""
    g = -(-k // group_size)
    return np.minimum(group_size, k - np.arange(g) * group_size).astype(np.float64)


def expand_groups(scales: np.ndarray, k: int, group_size: int) -> np.ndarray:
    """Scales [..., N, G] -> per-element [..., K, N]."""
    rows = np.arange(k) // group_size
    return np.swapaxes(scales[..., rows], -1, -2)


@dataclasses.dataclass
class TernaryWeight:
    codes: np.ndarray     # int8 [K, N] in {-1, 0, +1}
    scales: np.ndarray    # float32 [N, G]
    group_size: int       # K when per output channel

    def dequantize(self) -> np.ndarray:
        k = self.codes.shape[0]
        return (self.codes.astype(np.float32) * expand_groups(self.scales, k, self.group_size)).astype(np.float32)


def _twn(blocks: np.ndarray, counts: np.ndarray, delta_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """TWN on [G, B, N]: delta = f * mean|w|, alpha = mean of |w| above delta. Returns (delta, alpha) [G, N]."""
    a = np.abs(blocks).astype(np.float64)
    delta = delta_factor * a.sum(axis=1) / counts[:, None]
    keep = a > delta[:, None, :]
    n_keep = keep.sum(axis=1)
    alpha = np.where(n_keep > 0, (a * keep).sum(axis=1) / np.maximum(n_keep, 1), 0.0)
    return delta, alpha


def _optimal(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Error-optimal threshold, exactly: over every support size m of the m largest |w| the best alpha
    is their mean and the error is sum w^2 - S_m^2 / m, so keep the m maximising S_m^2 / m.
    Returns (delta, alpha) [G, N] with delta halfway between the last kept and first dropped |w|."""
    a = -np.sort(-np.abs(blocks).astype(np.float64), axis=1)        # descending along B
    csum = np.cumsum(a, axis=1)
    m = np.arange(1, a.shape[1] + 1, dtype=np.float64)[None, :, None]
    gain = csum ** 2 / m
    best = np.argmax(gain, axis=1)                                   # [G, N]; padding zeros never win
    alpha = np.take_along_axis(csum, best[:, None, :], axis=1)[:, 0] / (best + 1)
    last = np.take_along_axis(a, best[:, None, :], axis=1)[:, 0]
    nxt = np.take_along_axis(a, np.minimum(best + 1, a.shape[1] - 1)[:, None, :], axis=1)[:, 0]
    nxt = np.where(best + 1 < a.shape[1], nxt, 0.0)
    delta = 0.5 * (last + nxt)
    return delta, alpha


def quantize_ternary(w: np.ndarray, group_size: int | None = None, method: str = "twn",
                     delta_factor: float = TWN_DELTA_FACTOR) -> TernaryWeight:
    """Ternary codes [K, N] and scales [N, G].

    method "twn": TWN's closed-form rule (delta = 0.7 mean|w|, alpha = mean |w| above delta).
    method "optimal": the threshold minimising ||w - alpha t||^2 per channel/group (exact search
    over all supports), with the optimal alpha for that support.
    """
    w = np.asarray(w, dtype=np.float32)
    k, n = w.shape
    gs = resolve_group_size(k, group_size)
    blocks = group_view(w, gs)
    if method == "twn":
        delta, alpha = _twn(blocks, group_counts(k, gs), delta_factor)
    elif method == "optimal":
        delta, alpha = _optimal(blocks)
    else:
        raise ValueError(f"unknown ternary method {method!r} (twn, optimal)")
    keep = np.abs(blocks) > delta[:, None, :]
    codes = (np.sign(blocks) * keep).astype(np.int8).reshape(-1, n)[:k]
    return TernaryWeight(np.ascontiguousarray(codes), alpha.T.astype(np.float32).copy(), gs)


def quantize_ternary_rows(table: np.ndarray, method: str = "twn",
                          delta_factor: float = TWN_DELTA_FACTOR) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise ternary for an embedding table [V, D]: codes int8 [V, D] and a scale per row, [V]."""
    t = quantize_ternary(np.asarray(table, np.float32).T, None, method, delta_factor)
    return np.ascontiguousarray(t.codes.T), t.scales[:, 0].copy()
