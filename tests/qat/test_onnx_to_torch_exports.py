"""The ONNX-to-torch evaluator runs every file of the Optimum exports of the random tiny models
(models/hf_exports.py) and matches onnxruntime: merged decoders through their If, DeBERTa's
GatherElements, Whisper's Conv, T5's buckets. Slow: the exports are made once and cached."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from models.compat import feeds_for, files_of
from models.hf_exports import export
from models.op_census import ARCHS
from qcompiler.qat.onnx_to_torch import OnnxModule

pytestmark = pytest.mark.slow

# float32 with other summation orders than MLAS (and its fused attention-free kernels) over two
# layers of random weights drawn wide (initializer_range 0.2, outputs up to ~10): measured at most
# 4e-6 relative to the largest output; 1e-4 of it leaves room for other CPUs.
RTOL_OF_MAX = 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_onnxruntime_on_optimum_export(arch):
    folder = export(arch)
    for name in files_of(arch):
        path = str(folder / name)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        module = OnnxModule(ir.load(path))
        for feed in feeds_for(path, n=2):
            ref = sess.run(None, feed)
            with torch.no_grad():
                got = module(**{k: torch.from_numpy(v) for k, v in feed.items()})
            for r, g in zip(ref, got):
                g = g.numpy()
                assert g.shape == r.shape and g.dtype == r.dtype, (name, g.shape, r.shape)
                scale = max(float(np.abs(r).max()), 1e-6) if r.size and r.dtype.kind == "f" else 0
                if r.dtype.kind == "f":
                    np.testing.assert_allclose(g, r, rtol=0, atol=RTOL_OF_MAX * scale, err_msg=f"{arch}/{name}")
                else:
                    np.testing.assert_array_equal(g, r, err_msg=f"{arch}/{name}")
