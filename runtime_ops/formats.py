"""The packed low-bit formats of the ``ai.qcompiler`` ops: one table (like ggml's type_traits).

Everything else (packers, numpy references, ONNX function bodies, kernel validation, the report's
bits per weight) reads ``OPS``. This docstring is the single written-down layout.

Domain ``ai.qcompiler``, opset version 1, attribute ``format_version`` = 1 (any other -> error).

Bitstream rule (all packed tensors)
    Each output channel n (each table row r for PackedGather) owns its own row of ceil(K*b/8) bytes.
    Element k occupies bits [k*b, k*b+b) of that row, LSB-first, bytes in increasing address (bit j
    of the row is bit j%8 of byte j//8). Elements may straddle bytes (b = 3). Trailing pad bits are 0.

Common MatMul inputs
    0 ``A`` float32 [..., K]; 1 packed weights uint8; 2 scales / alphas / codebook (float32 or
    float16, read as float32 exactly); 3 ``bias`` float32 [N]; 4 ``outlier_idx`` int64 [n_out]
    (indices into K, 0 <= idx < K); 5 ``outlier_w`` float16 [n_out, N].
    Y float32 [..., N] = A @ W + A[..., outlier_idx] @ outlier_w + bias. In a model all six
    inputs are required (validate_node): n_out may be 0, and a linear without a bias gets a zero
    bias. The function fallback cannot run a node with inputs left out (onnxruntime type-checks
    every body node on the missing input), so the native kernel refuses them too: a file runs or is
    refused alike with and without the library. The numpy reference takes None for inputs 3..5
    (no bias, no outliers). The packed weight
    rows of outlier channels are ignored: every implementation reads them as zero (the packers
    write zero codes where the format has one; binary codes have none).
    Attributes: K, N (required), group_size (G = ceil(K / group_size) scale groups per output
    channel; group_size == K means per output channel), format_version (1), accuracy_level
    (0 or 4), bits (BinaryCodeMatMul, CodebookMatMul; TernaryMatMul and Int4MatMul have none).

TernaryMatMul(A, W_packed uint8 [N, ceil(K/4)], scales [N, G], ...)
    b = 2 codes: 0b00 -> 0, 0b01 -> +1, 0b11 -> -1; 0b10 is never written by the packer and reads
    as 0 everywhere (reference, function body, kernels).
    W[k, n] = scales[n, k // group_size] * code[n, k].
BinaryCodeMatMul(A, W_packed uint8 [bits, N, ceil(K/8)], alphas [bits, N, G], ...), bits 1..4
    plane i, b = 1: bit 1 -> +1, bit 0 -> -1.
    W[k, n] = sum_{i = 0..bits-1, in this order, fp32} alphas[i, n, k // group_size] * s_i[n, k].
CodebookMatMul(A, indices uint8 [N, ceil(K*bits/8)], codebook [N, 2^bits], ...), bits 2..4
    W[k, n] = codebook[n, idx[n, k]]  (group_size is ignored: the codebook is per output channel).
Int4MatMul(A, W_packed uint8 [N, ceil(K/2)], scales [N, G], ..., zero_points uint8 [N, ceil(G/2)])
    b = 4 codes 0..15 and 4-bit zero points 0..15, one per (column, group), in the bitstream rule
    (blockwise int4 as MatMulNBits holds it; symmetric codes have zero points 8); a seventh input,
    required like the other six:
    W[k, n] = scales[n, g] * float32(code[n, k] - zero_points[n, g]), g = k // group_size.
PackedGather(table uint8 [total_bytes], row_offsets int64 [V+1], row_bits uint8 [V], scales [V, G],
             indices int32/int64 any shape) -> float32 [*indices.shape, D]
    Attributes D, group_size, format_version. Row r starts at byte row_offsets[r] (offsets
    non-decreasing, row_offsets[V] <= total_bytes, each row holds ceil(D*bits/8) bytes); its D
    elements are row_bits[r]-bit two's-complement integers (bits in {2, 4, 8}; 2-bit rows hold
    ternary values -1/0/+1) in the bitstream rule; out = value * scales[r, d // group_size].
    Indices follow Gather: -V <= i < V, negative means i + V; anything else is an error.

Numerics (the numpy reference is the spec)
    The reference accumulates in fp32 in a fixed order: y = 0; for k = 0..K-1: y = y + A[k]*W[k]
    (product rounded, then sum rounded, no FMA); then for each outlier j in order:
    y = y + A[idx_j] * float32(outlier_w[j]); then y = y + bias. The scalar native kernel at
    accuracy_level 0 follows this order and is bit-exact. PackedGather is exact everywhere.
    accuracy_level 0, other kernels (AVX2/NEON FMA, other summation order, fp32 tables of
    activation sums):
        |Y - Y_ref| <= 1e-4 * (|A| @ |W| + |A_out| @ |W_out|) + 2^-20 * (|A| @ Wtab)
                       + 2^-22 * |bias| + 1e-6,
    (the bias is added last, rounding at the output's magnitude: a sum within the bound can land
    one output ulp away), with Wtab as below: the tables add each activation's rounding error even where its own code
    is 0 (an activation 2^24 times larger than its neighbours in a 3-element table rounds them
    away), a term far below the first for any realistic activations.
    accuracy_level 4 (activations as int8: per-row int8 lookup tables of activation partial sums
    for ternary/binary codes; int8 activations and int8 per-channel centroids for codebooks):
        |Y - Y_ref| <= level-0 bound + (max_k |A[m,k]| * sum_k Wabs[k,n]
                                        + max_k Wtab[k,n] * sum_k |A[m,k]|) / 64
    where Wabs = |W| (ternary, codebook, int4) or sum_i |alphas[i]| (binary codes), and outlier
    channels are excluded from A in that term (they are computed in fp32). Wtab is what one table
    entry or int8 centroid is scaled by: |scales[n, k // group_size]| (ternary: codes 0 too), sum_i
    |alphas[i, n, k // group_size]| (binary codes), max_e |codebook[n, e]| (codebooks: the int8
    centroids are scaled by the row's largest, used or not), 15 |scales[n, k // group_size]| (int4:
    at least the group's largest weight; its codes are exact in int8, only the activations round).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

DOMAIN = "ai.qcompiler"
OPSET_VERSION = 1
FORMAT_VERSION = 1
STANDARD_OPSET = 21
ACCURACY_LEVELS = (0, 4)

__all__ = [
    "DOMAIN", "OPSET_VERSION", "FORMAT_VERSION", "STANDARD_OPSET", "ACCURACY_LEVELS", "OpFormat",
    "OPS", "MATMUL_OPS", "ContractError", "pack_bitstream", "unpack_bitstream", "num_groups",
    "pack_ternary", "unpack_ternary", "pack_binary_code", "unpack_binary_code", "pack_codebook",
    "unpack_codebook", "pack_int4", "unpack_int4", "pack_packed_gather", "unpack_packed_gather", "dequantize", "reference",
    "tolerance", "bits_per_weight", "validate",
]


class ContractError(ValueError):
    """Arrays that do not follow the ai.qcompiler contract (shapes, codes, versions)."""


# ----------------------------------------------------------------------------------------------
# Bitstream rule
# ----------------------------------------------------------------------------------------------
def row_bytes(num_elements: int, bits: int) -> int:
    return (num_elements * bits + 7) // 8


def num_groups(K: int, group_size: int) -> int:
    if group_size <= 0:
        raise ContractError(f"group_size must be positive, got {group_size}")
    return (K + group_size - 1) // group_size


def pack_bitstream(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned b-bit values [..., E] -> uint8 [..., ceil(E*b/8)], LSB-first per row."""
    values = np.asarray(values)
    if values.size and (values.min() < 0 or values.max() >= (1 << bits)):
        raise ContractError(f"values do not fit in {bits} unsigned bits")
    v = values.astype(np.uint32)
    lead, E = v.shape[:-1], v.shape[-1]
    planes = ((v[..., None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    flat = planes.reshape(*lead, E * bits)
    nbytes = row_bytes(E, bits)
    pad = nbytes * 8 - E * bits
    if pad:
        flat = np.concatenate([flat, np.zeros((*lead, pad), np.uint8)], axis=-1)
    return np.packbits(flat, axis=-1, bitorder="little")


def unpack_bitstream(packed: np.ndarray, bits: int, num_elements: int) -> np.ndarray:
    """uint8 [..., nbytes] -> unsigned values uint8 [..., num_elements]."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.shape[-1] < row_bytes(num_elements, bits):
        raise ContractError("packed row shorter than ceil(E*bits/8)")
    flat = np.unpackbits(packed, axis=-1, bitorder="little")[..., : num_elements * bits]
    flat = flat.reshape(*packed.shape[:-1], num_elements, bits).astype(np.uint32)
    return (flat << np.arange(bits, dtype=np.uint32)).sum(-1).astype(np.uint8)


def _scales_array(scales, name: str) -> np.ndarray:
    s = np.asarray(scales)
    if s.dtype not in (np.float32, np.float16):
        raise ContractError(f"{name} must be float32 or float16, got {s.dtype}")
    return s


# ----------------------------------------------------------------------------------------------
# Ternary
# ----------------------------------------------------------------------------------------------
_TERNARY_ENCODE = {0: 0b00, 1: 0b01, -1: 0b11}
_TERNARY_DECODE = np.array([0, 1, 0, -1], np.int8)  # 0b10 reads as 0


def pack_ternary(codes: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """codes int [N, K] in {-1, 0, +1}, scales [N, G] -> (W_packed uint8 [N, ceil(K/4)], scales)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ContractError("ternary codes must be [N, K]")
    if codes.size and not np.isin(codes, (-1, 0, 1)).all():
        raise ContractError("ternary codes must be -1, 0 or +1")
    raw = np.where(codes == 1, 0b01, np.where(codes == -1, 0b11, 0b00)).astype(np.uint8)
    return pack_bitstream(raw, 2), _scales_array(scales, "scales")


def unpack_ternary(W_packed: np.ndarray, K: int) -> np.ndarray:
    """W_packed uint8 [N, ceil(K/4)] -> codes int8 [N, K]."""
    return _TERNARY_DECODE[unpack_bitstream(W_packed, 2, K)]


# ----------------------------------------------------------------------------------------------
# Binary codes
# ----------------------------------------------------------------------------------------------
def pack_binary_code(signs: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """signs int [bits, N, K] in {-1, +1}, alphas [bits, N, G] -> (uint8 [bits, N, ceil(K/8)], alphas)."""
    signs = np.asarray(signs)
    if signs.ndim != 3 or not 1 <= signs.shape[0] <= 4:
        raise ContractError("binary-code signs must be [bits, N, K] with bits in 1..4")
    if signs.size and not np.isin(signs, (-1, 1)).all():
        raise ContractError("binary-code signs must be -1 or +1")
    return pack_bitstream((signs > 0).astype(np.uint8), 1), _scales_array(alphas, "alphas")


def unpack_binary_code(W_packed: np.ndarray, K: int) -> np.ndarray:
    """uint8 [bits, N, ceil(K/8)] -> signs int8 [bits, N, K]."""
    return unpack_bitstream(W_packed, 1, K).astype(np.int8) * 2 - 1


# ----------------------------------------------------------------------------------------------
# Codebook
# ----------------------------------------------------------------------------------------------
def pack_codebook(indices: np.ndarray, codebook: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """indices int [N, K] < 2^bits, codebook [N, 2^bits] -> (uint8 [N, ceil(K*bits/8)], codebook)."""
    if bits not in OPS["CodebookMatMul"].allowed_bits:
        raise ContractError(f"codebook bits must be 2..4, got {bits}")
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ContractError("codebook indices must be [N, K]")
    cb = _scales_array(codebook, "codebook")
    if cb.shape != (indices.shape[0], 1 << bits):
        raise ContractError(f"codebook must be [N, {1 << bits}], got {cb.shape}")
    return pack_bitstream(indices, bits), cb


def unpack_codebook(indices_packed: np.ndarray, K: int, bits: int) -> np.ndarray:
    return unpack_bitstream(indices_packed, bits, K)


# ----------------------------------------------------------------------------------------------
# Int4 (blockwise symmetric)
# ----------------------------------------------------------------------------------------------
def pack_int4(codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes [N, K] in 0..15, scales [N, G], zero points [N, G] in 0..15 (None: 8, symmetric)
    -> (W_packed uint8 [N, ceil(K/2)], scales, zero_points uint8 [N, ceil(G/2)])."""
    c = np.asarray(codes)
    if c.ndim != 2:
        raise ContractError("int4 codes must be [N, K]")
    s = _scales_array(scales, "scales")
    if s.ndim != 2 or s.shape[0] != c.shape[0]:
        raise ContractError(f"int4 scales must be [N, G] with N = {c.shape[0]}, got {s.shape}")
    z = np.full(s.shape, 8, np.int64) if zero_points is None else np.asarray(zero_points)
    if z.shape != s.shape:
        raise ContractError(f"int4 zero points must be [N, G] = {s.shape}, got {z.shape}")
    return pack_bitstream(c, 4), s, pack_bitstream(z, 4)


def unpack_int4(W_packed: np.ndarray, zero_points: np.ndarray, K: int, group_size: int) -> np.ndarray:
    """-> code - zero point, int8 [N, K]."""
    G = num_groups(K, group_size)
    z = unpack_bitstream(zero_points, 4, G).astype(np.int16)[:, np.arange(K) // group_size]
    return (unpack_bitstream(W_packed, 4, K).astype(np.int16) - z).astype(np.int8)


# ----------------------------------------------------------------------------------------------
# PackedGather
# ----------------------------------------------------------------------------------------------
def pack_packed_gather(values: np.ndarray, row_bits, scales: np.ndarray):
    """values int [V, D] (signed, fitting row_bits[r]; 2-bit rows in {-1,0,1}), row_bits [V],
    scales [V, G] -> (table uint8 [total], row_offsets int64 [V+1], row_bits uint8 [V], scales)."""
    values = np.asarray(values)
    V, D = values.shape
    row_bits = np.asarray(row_bits, dtype=np.uint8).reshape(V)
    if not np.isin(row_bits, (2, 4, 8)).all():
        raise ContractError("row_bits must be 2, 4 or 8")
    chunks, offsets = [], [0]
    for r in range(V):
        b = int(row_bits[r])
        lo, hi = (-1, 1) if b == 2 else (-(1 << (b - 1)), (1 << (b - 1)) - 1)
        row = values[r].astype(np.int64)
        if row.size and (row.min() < lo or row.max() > hi):
            raise ContractError(f"row {r} values do not fit {b}-bit")
        packed = pack_bitstream((row & ((1 << b) - 1))[None, :], b)[0]
        chunks.append(packed)
        offsets.append(offsets[-1] + packed.size)
    table = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return table.astype(np.uint8), np.array(offsets, np.int64), row_bits, _scales_array(scales, "scales")


def unpack_packed_gather(table, row_offsets, row_bits, D: int) -> np.ndarray:
    """-> signed values int32 [V, D]."""
    V = len(row_bits)
    out = np.zeros((V, D), np.int32)
    for r in range(V):
        b = int(row_bits[r])
        raw = unpack_bitstream(table[row_offsets[r]: row_offsets[r] + row_bytes(D, b)][None], b, D)[0]
        v = raw.astype(np.int32)
        out[r] = np.where(v >= (1 << (b - 1)), v - (1 << b), v)
    return out


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OpFormat:
    """One row of the contract table: everything that is specific to one op's packed format."""

    op_type: str
    inputs: tuple[str, ...]
    optional_from: int  # inputs at and after this index are optional for the native kernel
    attributes: tuple[str, ...]
    allowed_bits: tuple[int, ...]  # values of the `bits` attribute (or of row_bits)
    code_bits: Callable[[int], int]  # bits of one element in the bitstream, given `bits`
    element_meaning: str
    packed_shape: Callable[..., tuple[int, ...]]  # (K, N, bits) -> shape of input 1
    scale_shape: Callable[..., tuple[int, ...]]  # (K, N, bits, group_size) -> shape of input 2
    scale_dtypes: tuple[str, ...] = ("float32", "float16")
    epsilon_level0: float = 1e-4
    level4_divisor: float = 64.0


OPS: dict[str, OpFormat] = {
    "TernaryMatMul": OpFormat(
        op_type="TernaryMatMul",
        inputs=("A", "W_packed", "scales", "bias", "outlier_idx", "outlier_w"),
        optional_from=3,
        attributes=("K", "N", "group_size", "format_version", "accuracy_level"),
        allowed_bits=(2,),
        code_bits=lambda bits: 2,
        element_meaning="2-bit code 00->0, 01->+1, 11->-1 (10 reads 0) times scales[n, k//group_size]",
        packed_shape=lambda K, N, bits=2: (N, row_bytes(K, 2)),
        scale_shape=lambda K, N, bits, group_size: (N, num_groups(K, group_size)),
    ),
    "BinaryCodeMatMul": OpFormat(
        op_type="BinaryCodeMatMul",
        inputs=("A", "W_packed", "alphas", "bias", "outlier_idx", "outlier_w"),
        optional_from=3,
        attributes=("K", "N", "group_size", "bits", "format_version", "accuracy_level"),
        allowed_bits=(1, 2, 3, 4),
        code_bits=lambda bits: 1,
        element_meaning="per plane i: bit 1 -> +1, 0 -> -1; W = sum_i alphas[i, n, k//group_size] * s_i",
        packed_shape=lambda K, N, bits: (bits, N, row_bytes(K, 1)),
        scale_shape=lambda K, N, bits, group_size: (bits, N, num_groups(K, group_size)),
    ),
    "CodebookMatMul": OpFormat(
        op_type="CodebookMatMul",
        inputs=("A", "indices", "codebook", "bias", "outlier_idx", "outlier_w"),
        optional_from=3,
        attributes=("K", "N", "group_size", "bits", "format_version", "accuracy_level"),
        allowed_bits=(2, 3, 4),
        code_bits=lambda bits: bits,
        element_meaning="bits-bit index into the row's codebook: W[k, n] = codebook[n, idx]",
        packed_shape=lambda K, N, bits: (N, row_bytes(K, bits)),
        scale_shape=lambda K, N, bits, group_size: (N, 1 << bits),
    ),
    "Int4MatMul": OpFormat(
        op_type="Int4MatMul",
        inputs=("A", "W_packed", "scales", "bias", "outlier_idx", "outlier_w", "zero_points"),
        optional_from=3,
        attributes=("K", "N", "group_size", "format_version", "accuracy_level"),
        allowed_bits=(4,),
        code_bits=lambda bits: 4,
        element_meaning="4-bit code c, 4-bit zero point z per group: W = scales[n, k//group_size] * (c - z)",
        packed_shape=lambda K, N, bits=4: (N, row_bytes(K, 4)),
        scale_shape=lambda K, N, bits, group_size: (N, num_groups(K, group_size)),
    ),
    "PackedGather": OpFormat(
        op_type="PackedGather",
        inputs=("table", "row_offsets", "row_bits", "scales", "indices"),
        optional_from=5,
        attributes=("D", "group_size", "format_version"),
        allowed_bits=(2, 4, 8),
        code_bits=lambda bits: bits,
        element_meaning="row_bits-bit two's complement integer times scales[r, d//group_size]",
        packed_shape=lambda total_bytes: (total_bytes,),
        scale_shape=lambda V, D, group_size: (V, num_groups(D, group_size)),
        epsilon_level0=0.0,
        level4_divisor=float("inf"),
    ),
}
MATMUL_OPS = ("TernaryMatMul", "BinaryCodeMatMul", "CodebookMatMul", "Int4MatMul")
# the ops without a `bits` attribute: their fixed width
FIXED_BITS = {"TernaryMatMul": 2, "Int4MatMul": 4}


def _check_version(attrs: dict) -> None:
    v = int(attrs.get("format_version", FORMAT_VERSION))
    if v != FORMAT_VERSION:
        raise ContractError(f"unknown format_version {v} (this code reads {FORMAT_VERSION})")


# ----------------------------------------------------------------------------------------------
# Dequantization and the reference (the spec)
# ----------------------------------------------------------------------------------------------
def dequantize(op_type: str, packed: np.ndarray, scales: np.ndarray, *, K: int, N: int,
               group_size: int | None = None, bits: int | None = None, zero_points=None, **attrs) -> np.ndarray:
    """The weight W float32 [K, N] that a MatMul op multiplies by (fixed fp32 order)."""
    _check_version(attrs)
    group_size = K if group_size is None else int(group_size)
    s = np.asarray(scales).astype(np.float32)
    fmt = OPS[op_type]
    expected = fmt.packed_shape(K, N, bits if bits is not None else FIXED_BITS.get(op_type, 2))
    if tuple(np.shape(packed)) != expected:
        raise ContractError(f"{op_type}: packed shape {np.shape(packed)} != {expected}")
    if tuple(s.shape) != fmt.scale_shape(K, N, bits, group_size):
        raise ContractError(f"{op_type}: scales shape {s.shape} != {fmt.scale_shape(K, N, bits, group_size)}")
    grp = np.arange(K) // group_size
    if op_type == "TernaryMatMul":
        codes = unpack_ternary(packed, K).astype(np.float32)  # [N, K]
        wt = s[:, grp] * codes
    elif op_type == "BinaryCodeMatMul":
        signs = unpack_binary_code(packed, K).astype(np.float32)  # [bits, N, K]
        wt = np.zeros((N, K), np.float32)
        for i in range(signs.shape[0]):
            wt = wt + s[i][:, grp] * signs[i]
    elif op_type == "CodebookMatMul":
        idx = unpack_codebook(packed, K, bits)
        wt = np.take_along_axis(s, idx.astype(np.int64), axis=1)
    elif op_type == "Int4MatMul":
        if tuple(np.shape(zero_points)) != (N, (num_groups(K, group_size) + 1) // 2):
            raise ContractError(f"Int4MatMul: zero_points shape {np.shape(zero_points)} != "
                                f"{(N, (num_groups(K, group_size) + 1) // 2)}")
        wt = s[:, grp] * unpack_int4(packed, zero_points, K, group_size).astype(np.float32)
    else:
        raise ContractError(f"{op_type} is not a MatMul op")
    return np.ascontiguousarray(wt.T.astype(np.float32))


def _matmul_reference(op_type, A, packed, scales, bias=None, outlier_idx=None, outlier_w=None, zero_points=None,
                      **attrs):
    K, N = int(attrs["K"]), int(attrs["N"])
    A = np.asarray(A, np.float32)
    if A.shape[-1] != K:
        raise ContractError(f"A's last dim {A.shape[-1]} != K={K}")
    W = dequantize(op_type, packed, scales, zero_points=zero_points, **attrs)
    if outlier_idx is not None and len(outlier_idx):
        W[np.asarray(outlier_idx, np.int64)] = 0.0  # outlier rows of the packed weights are ignored
    a2 = A.reshape(int(np.prod(A.shape[:-1])), K)
    y = np.zeros((a2.shape[0], N), np.float32)
    for k in range(K):  # fixed order: the scalar kernel does the same, bit for bit
        y = y + a2[:, k:k + 1] * W[k][None, :]
    if outlier_idx is not None and len(outlier_idx):
        wo = np.asarray(outlier_w).astype(np.float32)
        for j, kk in enumerate(np.asarray(outlier_idx, np.int64)):
            y = y + a2[:, kk:kk + 1] * wo[j][None, :]
    if bias is not None:
        y = y + np.asarray(bias, np.float32)[None, :]
    return y.reshape(*A.shape[:-1], N)


def _packed_gather_reference(table, row_offsets, row_bits, scales, indices, *, D, group_size=None, **attrs):
    _check_version(attrs)
    D = int(D)
    group_size = D if group_size is None else int(group_size)
    row_offsets = np.asarray(row_offsets, np.int64)
    V = len(row_bits)
    idx = np.asarray(indices).astype(np.int64)
    if idx.size and (idx.min() < -V or idx.max() >= V):
        raise ContractError("PackedGather index out of range")
    idx = np.where(idx < 0, idx + V, idx)
    vals = unpack_packed_gather(np.asarray(table, np.uint8), row_offsets, row_bits, D).astype(np.float32)
    s = np.asarray(scales).astype(np.float32)[:, np.arange(D) // group_size]
    rows = vals * s
    return rows[idx.reshape(-1)].reshape(*idx.shape, D)


MAX_DIM = 2**31  # K, N, D beyond this are refused (the native kernels index in int)


def _expect(op_type: str, what: str, x, dtypes: tuple, shape: tuple | None) -> None:
    if np.asarray(x).dtype not in [np.dtype(d) for d in dtypes]:
        raise ContractError(f"{op_type}: {what} must be {' or '.join(map(str, dtypes))}, got {np.asarray(x).dtype}")
    if shape is not None and tuple(np.shape(x)) != tuple(shape):
        raise ContractError(f"{op_type}: {what} has shape {np.shape(x)}, expected {tuple(shape)}")


def validate(op_type: str, inputs: list, attrs: dict) -> None:
    """The contract's checks, as the native library (csrc/ops/validate.cc) and the function bodies
    make them: inputs in the op's order (None: absent), attrs as on the node (absent: not a key)."""
    if op_type not in OPS:
        raise ContractError(f"unknown op {op_type}")
    _check_version(attrs)
    get = {k: (None if v is None else int(v)) for k, v in attrs.items()}.get
    if op_type == "PackedGather":
        table, offsets, row_bits, scales, indices = (list(inputs) + [None] * 5)[:5]
        D = get("D")
        if D is None or not 1 <= D <= MAX_DIM:
            raise ContractError(f"PackedGather: D must be in 1..2^31, got {D}")
        gs = D if get("group_size") is None else get("group_size")
        G = num_groups(D, gs)
        _expect(op_type, "table", table, ("uint8",), None)
        _expect(op_type, "row_bits", row_bits, ("uint8",), None)
        if np.ndim(table) != 1 or np.ndim(row_bits) != 1 or np.size(row_bits) < 1:
            raise ContractError("PackedGather: table and row_bits must be 1-D, with at least one row")
        V = int(np.size(row_bits))
        _expect(op_type, "row_offsets", offsets, ("int64",), (V + 1,))
        _expect(op_type, "scales", scales, ("float32", "float16"), (V, G))
        _expect(op_type, "indices", indices, ("int32", "int64"), None)
        rb = np.asarray(row_bits).astype(np.int64)
        off = np.asarray(offsets)
        total = int(np.size(table))
        if not np.isin(rb, (2, 4, 8)).all():
            raise ContractError("PackedGather: row_bits values must be 2, 4 or 8")
        if (off < 0).any() or (off > total).any() or (np.diff(off) < 0).any():
            raise ContractError("PackedGather: row_offsets must be non-decreasing within [0, table size]")
        if ((D * rb + 7) // 8 > total - off[:-1]).any():
            raise ContractError("PackedGather: a row extends past the end of the table")
        idx = np.asarray(indices).astype(np.int64)
        if idx.size and (idx.min() < -V or idx.max() >= V):
            raise ContractError("PackedGather index out of range")
        return
    A, packed, scales, bias, outlier_idx, outlier_w, zero_points = (list(inputs) + [None] * 7)[:7]
    K, N = get("K"), get("N")
    if K is None or N is None or not (1 <= K <= MAX_DIM and 1 <= N <= MAX_DIM):
        raise ContractError(f"{op_type}: K and N must be in 1..2^31, got K={K}, N={N}")
    level = get("accuracy_level") or 0
    if level not in ACCURACY_LEVELS:
        raise ContractError(f"{op_type}: accuracy_level must be 0 or 4, got {level}")
    gs = K if get("group_size") is None else get("group_size")
    G = num_groups(K, gs)
    bits = FIXED_BITS[op_type] if op_type in FIXED_BITS else get("bits")
    if bits not in OPS[op_type].allowed_bits:
        raise ContractError(f"{op_type}: bits must be one of {OPS[op_type].allowed_bits}, got {bits}")
    _expect(op_type, "A", A, ("float32",), None)
    if np.ndim(A) < 1 or np.shape(A)[-1] != K:
        raise ContractError(f"{op_type}: A has shape {np.shape(A)} but K={K}")
    _expect(op_type, "packed weights", packed, ("uint8",), OPS[op_type].packed_shape(K, N, bits))
    _expect(op_type, "scales", scales, ("float32", "float16"), OPS[op_type].scale_shape(K, N, bits, gs))
    if bias is not None:
        _expect(op_type, "bias", bias, ("float32",), (N,))
    if op_type == "Int4MatMul":
        if zero_points is None:
            raise ContractError("Int4MatMul: zero_points (input 6) is required (all 8 for symmetric codes)")
        _expect(op_type, "zero_points", zero_points, ("uint8",), (N, (G + 1) // 2))
    if (outlier_idx is None) != (outlier_w is None):
        raise ContractError(f"{op_type}: outlier_idx and outlier_w must be given together")
    if outlier_idx is not None:
        _expect(op_type, "outlier_idx", outlier_idx, ("int64",), None)
        if np.ndim(outlier_idx) != 1:
            raise ContractError(f"{op_type}: outlier_idx must be 1-D")
        _expect(op_type, "outlier_w", outlier_w, ("float16",), (np.size(outlier_idx), N))
        oi = np.asarray(outlier_idx)
        if oi.size and (oi.min() < 0 or oi.max() >= K):
            raise ContractError(f"{op_type}: outlier_idx outside [0, K={K})")


def validate_node(op_type: str, input_names) -> None:
    """The node-level rule of a model file: a MatMul op lists all six inputs, none left empty
    (PackedGather's inputs are all required and checked by validate()). Raises ContractError."""
    names = list(input_names)
    if op_type in MATMUL_OPS and (len(names) != len(OPS[op_type].inputs) or not all(names)):
        raise ContractError(f"{op_type}: a node lists all {len(OPS[op_type].inputs)} inputs {', '.join(OPS[op_type].inputs)} "
                            f"(a zero bias and an empty outlier pair where there are none), got {names}")


def reference(op_type: str, *inputs, **attrs) -> np.ndarray:
    """The numpy reference (the spec) of an op: inputs in the op's order, attributes as kwargs.
    Refuses (ContractError) what the contract refuses: see validate()."""
    validate(op_type, list(inputs), {k: v for k, v in attrs.items() if v is not None})
    if op_type in MATMUL_OPS:
        with np.errstate(invalid="ignore", over="ignore"):   # NaN / Inf propagate: that is the spec
            return _matmul_reference(op_type, *inputs, **attrs)
    if op_type == "PackedGather":
        return _packed_gather_reference(*inputs, **attrs)
    raise ContractError(f"unknown op {op_type}")


def weight_abs(op_type: str, packed, scales, zero_points=None, **attrs) -> np.ndarray:
    """Wabs [K, N] of the accuracy_level 4 bound."""
    if op_type != "BinaryCodeMatMul":
        return np.abs(dequantize(op_type, packed, scales, zero_points=zero_points, **attrs))
    K, N = int(attrs["K"]), int(attrs["N"])
    gs = int(attrs.get("group_size") or K)
    s = np.abs(np.asarray(scales).astype(np.float32)).sum(0)  # [N, G]
    return np.ascontiguousarray(s[:, np.arange(K) // gs].T)


def _table_weight_abs(op_type: str, wabs: np.ndarray, scales, **attrs) -> np.ndarray:
    """[K, N]: the largest |weight| a table lookup of element k scales (the group's scale for
    ternary, sum_i |alpha_i| for binary codes, the row's largest centroid for codebooks)."""
    if op_type in ("TernaryMatMul", "Int4MatMul"):
        K = int(attrs["K"])
        gs = int(attrs.get("group_size") or K)
        s = np.abs(np.asarray(scales).astype(np.float32)) * (15.0 if op_type == "Int4MatMul" else 1.0)
        return np.ascontiguousarray(s[:, np.arange(K) // gs].T)
    if op_type == "CodebookMatMul":
        cmax = np.abs(np.asarray(scales).astype(np.float32)).max(1)
        return np.broadcast_to(cmax[None, :], wabs.shape)
    return wabs


def tolerance(op_type: str, A, packed, scales, outlier_idx=None, outlier_w=None, *,
              accuracy_level: int = 0, bias=None, zero_points=None, **attrs) -> np.ndarray:
    """The stated bound on |Y - reference| for a kernel that is not the scalar fp32 one. With a
    bias, + 2^-22 |bias|: it is added last and that add rounds at the output's magnitude, so a sum
    within the bound can still land one output ulp away (a fuzz finding: bias 4.7e8, bound 4.2)."""
    K = int(attrs["K"])
    lead = np.shape(A)[:-1]
    A = np.asarray(A, np.float32).reshape(int(np.prod(lead)), K)
    W = dequantize(op_type, packed, scales, zero_points=zero_points, **attrs)
    if outlier_idx is not None and len(outlier_idx):
        W[np.asarray(outlier_idx, np.int64)] = 0.0
    bound = np.abs(A) @ np.abs(W)
    if outlier_idx is not None and len(outlier_idx):
        bound = bound + np.abs(A[:, outlier_idx]) @ np.abs(np.asarray(outlier_w, np.float32))
    bound = OPS[op_type].epsilon_level0 * bound + 1e-6
    if bias is not None:
        bound = bound + 2.0**-22 * np.abs(np.asarray(bias, np.float32))[None, :]
    a = A.copy()
    if outlier_idx is not None and len(outlier_idx):
        a[:, outlier_idx] = 0
    wabs = weight_abs(op_type, packed, scales, zero_points=zero_points, **attrs)
    wtab = _table_weight_abs(op_type, wabs, scales, **attrs)
    if OPS[op_type].epsilon_level0:
        bound = bound + 2.0**-20 * (np.abs(A) @ wtab)
    if accuracy_level >= 4:
        amax = np.abs(a).max(1, keepdims=True, initial=0.0)
        bound = bound + (amax * wabs.sum(0)[None, :]
                         + np.abs(a).sum(1, keepdims=True) * wtab.max(0, initial=0)[None, :]) / OPS[op_type].level4_divisor
    return bound.reshape(*lead, bound.shape[-1])


def bits_per_weight(op_type: str, *, K: int, N: int, group_size: int | None = None, bits: int | None = None,
                    scale_bytes: int = 2, n_out: int = 0) -> float:
    """Stored bits per weight of one packed MatMul weight (the report's column)."""
    fmt = OPS[op_type]
    gs = K if group_size is None else group_size
    packed = int(np.prod(fmt.packed_shape(K, N, bits if bits is not None else FIXED_BITS.get(op_type, 2))))
    scales = int(np.prod(fmt.scale_shape(K, N, bits, gs)))
    total = packed * 8 + scales * scale_bytes * 8 + n_out * (N * 16 + 64)
    if op_type == "Int4MatMul":  # 4-bit zero points, rows of whole bytes
        total += N * ((num_groups(K, gs) + 1) // 2) * 8
    return total / (K * N)
