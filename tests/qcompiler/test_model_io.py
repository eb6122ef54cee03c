"""Atomic saves, external data in and out, stale temporaries cleaned, sizes counted with data files."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qcompiler import model_io
from qcompiler.errors import ModelLoadError



def _linear_proto(k=256, n=128):
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
    g = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                               [onnx.helper.make_tensor_value_info("x", 1, ["B", k])],
                               [onnx.helper.make_tensor_value_info("y", 1, ["B", n])], [w])
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_external_data_loads_lazily_and_saves(tmp_path):
    src = tmp_path / "ext.onnx"
    onnx.save_model(_linear_proto(), str(src), save_as_external_data=True, location="ext.data", size_threshold=0)
    model = model_io.load_model(src)
    assert isinstance(model.graph.initializers["W"].const_value, ir.ExternalTensor)
    out = model_io.save_model(model, tmp_path / "out.onnx")
    reloaded = onnx.load(str(out))
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(reloaded.graph.initializer[0]),
                                  onnx.numpy_helper.to_array(onnx.load(str(src)).graph.initializer[0]))
    assert model_io.file_size(src) > (tmp_path / "ext.onnx").stat().st_size


def test_large_output_goes_to_external_data(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    onnx.save_model(_linear_proto(), str(src))
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1000)
    out = model_io.save_model(model_io.load_model(src), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    proto = onnx.load(str(out), load_external_data=False)
    assert proto.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    full = onnx.load(str(out))
    assert onnx.numpy_helper.to_array(full.graph.initializer[0]).shape == (256, 128)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(model_io.TMP_PREFIX)]


def test_missing_or_short_external_data(tmp_path):
    src = tmp_path / "ext.onnx"
    onnx.save_model(_linear_proto(), str(src), save_as_external_data=True, location="ext.data", size_threshold=0)
    data = tmp_path / "ext.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="too short"):
        model_io.load_model(src)
    data.unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        model_io.load_model(src)


def test_stale_temporaries_are_removed_and_failed_save_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    onnx.save_model(_linear_proto(), str(src))
    stale = tmp_path / (model_io.TMP_PREFIX + "old.onnx")
    stale.write_bytes(b"partial")
    model = model_io.load_model(src)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ir, "save", boom)
    from qcompiler.errors import OutputError

    with pytest.raises(OutputError, match="No space left"):
        model_io.save_model(model, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
