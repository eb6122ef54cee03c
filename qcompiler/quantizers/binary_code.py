"""Binary coding (BCQ, the extremely-low-bit / BiQGEMM format): W ~= sum_i alpha_i * b_i, b_i in {-1, +1}.

Greedy init (each plane is the sign of the residual, alpha its mean magnitude), then alternating
refinement: least-squares alphas given the planes, then the best planes given the alphas. Per output
channel or per group of K elements (conventions in ternary.py).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from qcompiler.quantizers.ternary import expand_groups, group_counts, group_view, resolve_group_size

__all__ = ["BinaryCodeWeight", "quantize_binary_code", "sign_combinations", "nearest_combination", "bcq_dequantize"]


@dataclasses.dataclass
class BinaryCodeWeight:
    planes: np.ndarray   # int8 [bits, K, N] of +-1
    alphas: np.ndarray   # float32 [bits, N, G]
    group_size: int      # K when per output channel

    @property
    def bits(self) -> int:
        return self.planes.shape[0]

    def dequantize(self) -> np.ndarray:
        return bcq_dequantize(self.planes, self.alphas, self.group_size)


def bcq_dequantize(planes: np.ndarray, alphas: np.ndarray, group_size: int) -> np.ndarray:
    k = planes.shape[1]
    out = np.zeros(planes.shape[1:], np.float32)
    for i in range(planes.shape[0]):            # the contract's order: plane 0 first, fp32
        out += planes[i].astype(np.float32) * expand_groups(alphas[i], k, group_size).astype(np.float32)
    return out


def sign_combinations(bits: int) -> np.ndarray:
    """All 2^bits sign vectors, [2^bits, bits] of +-1."""
    return np.array(list(itertools.product((-1.0, 1.0), repeat=bits)))


def nearest_combination(x: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Best signs for values x [..., N] given alphas [bits, ..., N] (broadcast): [bits, ..., N] of +-1.

    The 2^bits reachable values are sorted per channel and x is placed among their midpoints, so the
    work is 2^bits - 1 comparisons per element rather than a distance table.
    """
    bits = alphas.shape[0]
    combos = sign_combinations(bits)                                     # [C, bits]
    values = np.tensordot(combos, alphas, axes=(1, 0))                   # [C, ..., N]
    order = np.argsort(values, axis=0)
    sorted_vals = np.take_along_axis(values, order, axis=0)
    idx = np.zeros(np.broadcast_shapes(x.shape, values.shape[1:]), np.uint8)
    for j in range(len(combos) - 1):
        idx += x > 0.5 * (sorted_vals[j] + sorted_vals[j + 1])
    chosen = np.take_along_axis(order.astype(np.uint8), idx[None], axis=0)[0]   # combination index
    # itertools.product order: sign i of combination c is + when bit (bits - 1 - i) of c is set
    return np.stack([np.where((chosen >> (bits - 1 - i)) & 1, 1.0, -1.0) for i in range(bits)])


def _ls_alphas(blocks: np.ndarray, planes: np.ndarray, valid: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Least-squares alphas [bits, G, N] given planes [bits, G, B, N] (padding masked by valid [G, B])."""
    bits = planes.shape[0]
    p = planes * valid[None, :, :, None]
    gram = np.empty((blocks.shape[0], blocks.shape[2], bits, bits))     # [G, N, bits, bits]
    for i in range(bits):
        for j in range(i, bits):
            gram[:, :, i, j] = gram[:, :, j, i] = (p[i] * p[j]).sum(axis=1)
    rhs = np.stack([(p[i] * blocks).sum(axis=1) for i in range(bits)], axis=-1)
    ridge = 1e-9 * np.trace(gram, axis1=-2, axis2=-1)[..., None, None] / bits + 1e-30
    gram = gram + ridge * np.eye(bits)
    rhs = rhs + ridge[..., 0] * np.moveaxis(previous, 0, -1)             # singular planes keep their alpha
    return np.moveaxis(np.linalg.solve(gram, rhs[..., None])[..., 0], -1, 0)


def _normalize(planes: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make every alpha >= 0 (flip its plane) and order planes by decreasing alpha per channel/group."""
    flip = np.where(alphas < 0, -1.0, 1.0)
    planes = planes * flip[:, :, None, :]
    alphas = np.abs(alphas)
    order = np.argsort(-alphas, axis=0, kind="stable")
    alphas = np.take_along_axis(alphas, order, axis=0)
    planes = np.take_along_axis(planes, order[:, :, None, :], axis=0)
    return planes, alphas


def quantize_binary_code(w: np.ndarray, bits: int = 2, group_size: int | None = None,
                         iterations: int = 10, method: str = "alternating") -> BinaryCodeWeight:
    """Planes int8 [bits, K, N] and alphas float32 [bits, N, G].

    method "greedy" stops after the greedy init; "alternating" refines it for `iterations` rounds and
    keeps, per channel and group, the best of all rounds including the greedy one (never worse).
    """
    if not 1 <= bits <= 4:
        raise ValueError(f"binary codes take 1..4 bits, got {bits}")
    if method not in ("greedy", "alternating"):
        raise ValueError(f"unknown binary-code method {method!r} (greedy, alternating)")
    w = np.asarray(w, dtype=np.float32)
    k, n = w.shape
    gs = resolve_group_size(k, group_size)
    blocks = group_view(w, gs).astype(np.float64)                        # [G, B, N]
    g = blocks.shape[0]
    counts = group_counts(k, gs)
    valid = (np.arange(g * gs).reshape(g, gs) < k).astype(np.float64)    # [G, B]

    planes = np.empty((bits, *blocks.shape))
    alphas = np.empty((bits, g, n))
    resid = blocks.copy()
    for i in range(bits):
        planes[i] = np.where(resid >= 0, 1.0, -1.0)
        alphas[i] = np.abs(resid).sum(axis=1) / counts[:, None]          # padding is 0
        resid -= alphas[i][:, None, :] * planes[i]

    def error(pl, al):
        approx = sum(al[i][:, None, :] * pl[i] for i in range(bits))
        return (((blocks - approx) ** 2) * valid[:, :, None]).sum(axis=1)

    best_err = error(planes, alphas)
    best_planes, best_alphas = planes.copy(), alphas.copy()
    if method == "alternating":
        for _ in range(iterations):
            alphas = _ls_alphas(blocks, planes, valid, alphas)
            planes = nearest_combination(blocks, alphas[:, :, None, :])
            err = error(planes, alphas)
            better = err < best_err
            if not better.any() and np.allclose(err, best_err):
                break
            best_err = np.where(better, err, best_err)
            best_alphas = np.where(better[None], alphas, best_alphas)
            best_planes = np.where(better[None, :, None, :], planes, best_planes)
    best_planes, best_alphas = _normalize(best_planes, best_alphas)
    planes_out = best_planes.reshape(bits, g * gs, n)[:, :k].astype(np.int8)
    return BinaryCodeWeight(np.ascontiguousarray(planes_out),
                            np.ascontiguousarray(np.swapaxes(best_alphas, 1, 2)).astype(np.float32), gs)
