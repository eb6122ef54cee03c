"""The contract in Python: bitstream rule, packers, references, and the ONNX function bodies
(under onnx.reference and stock onnxruntime, without the native library)."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from cases import all_cases, matmul_case
from qcompiler.ops import contract as C

CASES = [c for c in all_cases() if c.attrs.get("accuracy_level", 0) == 0]


def test_bitstream_rule_3bit_straddles_bytes_lsb_first():
    packed = C.pack_bitstream(np.array([[1, 2, 3, 4, 5, 6, 7, 0]]), 3)
    assert packed.tolist() == [[209, 88, 31]]
    assert C.unpack_bitstream(packed, 3, 8).tolist() == [[1, 2, 3, 4, 5, 6, 7, 0]]


def test_ternary_codes_and_padding():
    packed, _ = C.pack_ternary(np.array([[1, -1, 0, 1, 0]]), np.ones((1, 1), np.float32))
    assert packed.tolist() == [[0b01_00_11_01, 0]]  # 01, 11, 00, 01 | 00 + zero pad bits
    assert C.unpack_ternary(np.array([[0b10]], np.uint8), 1).tolist() == [[0]]  # 0b10 reads as 0


@pytest.mark.parametrize("K", [1, 3, 4, 7, 8, 9, 33, 100])
def test_round_trips(K):
    rng = np.random.default_rng(K)
    N = 5
    codes = rng.integers(-1, 2, (N, K))
    p, _ = C.pack_ternary(codes, np.ones((N, 1), np.float16))
    assert p.shape == (N, (K + 3) // 4) and np.array_equal(C.unpack_ternary(p, K), codes)
    signs = rng.choice([-1, 1], (3, N, K))
    p, _ = C.pack_binary_code(signs, np.ones((3, N, 1), np.float32))
    assert p.shape == (3, N, (K + 7) // 8) and np.array_equal(C.unpack_binary_code(p, K), signs)
    for bits in (2, 3, 4):
        ind = rng.integers(0, 1 << bits, (N, K))
        p, _ = C.pack_codebook(ind, np.zeros((N, 1 << bits), np.float32), bits)
        assert p.shape == (N, (K * bits + 7) // 8) and np.array_equal(C.unpack_codebook(p, K, bits), ind)
    rb = np.array([2, 4, 8, 2, 4], np.uint8)
    vals = np.stack([rng.integers(-1, 2, K), rng.integers(-8, 8, K), rng.integers(-128, 128, K),
                     rng.integers(-1, 2, K), rng.integers(-8, 8, K)])
    t, off, rbits, _ = C.pack_packed_gather(vals, rb, np.ones((5, 1), np.float32))
    assert off[-1] == t.size and np.array_equal(C.unpack_packed_gather(t, off, rbits, K), vals)


def test_contract_errors():
    with pytest.raises(C.ContractError):
        C.pack_ternary(np.array([[2]]), np.ones((1, 1), np.float32))
    with pytest.raises(C.ContractError):
        C.pack_codebook(np.zeros((1, 4), int), np.zeros((1, 32), np.float32), 5)
    case = matmul_case("TernaryMatMul", 16, 4, 16, 1)
    with pytest.raises(C.ContractError, match="format_version"):
        C.reference("TernaryMatMul", *case.ordered(), K=16, N=4, group_size=16, format_version=2)
    with pytest.raises(C.ContractError):
        C.reference("TernaryMatMul", *case.ordered(), K=17, N=4, group_size=16)


def test_outlier_rows_of_packed_weights_are_ignored():
    case = matmul_case("BinaryCodeMatMul", 32, 6, 8, 2, bits=2, n_out=3)
    ref = case.reference()
    ins = case.ordered()
    A, idx, ow = ins[0], ins[4], ins[5].astype(np.float32)
    W = C.dequantize("BinaryCodeMatMul", ins[1], ins[2], K=32, N=6, group_size=8, bits=2)
    W[idx] = 0
    np.testing.assert_allclose(ref, A @ W + A[:, idx] @ ow + ins[3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_function_body_matches_reference(case):
    model = case.model()
    onnx.checker.check_model(model, full_check=True)
    ref = case.reference()
    got_ref = ReferenceEvaluator(model).run(None, case.feed())[0]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got_ort = sess.run(None, case.feed())[0]
    assert got_ort.shape == ref.shape == got_ref.shape
    if case.op == "PackedGather":
        assert np.array_equal(got_ref, ref) and np.array_equal(got_ort, ref)
        return
    tol = case.tolerance()
    assert (np.abs(got_ref - ref) <= tol).all()
    assert (np.abs(got_ort - ref) <= tol).all()


def test_attach_functions_proto_and_ir():
    case = matmul_case("TernaryMatMul", 16, 4, 16, 1)
    model = case.model(with_function=False)
    assert not model.functions
    C.attach_functions(model)
    assert [(f.domain, f.name) for f in model.functions] == [("ai.qcompiler", "TernaryMatMul")]
    irm = ir.serde.deserialize_model(case.model(with_function=False))
    C.attach_functions(irm)
    assert ("ai.qcompiler", "TernaryMatMul", "") in irm.functions
    out = ir.serde.serialize_model(irm)
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, case.feed())[0], case.reference(), rtol=1e-4, atol=1e-4)


def test_make_node_and_bits_per_weight():
    node = C.make_node("BinaryCodeMatMul", ["a", "w", "s", "b", "i", "o"], "y", K=64, N=8, bits=2, accuracy_level=4)
    assert node.domain == "ai.qcompiler"
    assert {a.name: a.i for a in node.attribute} == {"K": 64, "N": 8, "group_size": 64, "format_version": 1,
                                                     "accuracy_level": 4, "bits": 2}
    with pytest.raises(C.ContractError):
        C.make_node("BinaryCodeMatMul", ["a"], "y", K=64, N=8, bits=5)
    assert C.bits_per_weight("TernaryMatMul", K=768, N=3072, group_size=768) == pytest.approx(2 + 16 / 768)
