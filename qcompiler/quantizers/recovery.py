"""Calibrated recovery without training (GPTQ-style) for ternary, binary codes, k-means codebooks and int4.

Given W [K, N] and H = X^T X over calibration rows, codes are chosen one input row k at a time and
each row's rounding error is fed back into the rows not yet quantized through the Cholesky factor of
the damped inverse Hessian, so the layer OUTPUT error tr((W - Q)^T H (W - Q)) stays small.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qcompiler.quantizers.binary_code import bcq_dequantize, nearest_combination, quantize_binary_code
from qcompiler.quantizers.codebook import assign_nearest, quantize_codebook
from qcompiler.quantizers.ternary import expand_groups, quantize_ternary, resolve_group_size
from qcompiler.quantizers.uniform import quantize_blockwise

__all__ = ["FORMATS", "RecoveredWeight", "recover", "quantize_plain", "output_error", "too_few_rows",
           "shrinkage_for", "held_out_check"]

FORMATS = ("ternary", "bcq", "kmeans", "int4")
MIN_RECOVERY_ROWS = 128     # calibration rows (tokens) below which a Gram matrix is too noisy to recover on


def too_few_rows(rows: int | None, k: int) -> str | None:
    """Why `rows` calibration rows are too few for recovery of a linear with k input channels
    (None when they are enough, or unknown). Below max(MIN_RECOVERY_ROWS, k / 4) rows, error
    feedback fits the sample instead of the data (measured: ternary on a [B, K] input from 16
    synthesized rows, rel. error 0.66-0.70 against 0.44 for plain rounding)."""
    if rows is None:
        return None
    need = max(MIN_RECOVERY_ROWS, k // 4)
    return f"{rows} calibration rows < {need}" if rows < need else None


def shrinkage_for(rows: int | None, k: int, per_channel: float) -> float:
    """Shrinkage of a Gram towards its diagonal from the rows behind it: per_channel * k / rows,
    at most 1 (a k x k Gram estimated from few rows per channel is noise off the diagonal)."""
    if not rows or per_channel <= 0:
        return 0.0
    return float(min(1.0, per_channel * k / rows))


@dataclasses.dataclass
class RecoveredWeight:
    """Codes and scales in the conventions of the per-format quantizers, plus FP16 outlier rows.

    codes: ternary int8 [K, N] in {-1, 0, 1}; bcq int8 [bits, K, N] of +-1; kmeans uint8 [K, N];
    int4 uint8 [K, N] in [0, 15] with zero_points, or int8 in [-7, 7] when symmetric.
    scales: ternary [N, G]; bcq alphas [bits, N, G]; kmeans codebook [N, 2^bits]; int4 [N, G].
    Here X @ dequant(codes) + X[:, outlier_idx] @ outlier_w = X @ dequantized: outlier rows hold
    the code of 0 where the format has one (ternary, int4: outlier_w is then the whole row); for
    bcq / kmeans they hold the nearest code to 0 and outlier_w is the correction on top of it.
    The ai.qcompiler ops read the packed rows of outlier channels as zero, so their outlier
    weights must be the whole rows, `dequantized[outlier_idx]` (what replace_matmul writes).
    """

    fmt: str
    bits: int
    group_size: int
    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    outlier_idx: np.ndarray          # int64 [n_out]
    outlier_w: np.ndarray            # float16 [n_out, N]
    dequantized: np.ndarray          # float32 [K, N]
    info: dict = dataclasses.field(default_factory=dict)


def output_error(w: np.ndarray, q: np.ndarray, H: np.ndarray) -> float:
    """tr((W - Q)^T H (W - Q)): the summed squared output error over the calibration rows."""
    e = np.asarray(w, np.float64) - np.asarray(q, np.float64)
    return float(np.einsum("kn,kn->", e, H @ e))


def held_out_check(w: np.ndarray, recovered: np.ndarray, plain: np.ndarray, fit_gram: np.ndarray,
                   held_gram: np.ndarray) -> dict:
    """How recovery's output error on the fit split carries over to the held-out split, beside plain
    rounding's held-out error: {fit_output_rel_error, held_output_rel_error, plain_held_output_rel_error,
    carry_over (held / fit), worse_than_plain}. Errors are relative to the output energy of w."""
    def rel(q, H):
        return output_error(w, q, H) / max(output_error(w, np.zeros_like(w), H), 1e-30)

    fit, held, plain_held = rel(recovered, fit_gram), rel(recovered, held_gram), rel(plain, held_gram)
    return {"fit_output_rel_error": round(fit, 6), "held_output_rel_error": round(held, 6),
            "plain_held_output_rel_error": round(plain_held, 6),
            "carry_over": round(held / fit, 3) if fit > 0 else None, "worse_than_plain": bool(held > plain_held)}


# ----------------------------------------------------------------------------------------------
# Formats: fit the scales of one group, round one row, and the linear basis used by the refit
# ----------------------------------------------------------------------------------------------
class _Format:
    """Q[k, n] = sum_j theta[j, g(k), n] * basis_j[k, n]: linear in the scales given the codes."""

    bits: int
    per_channel_only = False

    def fit(self, wg: np.ndarray, hdiag: np.ndarray) -> dict: ...
    def round(self, x: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]: ...   # one row [N]
    def basis(self, codes: np.ndarray, params: list, group_of: np.ndarray) -> np.ndarray: ...  # [J, K, N]
    def theta(self, p: dict) -> np.ndarray: ...                              # [J, N]
    def with_theta(self, p: dict, theta: np.ndarray) -> dict: ...


class _Ternary(_Format):
    bits = 2

    def __init__(self, method: str = "twn"):
        self.method = method

    def fit(self, wg, hdiag):
        return {"alpha": quantize_ternary(wg, None, self.method).scales[:, 0].astype(np.float64)}

    def round(self, x, p):
        a = p["alpha"]
        code = np.sign(x) * (np.abs(x) > 0.5 * np.abs(a))
        return code.astype(np.int8), code * a

    def basis(self, codes, params, group_of):
        return codes[None].astype(np.float64)

    def theta(self, p):
        return p["alpha"][None]

    def with_theta(self, p, theta):
        return {"alpha": theta[0]}


class _BinaryCode(_Format):
    def __init__(self, bits: int = 2, iterations: int = 10):
        self.bits, self.iterations = bits, iterations

    def fit(self, wg, hdiag):
        b = quantize_binary_code(wg, self.bits, None, self.iterations)
        return {"alphas": b.alphas[:, :, 0].astype(np.float64)}

    def round(self, x, p):
        signs = nearest_combination(x, p["alphas"])
        return signs.astype(np.int8), (signs * p["alphas"]).sum(axis=0)

    def basis(self, codes, params, group_of):
        return codes.astype(np.float64)                                    # codes [bits, K, N]

    def theta(self, p):
        return p["alphas"]

    def with_theta(self, p, theta):
        return {"alphas": theta}


class _Codebook(_Format):
    per_channel_only = True

    def __init__(self, bits: int = 4, iterations: int = 8, seed: int = 0, weighted: bool = True):
        self.bits, self.iterations, self.seed, self.weighted = bits, iterations, seed, weighted

    def fit(self, wg, hdiag):
        cb = quantize_codebook(wg, self.bits, self.iterations, self.seed, hdiag if self.weighted else None)
        return {"codebook": cb.codebook.astype(np.float64)}

    def round(self, x, p):
        cb = p["codebook"]                                                 # may be unsorted after a refit
        order = np.argsort(cb, axis=1)
        cols = np.arange(cb.shape[0])
        idx = order[cols, assign_nearest(x, np.take_along_axis(cb, order, axis=1))]
        return idx.astype(np.uint8), cb[cols, idx]

    def basis(self, codes, params, group_of):
        c = params[0]["codebook"].shape[1]
        return (codes[None] == np.arange(c)[:, None, None]).astype(np.float64)

    def theta(self, p):
        return p["codebook"].T

    def with_theta(self, p, theta):
        return {"codebook": theta.T}


class _Int4(_Format):
    bits = 4

    def __init__(self, symmetric: bool = False, search_clip: bool = True):
        self.symmetric, self.search_clip = symmetric, search_clip

    def fit(self, wg, hdiag):
        q = quantize_blockwise(wg, 4, wg.shape[0], self.symmetric, self.search_clip)
        zp = np.zeros(wg.shape[1]) if q.zero_points is None else q.zero_points[:, 0].astype(np.float64)
        return {"scale": q.scales[:, 0].astype(np.float64), "zp": zp}

    def round(self, x, p):
        lo, hi = (-7, 7) if self.symmetric else (0, 15)
        q = np.clip(np.rint(x / p["scale"]) + p["zp"], lo, hi)
        return q.astype(np.int8 if self.symmetric else np.uint8), (q - p["zp"]) * p["scale"]

    def basis(self, codes, params, group_of):
        zp = np.stack([p["zp"] for p in params], axis=0)[group_of]         # [K, N]
        return (codes.astype(np.float64) - zp)[None]

    def theta(self, p):
        return p["scale"][None]

    def with_theta(self, p, theta):
        return {"scale": theta[0], "zp": p["zp"]}


def _make_format(fmt: str, bits: int | None, settings: dict) -> _Format:
    if fmt == "ternary":
        return _Ternary(settings.pop("ternary_method", "twn"))
    if fmt == "bcq":
        return _BinaryCode(bits or 2, settings.pop("iterations", 10))
    if fmt == "kmeans":
        return _Codebook(bits or 4, settings.pop("iterations", 8), settings.pop("seed", 0),
                         settings.pop("weighted", True))
    if fmt == "int4":
        if bits not in (None, 4):
            raise ValueError("int4 takes bits=4")
        return _Int4(settings.pop("symmetric", False), settings.pop("search_clip", True))
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------------------------
# Assembling results
# ----------------------------------------------------------------------------------------------
def _assemble(fmt, f, k, n, gs, codes, params, outlier_idx, outlier_rows, info) -> RecoveredWeight:
    """codes in original row order; params[g] per group; outlier_rows float64 [n_out, N] target rows."""
    if fmt == "kmeans":
        scales = params[0]["codebook"].astype(np.float32)
        deq = np.take_along_axis(scales.T, codes.astype(np.int64), axis=0).astype(np.float32)
        zps = None
    elif fmt == "bcq":
        scales = np.stack([p["alphas"] for p in params], axis=-1).astype(np.float32)   # [bits, N, G]
        deq = bcq_dequantize(codes, scales, gs)
        zps = None
    else:
        key = "alpha" if fmt == "ternary" else "scale"
        scales = np.stack([p[key] for p in params], axis=-1).astype(np.float32)        # [N, G]
        zps = None
        if fmt == "int4" and not f.symmetric:
            zps = np.stack([p["zp"] for p in params], axis=-1).astype(np.uint8)
            deq = (codes.astype(np.float32) - expand_groups(zps, k, gs).astype(np.float32)) \
                * expand_groups(scales, k, gs)
        else:
            deq = codes.astype(np.float32) * expand_groups(scales, k, gs)
    deq = deq.astype(np.float32)
    outlier_idx = np.asarray(outlier_idx, np.int64)
    outlier_w = (np.asarray(outlier_rows, np.float64) - deq[outlier_idx]).astype(np.float16)
    eff = deq.copy()
    eff[outlier_idx] += outlier_w.astype(np.float32)
    return RecoveredWeight(fmt, f.bits, gs, codes, scales, zps, outlier_idx, outlier_w, eff, info)


PLAIN_SLICE = 256   # output channels per slice of the plain quantizers


def _concat_columns(parts: list[RecoveredWeight]) -> RecoveredWeight:
    """Join RecoveredWeights of consecutive output-channel slices (no outliers) into one."""
    first = parts[0]
    code_axis = -1                                          # [K, N] or [bits, K, N]
    scale_axis = 1 if first.fmt == "bcq" else 0             # [bits, N, G] or [N, G] / [N, 2^b]
    cat = lambda name, axis: np.concatenate([getattr(p, name) for p in parts], axis=axis)  # noqa: E731
    return RecoveredWeight(
        first.fmt, first.bits, first.group_size, cat("codes", code_axis), cat("scales", scale_axis),
        None if first.zero_points is None else cat("zero_points", 0), first.outlier_idx,
        cat("outlier_w", 1), cat("dequantized", 1), dict(first.info))


def quantize_plain(w: np.ndarray, fmt: str, bits: int | None = None, group_size: int | None = None,
                   **settings) -> RecoveredWeight:
    """The plain (no calibration) quantizer of each format, in RecoveredWeight form, as a baseline.

    Output channels are independent in every format, so wide weights are quantized PLAIN_SLICE
    columns at a time: the quantizers' temporaries then stay a slice's worth (a 4096x4096 bcq2
    weight: 1.6 GB -> ~0.1 GB peak) instead of growing with N.
    """
    w = np.asarray(w, np.float32)
    k, n = w.shape
    if n > PLAIN_SLICE and fmt != "int4":
        parts = [quantize_plain(w[:, s:s + PLAIN_SLICE], fmt, bits, group_size, **settings)
                 for s in range(0, n, PLAIN_SLICE)]
        return _concat_columns(parts)
    settings = dict(settings)
    f = _make_format(fmt, bits, settings)
    if f.per_channel_only:
        group_size = None
    gs = resolve_group_size(k, group_size)
    if fmt == "ternary":
        t = quantize_ternary(w, gs, f.method)
        codes, params = t.codes, [{"alpha": t.scales[:, g]} for g in range(t.scales.shape[1])]
    elif fmt == "bcq":
        b = quantize_binary_code(w, f.bits, gs, f.iterations)
        codes, params = b.planes, [{"alphas": b.alphas[:, :, g]} for g in range(b.alphas.shape[2])]
    elif fmt == "kmeans":
        c = quantize_codebook(w, f.bits, f.iterations, f.seed)
        codes, params = c.indices, [{"codebook": c.codebook}]
    else:
        q = quantize_blockwise(w, 4, gs, f.symmetric, f.search_clip)
        codes = q.codes
        zp = q.zero_points if q.zero_points is not None else np.zeros_like(q.scales)
        params = [{"scale": q.scales[:, g], "zp": zp[:, g]} for g in range(q.scales.shape[1])]
    return _assemble(fmt, f, k, n, gs, codes, params, np.zeros(0, np.int64), np.zeros((0, n)), {"method": "plain"})


# ----------------------------------------------------------------------------------------------
# GPTQ
# ----------------------------------------------------------------------------------------------
def _damped(H: np.ndarray, damp: float, shrink: float = 0.0) -> np.ndarray:
    H = np.array(H, dtype=np.float64, copy=True)
    d = np.diag(H).copy()
    if shrink > 0:       # (1 - s) H + s diag(H): off-diagonal terms shrunk towards 0
        H *= 1.0 - shrink
        H[np.diag_indices_from(H)] = d
    dead = d <= 0
    H[dead, dead] = 1.0
    mean = float(np.mean(np.diag(H)))
    H[np.diag_indices_from(H)] += damp * (mean if mean > 0 else 1.0)
    return H


def _refit(f: _Format, fmt: str, w: np.ndarray, Hd: np.ndarray, codes: np.ndarray, params: list,
           group_of: np.ndarray, rows: np.ndarray, outliers: np.ndarray) -> tuple[list, np.ndarray]:
    """Least-squares scales given the codes, minimising tr(E_R^T S E_R) with S the Schur complement of
    the outlier block (the outlier rows are re-solved optimally afterwards, so they are free here).
    Per channel, the refit is kept only where it lowers that error. Returns (params, per-channel gain)."""
    H_rr = Hd[np.ix_(rows, rows)]
    if len(outliers):
        H_ro = Hd[np.ix_(rows, outliers)]
        S = H_rr - H_ro @ np.linalg.solve(Hd[np.ix_(outliers, outliers)], H_ro.T)
    else:
        S = H_rr
    n = w.shape[1]
    G = len(params)
    basis = f.basis(codes, params, group_of)[:, rows]                          # [J, R, N]
    J = basis.shape[0]
    gr = group_of[rows]
    wr = w[rows].astype(np.float64)
    theta0 = np.stack([f.theta(p) for p in params], axis=1)            # [J, G, N]
    P = J * G
    M = np.zeros((n, P, P))
    Sw = S @ wr
    rhs = np.zeros((n, P))
    seg = [np.nonzero(gr == g)[0] for g in range(G)]
    for j in range(J):
        for h in range(G):
            Z = S[:, seg[h]] @ basis[j][seg[h]]                          # [R, N]
            for i in range(J):
                prod = basis[i] * Z
                for g in range(G):
                    M[:, i * G + g, j * G + h] = prod[seg[g]].sum(axis=0)
        for g in range(G):
            rhs[:, j * G + g] = (basis[j][seg[g]] * Sw[seg[g]]).sum(axis=0)
    t0 = theta0.reshape(P, n).T                                         # [N, P]
    lam = 1e-8 * np.trace(M, axis1=1, axis2=2) / P + 1e-30
    A = M + lam[:, None, None] * np.eye(P)
    t1 = np.linalg.solve(A, (rhs + lam[:, None] * t0)[..., None])[..., 0]

    def obj(t):   # per channel: t^T M t - 2 t^T rhs (+ const)
        return np.einsum("np,npq,nq->n", t, M, t) - 2 * np.einsum("np,np->n", t, rhs)

    gain = obj(t0) - obj(t1)
    keep = gain > 0
    t = np.where(keep[:, None], t1, t0).T.reshape(J, G, n)
    return [f.with_theta(params[g], t[:, g]) for g in range(G)], np.where(keep, gain, 0.0)


def recover(w: np.ndarray, H: np.ndarray, fmt: str, bits: int | None = None, group_size: int | None = None,
            n_outliers: int = 2, act_order: bool = True, refit: bool = True, damp: float = 0.01,
            block_size: int = 128, shrink: float = 0.0, **settings) -> RecoveredWeight:
    """GPTQ-style codes for `fmt` in ternary / bcq / kmeans / int4 that minimise the output error on H.

    Rows (input channels) are processed in decreasing diag(H) with `act_order`, else in order; the
    `n_outliers` rows with the largest diag(H) are kept in FP16 and processed last so they absorb the
    error of all the others. The scales of a group are fitted from its error-updated rows when its
    first row comes up. `refit` then re-solves the scales by least squares given the codes; it is
    applied only when there are outliers (without them one dominant channel makes it catastrophic).
    `shrink` in [0, 1] moves H towards its diagonal before damping (see shrinkage_for).
    Settings: ternary_method (twn|optimal), iterations, seed, weighted (kmeans), symmetric, search_clip (int4).
    """
    settings = dict(settings)
    w = np.asarray(w, np.float32)
    k, n = w.shape
    H = np.asarray(H, np.float64)
    if H.shape != (k, k):
        raise ValueError(f"H must be [{k}, {k}], got {list(H.shape)}")
    f = _make_format(fmt, bits, settings)
    if settings:
        raise TypeError(f"unknown settings for {fmt}: {', '.join(settings)}")
    if f.per_channel_only:
        group_size = None
    gs = resolve_group_size(k, group_size)
    G = -(-k // gs)
    group_of = np.arange(k) // gs

    diag = np.diag(H)
    n_out = int(min(max(n_outliers, 0), k - 1))
    outliers = np.sort(np.argsort(-diag, kind="stable")[:n_out]) if n_out else np.zeros(0, np.int64)
    is_out = np.zeros(k, bool)
    is_out[outliers] = True
    order = np.argsort(-diag, kind="stable") if act_order else np.arange(k)
    perm = np.concatenate([order[~is_out[order]], outliers]).astype(np.int64)
    pos_of = np.empty(k, np.int64)
    pos_of[perm] = np.arange(k)
    m = k - n_out                                                       # rows to quantize

    Hd = _damped(H, damp, shrink)
    Hp = Hd[np.ix_(perm, perm)]
    U = np.linalg.cholesky(np.linalg.inv(Hp)).T                         # Hp^-1 = U^T U, U upper
    W = w[perm].astype(np.float64)
    hdiag_p = np.diag(Hp)

    qcode_shape = (f.bits, k, n) if fmt == "bcq" else (k, n)
    codes = np.zeros(qcode_shape, np.int8 if fmt in ("ternary", "bcq") or (fmt == "int4" and f.symmetric) else np.uint8)
    params: list = [None] * G
    members = [np.nonzero((group_of == g) & ~is_out)[0] for g in range(G)]

    for start in range(0, m, block_size):
        end = min(start + block_size, m)
        err = np.zeros((end - start, n))
        for i in range(start, end):
            orig = perm[i]
            g = group_of[orig]
            if params[g] is None:
                rp = pos_of[members[g]]
                cur = W[rp].copy()
                far = rp >= end                                          # not yet given this block's updates
                if far.any() and i > start:
                    cur[far] -= U[start:i, rp[far]].T @ err[: i - start]
                params[g] = f.fit(cur.astype(np.float32), hdiag_p[rp])
            c, q = f.round(W[i], params[g])
            if fmt == "bcq":
                codes[:, orig] = c
            else:
                codes[orig] = c
            e = (W[i] - q) / U[i, i]
            err[i - start] = e
            W[i + 1:end] -= np.outer(U[i, i + 1:end], e)
        W[end:] -= U[start:end, end:].T @ err

    for g in range(G):                                                  # a group made only of outliers
        if params[g] is None:
            params[g] = f.fit(np.zeros((1, n), np.float32), np.ones(1))
    for o in outliers:                                                  # outlier rows: the code of ~0
        c, _ = f.round(np.zeros(n), params[group_of[o]])
        if fmt == "bcq":
            codes[:, o] = c
        else:
            codes[o] = c

    info = {"method": "gptq", "act_order": act_order, "n_outliers": n_out, "damp": damp, "shrink": round(shrink, 4),
            "refit": False}
    rows = np.nonzero(~is_out)[0]
    if refit and n_out > 0:
        params, gain = _refit(f, fmt, w, Hd, codes, params, group_of, rows, outliers)
        info["refit"] = True
        info["refit_channels_improved"] = int((gain > 0).sum())
    elif refit:
        info["refit_skipped"] = "no outlier channels"

    # outlier rows: the optimal FP rows given every quantized row, O_S = W_S + H_SS^-1 H_SR (W_R - Q_R)
    res = _assemble(fmt, f, k, n, gs, codes, params, outliers, np.zeros((n_out, n)), info)
    if n_out:
        q_r = res.dequantized[rows].astype(np.float64)
        rhs = Hd[np.ix_(outliers, rows)] @ (w[rows].astype(np.float64) - q_r)
        target = w[outliers].astype(np.float64) + np.linalg.solve(Hd[np.ix_(outliers, outliers)], rhs)
        res = _assemble(fmt, f, k, n, gs, codes, params, outliers, target, info)
    return res
