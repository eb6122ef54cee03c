"""The fuzz target's regression cases in `make test`: the target (runtime_ops/csrc/fuzz/fuzz_ops.cc,
the ops' checks + every ISA variant against a reference oracle) built with gcc and
AddressSanitizer/UBSan, run once on the inputs it failed on (csrc/fuzz/regressions/), the crash
inputs of issue 18 and a seed from every test case. An accepted input with a wrong result, a
sanitizer report or a crash fails the run."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import fuzz_seeds
from cases import all_cases

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CSRC = os.path.join(ROOT, "runtime_ops", "csrc")


def _build(tmp_path) -> str:
    cc, cxx = shutil.which("gcc"), shutil.which("g++")
    if not cc or not cxx:
        pytest.skip("no gcc/g++")
    flags = ["-O1", "-g", "-ffp-contract=off", "-fno-math-errno", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=undefined"]
    x86 = os.uname().machine == "x86_64"

    def isa(src: str) -> list[str]:   # as CMakeLists.txt: the ISA files get their target flags
        if not x86:
            return []
        if "avx512" in src:
            return ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]
        return ["-mavx2", "-mfma"] if "avx2" in src else []

    objs = []
    for src in sorted(f for f in os.listdir(os.path.join(CSRC, "kernels")) if f.endswith(".c")):
        obj = str(tmp_path / (src + ".o"))
        subprocess.run([cc, "-std=c11", *flags, *isa(src), "-c", os.path.join(CSRC, "kernels", src), "-o", obj],
                       check=True)
        objs.append(obj)
    exe = str(tmp_path / "qc_fuzz_replay")
    subprocess.run([cxx, "-std=c++17", *flags, os.path.join(CSRC, "fuzz", "fuzz_ops.cc"),
                    os.path.join(CSRC, "fuzz", "replay_main.cc"), os.path.join(CSRC, "ops", "validate.cc"),
                    *objs, "-lm", "-o", exe], check=True)
    return exe


@pytest.mark.slow
def test_fuzz_regressions_replay(tmp_path):
    exe = _build(tmp_path)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    blobs = list(fuzz_seeds.crash_seeds())
    for case in all_cases():
        if case.op == "PackedGather" or case.inputs["A"].size * 4 <= 1 << 20:
            blobs.extend(fuzz_seeds.seeds_from_model(case.model(), case.feed()))
    for i, blob in enumerate(blobs):
        (seeds / f"seed{i}").write_bytes(blob)
    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1", ASAN_OPTIONS="detect_leaks=1")
    env.pop("LD_PRELOAD", None)
    r = subprocess.run([exe, str(seeds), os.path.join(CSRC, "fuzz", "regressions")], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WRONG RESULT" not in r.stderr
    assert f"replayed {len(blobs) + len(os.listdir(os.path.join(CSRC, 'fuzz', 'regressions')))} inputs" in r.stdout
