"""qcompile bench says when the native op library did not load: the qcompiler variants then run
their standard-op fallback, so their speed is not the library's (a warning on stderr, the reason in
the JSON, a bold line in the Markdown)."""

import json
import os
import subprocess
import sys


def _bench(model, out, env_extra):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "qcompiler", "bench", str(model), "--schemes", "ternary",
                           "--no-baselines", "--repeats", "2", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_bench_without_the_library_says_so(tiny_bert, tmp_path):
    missing = tmp_path / "no-such-libqcompiler_ops.so"
    run = _bench(tiny_bert, tmp_path / "out", {"QCOMPILER_OPS_LIB": str(missing)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "warning: the qcompiler op library is not loaded" in run.stderr
    result = json.loads((tmp_path / "out" / "tiny_bert.bench.json").read_text())
    assert result["native_library"].startswith("not loaded") and str(missing) in result["native_library"]
    ternary = next(v for v in result["variants"] if v["kind"] == "qcompiler")
    assert not ternary["error"] and ternary["latency_ms"]          # it still ran: on the fallback
    assert "ran their standard-op fallback" in (tmp_path / "out" / "tiny_bert.bench.md").read_text()


def test_bench_with_the_library_names_it(tiny_bert, tmp_path):
    run = _bench(tiny_bert, tmp_path / "out", {})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "op library is not loaded" not in run.stderr
    result = json.loads((tmp_path / "out" / "tiny_bert.bench.json").read_text())
    assert result["native_library"].startswith("loaded: ")
    assert "standard-op fallback" not in (tmp_path / "out" / "tiny_bert.bench.md").read_text()
