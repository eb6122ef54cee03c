"""Compiling the same model twice gives byte-identical output, for every built-in scheme.

Calibration (synthesized inputs, seeded), GPTQ recovery, k-means and the int4 column slices run
in threads must not make the bytes depend on the run. Also checked for a streaming compile
(weights spilled while the passes run) and across processes (hash seeds, thread timing)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qcompiler import calibration
from qcompiler.pipeline import compile_model
from qcompiler.schemes import builtin_scheme_names


def _digest(out: Path) -> str:
    h = hashlib.sha256(out.read_bytes())
    data = Path(str(out) + ".data")
    if data.exists():
        h.update(data.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("scheme", builtin_scheme_names())
def test_same_bytes_twice(tiny_bert, tmp_path, scheme):
    digests = []
    for run in range(2):
        calibration._STATS_CACHE.clear()   # the second compile calibrates again instead of reusing stats
        out = tmp_path / f"run{run}.onnx"
        compile_model(tiny_bert, scheme=scheme, output=out, verify=False)
        digests.append(_digest(out))
    assert digests[0] == digests[1]


@pytest.mark.parametrize("scheme", ["int8", "int4", "ternary"])
def test_same_bytes_streaming(tiny_bert, tmp_path, scheme):
    out = tmp_path / "s.onnx"   # one path: the proto names its data file after the output
    digests = []
    for _run in range(2):
        compile_model(tiny_bert, scheme=scheme, output=out, verify=False, memory_budget=0)
        digests.append(_digest(out))
    assert digests[0] == digests[1]


def test_same_bytes_across_processes(tiny_bert, tmp_path):
    outs = []
    out = tmp_path / "p.onnx"
    for seed in ("0", "12345"):
        subprocess.run([sys.executable, "-m", "qcompiler", str(tiny_bert), "-s", "bcq2", "-q", "--no-verify",
                        "-o", str(out)], check=True, capture_output=True, timeout=300,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        outs.append(_digest(out))
    assert outs[0] == outs[1]
