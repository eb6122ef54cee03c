# runtime_ops: the native op library. Included by the top-level Makefile.
#   make native     incremental build of runtime_ops/_lib/libqcompiler_ops.so (fetches headers)
#   make asan       build with -fsanitize=address,undefined; run the C harness, the glue and corrupt-input tests
#   make neon-test  cross-compile the NEON kernels (aarch64 gcc) and test them under qemu-user
ORT_HEADERS_DIR ?= $(HOME)/.cache/qcompiler/onnxruntime-headers-1.21
RT_BUILD := build/runtime_ops
RT_ASAN_BUILD := build/runtime_ops-asan
RT_LIB := runtime_ops/_lib/libqcompiler_ops.so
RT_HEADER_STAMP := $(ORT_HEADERS_DIR)/include/onnxruntime_cxx_api.h
RT_SOURCES := runtime_ops/CMakeLists.txt runtime_ops/csrc/exports.map \
	$(wildcard runtime_ops/csrc/*/*.c runtime_ops/csrc/*/*.cc runtime_ops/csrc/*/*.h)

.PHONY: native asan neon-test rt-cmake

native: $(RT_LIB)

$(RT_HEADER_STAMP):
	bash runtime_ops/fetch_ort_headers.sh "$(ORT_HEADERS_DIR)"

rt-cmake:
	@command -v cmake >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++; }

$(RT_LIB): $(RT_SOURCES) $(RT_HEADER_STAMP) | rt-cmake
	cmake -S runtime_ops -B $(RT_BUILD) -DCMAKE_BUILD_TYPE=Release -DORT_INCLUDE_DIR="$(ORT_HEADERS_DIR)/include" >/dev/null
	cmake --build $(RT_BUILD) -j2
	mkdir -p runtime_ops/_lib
	cp $(RT_BUILD)/libqcompiler_ops.so $@.tmp && mv $@.tmp $@

asan: $(RT_HEADER_STAMP) | rt-cmake
	cmake -S runtime_ops -B $(RT_ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQC_SANITIZE=ON \
		-DORT_INCLUDE_DIR="$(ORT_HEADERS_DIR)/include" >/dev/null
	cmake --build $(RT_ASAN_BUILD) -j2
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 $(RT_ASAN_BUILD)/qc_kernel_test
	QCOMPILER_OPS_LIB=$(CURDIR)/$(RT_ASAN_BUILD)/libqcompiler_ops.so \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	QCOMPILER_ASAN=1 $(PY) -m pytest -q -p no:cacheprovider tests/runtime_ops/test_glue.py \
		tests/runtime_ops/test_corrupt_inputs.py

neon-test:
	bash runtime_ops/neon_test.sh build/neon
