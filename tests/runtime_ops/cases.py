"""Deterministic test cases for the ai.qcompiler ops, shared by the tests and isa_runner.py."""

from __future__ import annotations

import dataclasses

import numpy as np

from qcompiler.ops import contract as C


@dataclasses.dataclass
class Case:
    name: str
    op: str
    inputs: dict  # op input name -> array (A included)
    attrs: dict

    def ordered(self):
        return [self.inputs.get(n) for n in C.OPS[self.op].inputs]

    def tolerance(self):
        """The contract's bound on |Y - reference| for this case's accuracy_level."""
        ins = self.ordered()
        return C.tolerance(self.op, ins[0], ins[1], ins[2], ins[4], ins[5], bias=ins[3],
                           zero_points=self.inputs.get("zero_points"), **self.attrs)

    def reference(self):
        attrs = {k: v for k, v in self.attrs.items() if k != "accuracy_level"}
        return C.reference(self.op, *self.ordered(), **attrs)

    def model(self, **kw):
        dyn = "indices" if self.op == "PackedGather" else "A"
        weights = {k: v for k, v in self.inputs.items() if k != dyn}
        extra = {}
        if self.op == "PackedGather":
            extra = {"indices_shape": list(self.inputs["indices"].shape), "indices_dtype": self.inputs["indices"].dtype}
        else:
            a = self.inputs["A"]
            extra = {"M": a.shape[-2] if a.ndim > 1 else 1, "batch": tuple(a.shape[:-2])}
        return C.make_model(self.op, weights, **extra, **self.attrs, **kw)

    def feed(self):
        key = "indices" if self.op == "PackedGather" else "A"
        return {key: self.inputs[key]}


def matmul_case(op, K, N, gs, M, *, bits=None, n_out=0, level=0, batch=(), scale_dtype=np.float16, seed=0,
                name=None) -> Case:
    rng = np.random.default_rng(seed)
    G = C.num_groups(K, gs)
    idx = np.sort(rng.choice(K, size=min(n_out, K), replace=False)).astype(np.int64)
    ow = rng.standard_normal((len(idx), N)).astype(np.float16)
    bias = rng.standard_normal(N).astype(np.float32)
    if op == "TernaryMatMul":
        codes = rng.integers(-1, 2, (N, K))
        codes[:, idx] = 0
        packed, scales = C.pack_ternary(codes, (rng.random((N, G)) + 0.1).astype(scale_dtype))
        names = ("W_packed", "scales")
    elif op == "BinaryCodeMatMul":
        signs = rng.choice([-1, 1], (bits, N, K))
        alphas = (rng.random((bits, N, G)) * 0.5 ** np.arange(bits)[:, None, None] + 0.05).astype(scale_dtype)
        packed, scales = C.pack_binary_code(signs, alphas)
        names = ("W_packed", "alphas")
    elif op == "Int4MatMul":  # odd seeds: zero points of every value (asymmetric codes); even: 8
        zp = rng.integers(0, 16, (N, G)) if seed % 2 else None
        packed, scales, zp_packed = C.pack_int4(rng.integers(0, 16, (N, K)),
                                                (rng.random((N, G)) * 0.2 + 0.01).astype(scale_dtype), zp)
        names = ("W_packed", "scales")
    else:
        ind = rng.integers(0, 1 << bits, (N, K))
        packed, scales = C.pack_codebook(ind, rng.standard_normal((N, 1 << bits)).astype(scale_dtype), bits)
        names = ("indices", "codebook")
    A = rng.standard_normal((*batch, M, K)).astype(np.float32)
    attrs = {"K": K, "N": N, "group_size": gs, "accuracy_level": level}
    if bits is not None:
        attrs["bits"] = bits
    inputs = {"A": A, names[0]: packed, names[1]: scales, "bias": bias, "outlier_idx": idx, "outlier_w": ow}
    if op == "Int4MatMul":
        inputs["zero_points"] = zp_packed
    name = name or f"{op}-K{K}-N{N}-gs{gs}-M{M}-b{bits}-o{n_out}-l{level}{'-batch' if batch else ''}"
    return Case(name, op, inputs, attrs)


def gather_case(V=9, D=21, gs=8, idx_shape=(3, 4), dtype=np.int64, seed=0) -> Case:
    rng = np.random.default_rng(seed)
    rb = rng.choice([2, 4, 8], V).astype(np.uint8)
    vals = np.zeros((V, D), np.int64)
    for r in range(V):
        b = int(rb[r])
        vals[r] = rng.integers(-1, 2, D) if b == 2 else rng.integers(-(1 << (b - 1)), 1 << (b - 1), D)
    table, off, rbits, sc = C.pack_packed_gather(vals, rb, rng.random((V, C.num_groups(D, gs))).astype(np.float16))
    ind = rng.integers(-V, V, idx_shape).astype(dtype)
    inputs = {"table": table, "row_offsets": off, "row_bits": rbits, "scales": sc, "indices": ind}
    return Case(f"PackedGather-V{V}-D{D}-gs{gs}-{np.dtype(dtype).name}", "PackedGather", inputs,
                {"D": D, "group_size": gs})


def all_cases() -> list[Case]:
    cases = []
    for level in (0, 4):
        cases += [
            matmul_case("TernaryMatMul", 256, 96, 64, 3, n_out=2, level=level),
            matmul_case("TernaryMatMul", 70, 45, 16, 1, level=level, scale_dtype=np.float32, seed=1),
            matmul_case("TernaryMatMul", 37, 11, 8, 5, n_out=1, level=level, batch=(2,), seed=2),
            matmul_case("TernaryMatMul", 600, 33, 600, 2, level=level, seed=3),
            matmul_case("TernaryMatMul", 50, 7, 3, 4, level=level, seed=4),  # tiny groups: fma path
            matmul_case("TernaryMatMul", 64, 32, 64, 0, level=level, seed=5),  # M = 0
            matmul_case("BinaryCodeMatMul", 128, 64, 32, 2, bits=1, level=level, seed=6),
            matmul_case("BinaryCodeMatMul", 200, 45, 40, 3, bits=2, n_out=2, level=level, seed=7),
            matmul_case("BinaryCodeMatMul", 77, 33, 77, 1, bits=3, level=level, seed=8),
            matmul_case("BinaryCodeMatMul", 96, 17, 24, 6, bits=4, level=level, batch=(1, 2), seed=9),
            matmul_case("CodebookMatMul", 96, 40, 96, 1, bits=2, level=level, seed=10),
            matmul_case("CodebookMatMul", 75, 31, 75, 3, bits=3, n_out=1, level=level, seed=11),
            matmul_case("CodebookMatMul", 300, 17, 300, 5, bits=4, n_out=2, level=level, scale_dtype=np.float32,
                        seed=12),
            matmul_case("Int4MatMul", 256, 70, 32, 3, n_out=2, level=level, seed=13),
            matmul_case("Int4MatMul", 75, 33, 75, 1, level=level, scale_dtype=np.float32, seed=14),
            matmul_case("Int4MatMul", 37, 11, 5, 4, n_out=1, level=level, batch=(2,), seed=15),  # odd groups
            matmul_case("Int4MatMul", 64, 32, 16, 0, level=level, seed=16),  # M = 0
        ]
    # prepacked indices over 2 MB: huge-page buffers and the prefetching LUT loops; N not a multiple
    # of the 32-column blocks nor of the codebook's 8-column interleave
    cases += [
        matmul_case("TernaryMatMul", 4096, 2080, 4096, 2, n_out=2, level=4, seed=20),
        matmul_case("CodebookMatMul", 1024, 4101, 1024, 2, bits=4, n_out=1, level=4, seed=22),
    ]
    # rows above the batched path's crossover (its int8 kernel): row-block and 128-row task tails,
    # several 256-element chunks per group, groups of 128 and odd ones, 1 and 2-4 binary planes
    cases += [
        matmul_case("TernaryMatMul", 600, 70, 600, 131, n_out=2, level=4, seed=30),
        matmul_case("TernaryMatMul", 256, 40, 64, 9, level=4, seed=31),
        matmul_case("BinaryCodeMatMul", 300, 45, 128, 13, bits=1, n_out=1, level=4, seed=32),
        matmul_case("BinaryCodeMatMul", 256, 33, 128, 20, bits=2, n_out=2, level=4, seed=33),
        matmul_case("BinaryCodeMatMul", 130, 40, 37, 11, bits=3, level=4, batch=(2,), seed=34),
        matmul_case("CodebookMatMul", 520, 50, 520, 70, bits=4, n_out=2, level=4, seed=35),
        matmul_case("CodebookMatMul", 75, 31, 75, 10, bits=2, level=4, seed=36),
        matmul_case("Int4MatMul", 600, 70, 128, 131, n_out=2, level=4, seed=37),  # 128-row tasks, big groups
        matmul_case("Int4MatMul", 1030, 65, 64, 20, n_out=1, level=4, seed=38),
    ]
    cases += [gather_case(), gather_case(V=5, D=7, gs=7, idx_shape=(6,), dtype=np.int32, seed=1)]
    return cases
