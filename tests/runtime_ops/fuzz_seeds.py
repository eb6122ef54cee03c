"""Seeds for the libFuzzer target runtime_ops/csrc/fuzz/fuzz_ops.cc: every ai.qcompiler node of the
given models (the test cases, the hostile corpus, tiny BERTs compiled with the low-bit schemes)
written in the target's input layout (runtime_ops/csrc/fuzz/fuzz_format.md), plus the crash inputs
of issue 18 (group_size near INT64_MAX with scales of shape [N, 0] / [V, 0]).

    python tests/runtime_ops/fuzz_seeds.py OUT_DIR [--compiled]"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import all_cases, gather_case, matmul_case  # noqa: E402

OPS = {"TernaryMatMul": 0, "BinaryCodeMatMul": 1, "CodebookMatMul": 2, "PackedGather": 3, "Int4MatMul": 4}
MATMUL_ATTRS = ("K", "N", "group_size", "bits", "format_version", "accuracy_level")
GATHER_ATTRS = ("D", "group_size", "format_version")
MAX_SEED_BYTES = 256 << 10   # larger tensors exceed the target's per-tensor cap anyway
DTYPE_CODE = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int32): 4,
              np.dtype(np.int64): 5, np.dtype(np.float16): 6}


def _attr(value) -> bytes:
    if value is None:
        return b"\x00"
    return b"\x02" + struct.pack("<q", int(value))


def _spec(arr) -> bytes:
    if arr is None:
        return b"\x01\x00\x00"
    arr = np.asarray(arr)
    if arr.ndim > 4 or any(d > 0xFFFF for d in arr.shape) or arr.dtype not in DTYPE_CODE:
        raise ValueError("not representable")
    return (b"\x02" + bytes([arr.ndim]) + b"".join(struct.pack("<H", d) for d in arr.shape)
            + bytes([DTYPE_CODE[arr.dtype], 0]))


def encode(op: str, attrs: dict, inputs: list) -> bytes:
    """One fuzz input: op, attributes, tensor specs (explicit shapes and dtypes, raw content), data."""
    out = bytes([OPS[op]])
    if op == "PackedGather":
        out += b"".join(_attr(attrs.get(a)) for a in GATHER_ATTRS) + b"\x00\x00\x00\x00"
    else:
        out += b"".join(_attr(attrs.get(a)) for a in MATMUL_ATTRS) + b"\x00"
    out += b"".join(_spec(x) for x in inputs)
    return out + b"".join(np.ascontiguousarray(x).tobytes() for x in inputs if x is not None)


def _node_inputs(model: onnx.ModelProto, node, feed: dict, rng) -> list | None:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values = []
    for i, name in enumerate(node.input):
        if not name:
            values.append(None)
        elif name in inits:
            values.append(inits[name])
        elif name in feed:
            values.append(np.asarray(feed[name]))
        elif i == 0 and node.op_type != "PackedGather":   # an activation computed inside the model
            k = next(a.i for a in node.attribute if a.name == "K")
            values.append(rng.standard_normal((2, k)).astype(np.float32))
        elif i == 4 and node.op_type == "PackedGather":
            values.append(np.array([0, 1, -1], np.int64))
        else:
            return None
    n = 6 if node.op_type != "PackedGather" else 5
    return values + [None] * (n - len(values))


def seeds_from_model(model: onnx.ModelProto, feed: dict | None = None):
    rng = np.random.default_rng(0)
    for node in model.graph.node:
        if node.domain != "ai.qcompiler" or node.op_type not in OPS:
            continue
        ins = _node_inputs(model, node, feed or {}, rng)
        if ins is None:
            continue
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        try:
            yield encode(node.op_type, attrs, ins)
        except ValueError:
            continue


def crash_seeds():
    """The five fuzzer crashes of issue 18: ceil(K / group_size) wrapped to 0."""
    for gs in (2**63 - 1, 2**63 - 2, 2**62 + 1):
        for op, bits in (("TernaryMatMul", None), ("BinaryCodeMatMul", 2)):
            c = matmul_case(op, 40, 12, 16, 2, bits=bits, n_out=2)
            name = "scales" if op == "TernaryMatMul" else "alphas"
            s = c.inputs[name]
            c.inputs[name] = s[..., :0]
            c.attrs["group_size"] = gs
            yield encode(op, c.attrs, c.ordered())
        g = gather_case(V=7, D=13, gs=8, idx_shape=(2, 3))
        g.inputs["scales"] = g.inputs["scales"][:, :0]
        g.attrs["group_size"] = gs
        yield encode("PackedGather", g.attrs, g.ordered())


def compiled_models(tmp: str):
    """Tiny BERTs compiled with the schemes that write ai.qcompiler nodes."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    from models.tiny_bert import build_tiny_bert
    from qcompiler.pipeline import compile_model

    src = os.path.join(tmp, "tiny.onnx")
    build_tiny_bert(src, opset=17, variant="post_ln")
    for scheme in ("ternary", "bcq2", "bcq3", "kmeans3", "kmeans4", "mixed"):
        out = os.path.join(tmp, f"{scheme}.onnx")
        compile_model(src, scheme=scheme, output=out, verify=False)
        yield onnx.load(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--compiled", action="store_true", help="also compile tiny BERTs (about a minute)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    seeds = list(crash_seeds())
    for case in all_cases():
        if case.op != "PackedGather" and case.inputs["A"].size * 4 > 1 << 20:
            continue   # the large-matrix cases: too slow per fuzz run
        seeds.extend(seeds_from_model(case.model(), case.feed()))
    import hostile_corpus
    for h in hostile_corpus.hostile_cases():
        seeds.extend(seeds_from_model(onnx.load_from_string(h.model), h.feed))
    if args.compiled:
        with tempfile.TemporaryDirectory() as tmp:
            for m in compiled_models(tmp):
                seeds.extend(seeds_from_model(m))
    seeds = [s for s in seeds if len(s) <= MAX_SEED_BYTES]
    for s in seeds:
        with open(os.path.join(args.out, hashlib.sha1(s).hexdigest()), "wb") as f:
            f.write(s)
    print(f"{len(set(seeds))} seeds in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
