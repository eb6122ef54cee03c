# qcompiler: every target does its own set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: all setup test demo mt-model mt-qat wheel clean

all: setup

# Create the venv and install the project (editable; builds the native library).
$(STAMP): pyproject.toml setup.py constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

setup: $(STAMP) native

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m models.demo

# The English -> French Marian model trained on gettext catalogs (2000 steps, about 35 minutes on two idle cores;
# cached under ~/.cache/qcompiler/models) and its Optimum export. The num2words toy: models.mt.train.
mt-model: setup
	$(PY) -m models.mt.train_marian --export

# Ternary QAT of the MT model from its torch source (600 steps, about 7.5 minutes on one thread),
# compiled and compared with FP32 and calibrated recovery on 300 held-out pairs.
mt-qat: setup
	$(PY) -m models.mt.qat --scheme ternary --steps 600

# Build the sdist and the wheel from it, repair it (auditwheel), install it into fresh venvs without
# torch and check size, compile, native run, the missing-extra message and the [train] extra.
# WHEEL_PYTHONS="python3.11 python3.12 python3.13" to try more interpreters.
wheel: setup
	bash tests/packaging/check_wheel.sh

clean:
	rm -rf build $(VENV) .pytest_cache

include runtime_ops/runtime_ops.mk
