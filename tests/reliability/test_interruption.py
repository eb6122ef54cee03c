"""kill -9 of the compiler while it writes: the input is untouched, the destination holds nothing or
a complete model (the previous one), and the next run removes the stale temporaries.

The compiler runs as a subprocess on a model with external data, once plainly and once streaming
(memory_budget 0: packed weights are spilled to a temporary data file while the passes run);
it is killed as soon as one of its temporaries appears in the output directory, after a short
extra delay that varies per attempt (seeded), so kills land at different points of the write."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler import model_io

DIM, LAYERS = 512, 12   # 12 MB of weights: the write takes long enough to be hit


def _chain(path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)).astype(np.float32), f"W{i}")
             for i in range(LAYERS)]
    nodes = [helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"h{i + 1}"], name=f"mm{i}") for i in range(LAYERS)]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["B", DIM])],
                          [helper.make_tensor_value_info(f"h{LAYERS}", TensorProto.FLOAT, ["B", DIM])], inits)
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path),
                    save_as_external_data=True, location=path.name + ".data", size_threshold=0)


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _cmd(src: Path, out: Path, streaming: bool) -> list[str]:
    code = ("import sys; from qcompiler.pipeline import compile_model; "
            f"compile_model(sys.argv[1], scheme='int8', output=sys.argv[2], verify=False, "
            f"memory_budget={0 if streaming else 'None'})")
    return [sys.executable, "-c", code, str(src), str(out)]


def _temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if model_io.TMP_PREFIX in p.name]


def _complete(out: Path) -> bool:
    """The destination model loads with its data and passes the checker."""
    onnx.checker.check_model(str(out))
    onnx.load(str(out))
    return True


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
def test_kill_while_writing(tmp_path, streaming):
    src = tmp_path / "m.onnx"
    _chain(src)
    src_digest = _digest(src, Path(str(src) + ".data"))
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "m.int8.onnx"
    subprocess.run(_cmd(src, out, streaming), check=True, capture_output=True, timeout=300)
    previous = _digest(out, Path(str(out) + ".data"))
    rng = np.random.default_rng(1)
    hits = 0
    for _attempt in range(4):
        proc = subprocess.Popen(_cmd(src, out, streaming), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and not _temporaries(outdir) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(float(rng.uniform(0, 0.05)))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            hits += 1
        proc.wait(timeout=60)
        assert _digest(src, Path(str(src) + ".data")) == src_digest, "the input changed"
        if out.exists():
            assert _complete(out)
            assert _digest(out, Path(str(out) + ".data")) == previous  # deterministic: old == new bytes
    assert hits >= 2, "the compiler finished before it could be killed: make the model bigger"
    # The next run cleans the temporaries of the killed ones and leaves none of its own.
    subprocess.run(_cmd(src, out, streaming), check=True, capture_output=True, timeout=300)
    assert _temporaries(outdir) == []
    assert _complete(out) and _digest(out, Path(str(out) + ".data")) == previous


def test_temporaries_of_a_live_process_are_left_alone(tmp_path):
    """Two compiles writing to one directory must not delete each other's temporaries."""
    live = tmp_path / f"{model_io.TMP_PREFIX}{os.getpid()}-a.onnx"
    live.write_bytes(b"in progress")
    dead_pid = 2**22 + 12345   # above the default pid_max: no such process
    dead = tmp_path / f"{model_io.TMP_PREFIX}{dead_pid}-b.onnx"
    dead.write_bytes(b"partial")
    dead_dir = tmp_path / f".{model_io.TMP_PREFIX}{dead_pid}-b.onnx.data.x1y2"
    dead_dir.mkdir()
    (dead_dir / "chunk").write_bytes(b"partial")
    model_io.clean_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
