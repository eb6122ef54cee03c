"""Per-output-channel k-means codebooks (the k-means vs linear quantization study): W[k, n] = C[n, idx[k, n]].

One 1-D k-means per output channel, all channels at once: seeded k-means++ init, then Lloyd
iterations where the assignment is a comparison against the midpoints of the sorted centroids.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["CodebookWeight", "quantize_codebook", "assign_nearest", "kmeans_pp_init"]


@dataclasses.dataclass
class CodebookWeight:
    indices: np.ndarray    # uint8 [K, N]
    codebook: np.ndarray   # float32 [N, 2^bits], sorted ascending per channel

    @property
    def bits(self) -> int:
        return int(np.log2(self.codebook.shape[1]))

    def dequantize(self) -> np.ndarray:
        return np.take_along_axis(self.codebook.T, self.indices.astype(np.int64), axis=0).astype(np.float32)


def assign_nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid: x [..., N], centroids [N, C] sorted ascending -> uint8 [..., N]."""
    mids = 0.5 * (centroids[:, 1:] + centroids[:, :-1])                # [N, C-1]
    idx = np.zeros(x.shape, np.uint8)
    for j in range(mids.shape[1]):
        idx += x > mids[:, j]
    return idx


def kmeans_pp_init(w: np.ndarray, c: int, rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
    """k-means++ seeding for every column of w [K, N] at once -> centroids [N, C] (sorted)."""
    k, n = w.shape
    cols = np.arange(n)
    first = rng.integers(0, k, size=n)
    cents = [w[first, cols]]
    d2 = (w - cents[0]) ** 2
    for _ in range(1, c):
        p = d2 if weights is None else d2 * weights[:, None]
        cum = np.cumsum(p, axis=0)
        total = cum[-1]
        r = rng.random(n) * total
        pick = np.minimum((cum < r).sum(axis=0), k - 1)
        # a column with no spread left (fewer distinct values than C) just repeats a value
        pick = np.where(total > 0, pick, first)
        cents.append(w[pick, cols])
        d2 = np.minimum(d2, (w - cents[-1]) ** 2)
    return np.sort(np.stack(cents, axis=1), axis=1)


def _sse(w, idx, cents, weights):
    err = (w - np.take_along_axis(cents.T, idx.astype(np.int64), axis=0)) ** 2
    if weights is not None:
        err = err * weights[:, None]
    return err.sum(axis=0)


def quantize_codebook(w: np.ndarray, bits: int = 4, iterations: int = 8, seed: int = 0,
                      weights: np.ndarray | None = None, init: np.ndarray | None = None) -> CodebookWeight:
    """Indices uint8 [K, N] and codebook float32 [N, 2^bits].

    `weights` [K] (optional, >= 0) weights the input rows, e.g. by the Hessian diagonal; `init`
    [N, C] replaces the k-means++ seeding. The result is the best of the init and every Lloyd
    iteration per channel (never worse than its init).
    """
    if not 2 <= bits <= 4:
        raise ValueError(f"codebooks take 2..4 bits, got {bits}")
    w64 = np.asarray(w, dtype=np.float64)
    k, n = w64.shape
    c = 2 ** bits
    if weights is not None:
        weights = np.asarray(weights, np.float64)
    cents = kmeans_pp_init(w64, c, np.random.default_rng(seed), weights) if init is None \
        else np.sort(np.asarray(init, np.float64), axis=1)
    idx = assign_nearest(w64, cents)
    best_err = _sse(w64, idx, cents, weights)
    best_cents, best_idx = cents.copy(), idx.copy()
    flat = (idx.astype(np.int64) + c * np.arange(n)).ravel()           # row-major [K, N]
    wt = np.ones(k) if weights is None else weights
    wflat = np.broadcast_to(wt[:, None], (k, n)).ravel()
    for _ in range(iterations):
        sums = np.bincount(flat, weights=(w64 * wt[:, None]).ravel(), minlength=n * c).reshape(n, c)
        mass = np.bincount(flat, weights=wflat, minlength=n * c).reshape(n, c)
        cents = np.sort(np.where(mass > 0, sums / np.where(mass > 0, mass, 1.0), cents), axis=1)
        idx = assign_nearest(w64, cents)
        flat = (idx.astype(np.int64) + c * np.arange(n)).ravel()
        err = _sse(w64, idx, cents, weights)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_cents = np.where(better[:, None], cents, best_cents)
        best_idx = np.where(better[None, :], idx, best_idx)
        if not better.any():
            break
    return CodebookWeight(np.ascontiguousarray(best_idx), best_cents.astype(np.float32))
