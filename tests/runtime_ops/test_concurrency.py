"""Concurrent run() calls on one session: every op, weights / tables as initializers (prepacked
once) and as graph inputs (validated per run), give the single-threaded result bit for bit.

PackedGather once rewrote its kernel object inside Compute when its table came as graph inputs:
8 threads x 2000 runs gave spurious "index out of range" errors, wrong rows and, alternating a
large and a small table, SIGSEGV. Here the graph-input runs alternate tables of different sizes
(and different weights for the MatMul ops), so any shared per-run state shows as a wrong result.
`make asan` runs this file under AddressSanitizer too."""

from __future__ import annotations

import os
import threading

import numpy as np
import onnxruntime as ort
import pytest

from cases import Case, gather_case, matmul_case
from qcompiler import ops

THREADS = 8
ASAN = bool(os.environ.get("QCOMPILER_ASAN"))


def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 2   # concurrent runs also share the intra-op pool
    ops.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _variants(kind: str, as_inputs: bool) -> list[Case]:
    """Cases whose feeds the runs cycle through (one model, several feeds)."""
    if kind == "PackedGather":
        if as_inputs:   # a large and a small table, alternating
            return [gather_case(V=400, D=96, gs=32, idx_shape=(5, 7), seed=1),
                    gather_case(V=3, D=96, gs=32, idx_shape=(2,), seed=2),
                    gather_case(V=50, D=96, gs=32, idx_shape=(3, 3), seed=3)]
        base = gather_case(V=400, D=96, gs=32, idx_shape=(5, 7), seed=1)
        rng = np.random.default_rng(4)
        return [Case(base.name, base.op, {**base.inputs, "indices": rng.integers(-400, 400, s).astype(np.int64)},
                     base.attrs) for s in [(5, 7), (1,), (30,), ()]]
    op, bits, level = kind.split(":")
    bits = int(bits) if bits != "-" else None
    shapes = [(1,), (4,), (2, 3)]
    if as_inputs:   # other weights every run
        return [matmul_case(op, 96, 70, 32, 3, bits=bits, n_out=2, level=int(level), seed=s) for s in range(3)]
    cases = []
    for s, lead in enumerate(shapes):
        c = matmul_case(op, 96, 70, 32, 3, bits=bits, n_out=2, level=int(level), seed=10)
        A = np.random.default_rng(s).standard_normal((*lead, 96)).astype(np.float32)
        cases.append(Case(c.name, c.op, {**c.inputs, "A": A}, c.attrs))
    return cases


def _feed(case: Case, as_inputs: bool) -> dict:
    return dict(case.inputs) if as_inputs else case.feed()


KINDS = ["TernaryMatMul:-:0", "TernaryMatMul:-:4", "BinaryCodeMatMul:2:0", "BinaryCodeMatMul:3:4",
         "CodebookMatMul:3:0", "CodebookMatMul:4:4", "PackedGather"]


def run_concurrently(kind: str, as_inputs: bool, runs: int) -> int:
    variants = _variants(kind, as_inputs)
    model = variants[0].model(weights_as_inputs=as_inputs)
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.ClearField("shape")
    sess = _session(model)
    feeds = [_feed(v, as_inputs) for v in variants]
    expected = [sess.run(None, f)[0].copy() for f in feeds]   # single-threaded
    errors: list[str] = []

    def worker(t: int) -> None:
        try:
            for i in range(runs):
                j = (i + t) % len(feeds)
                y = sess.run(None, feeds[j])[0]
                if y.shape != expected[j].shape or y.tobytes() != expected[j].tobytes():
                    errors.append(f"thread {t} run {i} feed {j}: differs from the single-threaded result")
                    return
        except Exception as exc:   # noqa: BLE001 - any error is a failure here
            errors.append(f"thread {t}: {exc}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:5]
    return THREADS * runs


@pytest.mark.parametrize("as_inputs", [False, True], ids=["initializers", "graph-inputs"])
@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_runs_short(kind, as_inputs):
    run_concurrently(kind, as_inputs, runs=25 if ASAN else 100)


@pytest.mark.slow
@pytest.mark.parametrize("as_inputs", [False, True], ids=["initializers", "graph-inputs"])
@pytest.mark.parametrize("kind", ["TernaryMatMul:-:4", "BinaryCodeMatMul:3:4", "CodebookMatMul:4:4",
                                  "PackedGather"])
def test_concurrent_runs_2000(kind, as_inputs):
    """The acceptance figure: 8 threads x 2000 runs per op."""
    run_concurrently(kind, as_inputs, runs=2000)
