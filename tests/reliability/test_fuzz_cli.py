"""The CLI on mutated models: every run ends in exit 0 with a valid model, or exit 2 with one line.

Never exit 1 (an internal error), a traceback or a hang. Hypothesis runs derandomized with
bounded example counts (no example database), so the suite is deterministic and quick; a few
cases also run as subprocesses under a timeout (a hang fails them)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompiler.cli import main

sys.path.insert(0, os.path.dirname(__file__))
import fuzz_models as fm  # noqa: E402

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SCHEMES = st.sampled_from(["int8", "int4", "ternary", "bcq2", "kmeans4"])


def _compile(tmp: Path, data: bytes, scheme: str, capsys, extra=()) -> tuple[int, str, Path]:
    src = tmp / "m.onnx"
    src.write_bytes(data)
    out = tmp / f"m.{scheme}.onnx"
    for p in (out, Path(str(out) + ".data")):
        p.unlink(missing_ok=True)
    code = main([str(src), "-s", scheme, "-q", "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert src.read_bytes() == data, "the input was changed"
    return code, err, out


def _check_outcome(code: int, err: str, out: Path) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), f"exit {code}: {err}"
    leftovers = [p.name for p in out.parent.iterdir() if ".qcompile-tmp-" in p.name]
    assert not leftovers, leftovers
    if code == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("qcompile: error:"), err
        assert not out.exists()
    else:
        onnx.checker.check_model(str(out))


@pytest.fixture(scope="module")
def base_bytes() -> bytes:
    return fm.block_model().SerializeToString()


@FUZZ
@given(data=st.binary(max_size=400), scheme=SCHEMES)
def test_random_bytes(tmp_path, capsys, data, scheme):
    code, err, out = _compile(tmp_path, data, scheme, capsys)
    _check_outcome(code, err, out)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10_000), scheme=SCHEMES)
def test_truncated_protobuf(tmp_path, capsys, base_bytes, cut, scheme):
    code, err, out = _compile(tmp_path, base_bytes[: cut % len(base_bytes)], scheme, capsys)
    _check_outcome(code, err, out)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
       scheme=SCHEMES)
def test_flipped_bytes(tmp_path, capsys, base_bytes, flips, scheme):
    data = bytearray(base_bytes)
    for pos, value in flips:
        data[pos % len(data)] = value
    code, err, out = _compile(tmp_path, bytes(data), scheme, capsys)
    _check_outcome(code, err, out)


@FUZZ
@given(index=st.integers(0, 5), dtype=st.sampled_from(fm.DTYPES), scheme=SCHEMES)
def test_wrong_dtypes(tmp_path, capsys, index, dtype, scheme):
    model = fm.set_dtype(fm.block_model(), index, dtype)
    code, err, out = _compile(tmp_path, model.SerializeToString(), scheme, capsys)
    _check_outcome(code, err, out)


@FUZZ
@given(index=st.integers(0, 5), scheme=SCHEMES)
def test_missing_initializer(tmp_path, capsys, index, scheme):
    model = fm.drop_initializer(fm.block_model(), index)
    code, err, out = _compile(tmp_path, model.SerializeToString(), scheme, capsys)
    _check_outcome(code, err, out)


@FUZZ
@given(index=st.integers(0, 5), dims=st.lists(st.integers(0, 64), min_size=0, max_size=3), scheme=SCHEMES)
def test_zero_sized_and_wrong_weight_shapes(tmp_path, capsys, index, dims, scheme):
    model = fm.set_dims(fm.block_model(), index, dims)
    code, err, out = _compile(tmp_path, model.SerializeToString(), scheme, capsys)
    _check_outcome(code, err, out)


@FUZZ
@given(dims=st.lists(st.one_of(st.integers(0, 40), st.sampled_from(["B", "T", ""])), min_size=0, max_size=3),
       scheme=SCHEMES)
def test_dynamic_or_zero_sized_inputs(tmp_path, capsys, dims, scheme):
    model = fm.set_input_dims(fm.block_model(), dims)
    code, err, out = _compile(tmp_path, model.SerializeToString(), scheme, capsys)
    _check_outcome(code, err, out)


@FUZZ
@given(default=st.integers(1, 26),
       extra=st.lists(st.tuples(st.sampled_from(["com.microsoft", "ai.onnx.ml", "ai.qcompiler", "my.domain"]),
                                st.integers(1, 5)), max_size=2, unique_by=lambda t: t[0]),
       scheme=SCHEMES)
def test_opset_mixes(tmp_path, capsys, default, extra, scheme):
    model = fm.set_opsets(fm.block_model(), default, extra)
    code, err, out = _compile(tmp_path, model.SerializeToString(), scheme, capsys)
    _check_outcome(code, err, out)


def _ort_run(path: Path, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    from qcompiler import ops

    so = ort.SessionOptions()
    ops.register(so)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("scheme", ["int8", "int4", "ternary"])
@pytest.mark.parametrize("kind", ["if", "loop_outer_weights", "loop_inner_weights"])
def test_control_flow_compiles_correctly(tmp_path, capsys, kind, scheme):
    """Weights used inside If/Loop subgraphs: a compile whose output runs and stays close to FP32
    (relative L2 below 0.5: ternary of random 32x48 weights without recovery errs ~0.3 per layer;
    the point is a runnable, not-garbage model), or a clear exit 2."""
    model = {"if": fm.if_model, "loop_outer_weights": fm.loop_model,
             "loop_inner_weights": lambda: fm.loop_model(inner_weights=True)}[kind]()
    code, err, out = _compile(tmp_path, model.SerializeToString(), scheme, capsys)
    _check_outcome(code, err, out)
    if code != 0:
        return
    x = np.random.default_rng(0).standard_normal((3, fm.K)).astype(np.float32)
    feed = {"x": x, "cond": np.array(True)} if kind == "if" else {"x": x, "trip": np.array(2, np.int64)}
    ref, got = _ort_run(tmp_path / "m.onnx", feed), _ort_run(out, feed)
    assert got.shape == ref.shape
    # Subgraph weights are quantized (not copied) since the subgraph work: ternary by plain rounding
    # (64 synthesized rows are too few for recovery) errs 0.43 per random layer, 0.59-0.73 through the
    # two-layer block, and the Loop applies it twice; an unrelated output would err ~1.4.
    bound = 0.9 if scheme == "ternary" else 0.5
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < bound


def _save_external(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    return Path(str(path) + ".data")


@pytest.mark.parametrize("damage", ["missing", "short", "empty", "offset_past_end", "location_escapes"])
def test_external_data_damage(tmp_path, capsys, damage):
    src = tmp_path / "m.onnx"
    data = _save_external(fm.block_model(), src)
    if damage == "missing":
        data.unlink()
    elif damage == "short":
        data.write_bytes(data.read_bytes()[:-7])
    elif damage == "empty":
        data.write_bytes(b"")
    else:
        proto = onnx.load(str(src), load_external_data=False)
        entry = {e.key: e for e in proto.graph.initializer[2].external_data}
        if damage == "offset_past_end":
            entry["offset"].value = str(10**9)
        else:
            entry["location"].value = "../../etc/passwd"
        src.write_bytes(proto.SerializeToString())
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    code = main([str(src), "-q", "-o", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert not (tmp_path / "out.onnx").exists()


def test_external_data_model_compiles(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    _save_external(fm.block_model(), src)
    code = main([str(src), "-q", "-o", str(tmp_path / "out.onnx")])
    assert code == 0, capsys.readouterr().err
    onnx.checker.check_model(str(tmp_path / "out.onnx"))


@pytest.mark.parametrize("case", ["random_bytes", "truncated", "loop"])
def test_subprocess_no_traceback_no_hang(tmp_path, case):
    """The installed entry point, as users run it, under a timeout (a hang fails the test)."""
    src = tmp_path / "m.onnx"
    base = fm.block_model().SerializeToString()
    src.write_bytes({"random_bytes": np.random.default_rng(0).bytes(300), "truncated": base[: len(base) // 3],
                     "loop": fm.loop_model().SerializeToString()}[case])
    proc = subprocess.run([sys.executable, "-m", "qcompiler", str(src), "-q", "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == (0 if case == "loop" else 2), proc.stderr
