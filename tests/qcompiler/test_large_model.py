"""A 2.4 GB model (external data, 36 MatMuls 4096 x 4096) loads lazily, saves with its weights in
`<name>.data`, and compiles streaming in bounded memory.

Protobuf cannot hold more than 2 GB, so this is the path real LLM-sized exports take. Each compile
runs in a subprocess that reports its own peak RSS (VmHWM: ru_maxrss would also count the pytest
process's pages the child holds between fork and exec). Bound: peak
RSS at most 0.25x the model, the issue's target; measured 0.40 GB for int8 (0.17x) and well below
that for the copy, so the bound fails only if weights pile up in memory again (one 64 MB weight
plus its quantizer's temporaries is what streaming may hold)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.large_synthetic import chain_bytes, write_chain
from qcompiler import model_io
from qcompiler.machine import int8_dot_saturates

LAYERS, DIM = 36, 4096
RSS_BOUND = 0.25


def _compile_in_child(src, out, scheme: str) -> int:
    """Compile in a subprocess; returns its peak RSS in bytes (fails on a non-zero exit)."""
    code = ("import sys; from qcompiler.pipeline import compile_model; from qcompiler.schemes import Scheme; "
            "s = sys.argv[3]; s = Scheme('copy', 'cleanup only', ['cleanup'], {}, {}, {}, {}, 'test') "
            "if s == 'copy' else s; compile_model(sys.argv[1], scheme=s, output=sys.argv[2], verify=False); "
            "from models.bench_scale import peak_rss_of_this_process; print('VmHWM', peak_rss_of_this_process())")
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(out), scheme], capture_output=True, text=True,
                          timeout=900, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split("VmHWM")[-1].split()[0])


@pytest.fixture(scope="module")
def big_chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    if shutil.disk_usage(d).free < 8e9:
        pytest.skip("needs 8 GB of free disk for a 2.4 GB model and its copy")
    src = write_chain(d / "big.onnx", layers=LAYERS, dim=DIM)
    yield src
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_over_2gb_loads_and_saves_with_external_data(big_chain):
    src = big_chain
    assert model_io.file_size(src) > 2**31
    out = src.with_name("big.copy.onnx")
    peak = _compile_in_child(src, out, "copy")
    assert peak < RSS_BOUND * chain_bytes(LAYERS, DIM), f"peak RSS {peak / 1e9:.2f} GB"
    assert (src.parent / "big.copy.onnx.data").exists()
    assert model_io.file_size(out) > 2**31
    proto = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    # Spot-check one weight's bytes through a memory map, not by loading 2.4 GB.
    w_in = model_io.load_model(src).graph.initializers["W5"].const_value.numpy()
    w_out = model_io.load_model(out).graph.initializers["W5"].const_value.numpy()
    assert np.array_equal(w_in[::97], w_out[::97])
    out.unlink()
    (src.parent / "big.copy.onnx.data").unlink()


@pytest.mark.slow
def test_streaming_int8_compile_in_bounded_memory(big_chain):
    src = big_chain
    out = src.with_name("big.int8.onnx")
    peak = _compile_in_child(src, out, "int8")
    assert peak < RSS_BOUND * chain_bytes(LAYERS, DIM), f"peak RSS {peak / 1e9:.2f} GB"
    # 36 int8 weights (1 byte each) + their scales, in the data file beside the output
    assert model_io.file_size(out) > LAYERS * DIM * DIM
    proto = onnx.load(str(out), load_external_data=False)
    assert sum(n.op_type == "MatMulInteger" for n in proto.graph.node) == LAYERS
    loaded = model_io.load_model(out)
    q = loaded.graph.initializers["W7_quantized"].const_value.numpy()
    codes = 63 if int8_dot_saturates()[0] else 127   # insert_qdq weight_bits "auto": 7 or 8 bits by CPU
    assert q.dtype == np.int8 and q.shape == (DIM, DIM) and np.abs(q).max() == codes
