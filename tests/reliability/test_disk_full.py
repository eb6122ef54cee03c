"""Disk full or unwritable destination: one clear line, exit 2, no partial file, input untouched.

A real full disk is a 1 MB tmpfs mounted in a private mount namespace (`unshare -rm`, no root
needed where user namespaces are allowed; skipped elsewhere); the same failure is also injected
into the writer (ENOSPC from the tensor writes) for machines without it, and for the streaming
spill file."""

from __future__ import annotations

import errno
import hashlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import onnx_ir as ir
import pytest

from qcompiler import model_io
from qcompiler.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_models import linear_model as make_linear_model  # noqa: E402


def _can_mount_tmpfs(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    res = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                         capture_output=True, timeout=30)
    return res.returncode == 0


def _in_namespace(tmp_path, mount_opts: str, python_args: list[str]) -> tuple[int, str, list[str]]:
    """Mount a tmpfs at tmp_path/mnt in a private namespace, run python with the args, list what is left."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, *python_args])
    script = (f"mount -t tmpfs -o {mount_opts} tmpfs {mnt} || exit 99; "
              f"{cmd} 2>{tmp_path}/err.txt; echo $? > {tmp_path}/rc.txt; ls -A {mnt} > {tmp_path}/ls.txt")
    subprocess.run(["unshare", "-rm", "sh", "-c", script], timeout=300, check=True)
    return (int((tmp_path / "rc.txt").read_text()), (tmp_path / "err.txt").read_text(),
            (tmp_path / "ls.txt").read_text().split())


def _one_line(err: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("qcompile: error:") and "Traceback" not in err, err


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
def test_full_tmpfs(tmp_path, streaming):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (no user namespaces)")
    src = make_linear_model(tmp_path / "m.onnx", k=2048, n=1024)   # 8 MB; int8 output ~2 MB > 1 MB tmpfs
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = str(tmp_path / "mnt" / "out.onnx")
    if streaming:   # the CLI has no streaming flag; a budget of 0 bytes streams every model
        code = ("import sys; from qcompiler.cli import main; from qcompiler import pipeline; "
                "pipeline.DEFAULT_MEMORY_BUDGET = 0; sys.exit(main(sys.argv[1:]))")
        args = ["-c", code, str(src), "-s", "int8", "-q", "-o", out]
    else:
        args = ["-m", "qcompiler", str(src), "-s", "int8", "-q", "-o", out]
    rc, err, left = _in_namespace(tmp_path, "size=1m", args)
    assert rc == 2, err
    _one_line(err)
    assert "No space left" in err
    assert left == []
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def test_read_only_destination(tmp_path):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (no user namespaces)")
    src = make_linear_model(tmp_path / "m.onnx", k=64, n=32)
    rc, err, left = _in_namespace(tmp_path, "ro,size=1m",
                                  ["-m", "qcompiler", str(src), "-q", "-o", str(tmp_path / "mnt" / "o.onnx")])
    assert rc == 2, err
    _one_line(err)
    assert left == []


def test_enospc_from_the_writer(tmp_path, monkeypatch, capsys):
    """Without a tmpfs: the tensor writes fail half-way with ENOSPC."""
    src = make_linear_model(tmp_path / "m.onnx", k=256, n=128)
    calls = {"n": 0}
    original = ir.Tensor.tofile

    def full_disk(self, file):
        calls["n"] += 1
        file.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ir.Tensor, "tofile", full_disk)
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 0)    # weights go through tofile
    code = main([str(src), "-s", "int8", "-q", "--no-verify", "-o", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err
    assert calls["n"] >= 1 and code == 2, err
    _one_line(err)
    assert "No space left" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    monkeypatch.setattr(ir.Tensor, "tofile", original)


def test_enospc_in_the_streaming_spill(tmp_path, monkeypatch):
    from qcompiler.errors import OutputError
    from qcompiler.pipeline import compile_model

    src = make_linear_model(tmp_path / "m.onnx", k=1024, n=1024)   # a 4 MB weight: spilled (>= 1 MB)

    def full_disk(self, tensor, name):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model_io.Spill, "_write", full_disk)
    with pytest.raises(OutputError, match="No space left"):
        compile_model(src, scheme="int8", output=tmp_path / "out.onnx", verify=False, memory_budget=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
