"""register() refuses an onnxruntime older than the library's C API instead of a silent fallback."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from qcompiler import ops


@pytest.mark.parametrize("version", ["1.20.1", "1.9.0", "0.5"])
def test_old_onnxruntime_is_refused_with_the_fix(monkeypatch, version):
    monkeypatch.setattr(ort, "__version__", version)
    with pytest.raises(ops.RuntimeTooOld) as info:
        ops.register(ort.SessionOptions())
    assert version in str(info.value) and "pip install 'onnxruntime>=1.21'" in str(info.value)


@pytest.mark.parametrize("version", ["1.21.0", "1.32.0", "2.0.0.dev20261201"])
def test_supported_versions_pass(monkeypatch, version):
    monkeypatch.setattr(ort, "__version__", version)
    assert ops.check_runtime() == version


def test_register_on_this_onnxruntime_returns_the_library():
    assert ops.register(ort.SessionOptions()) == ops.library_path()
