# runtime_ops: the native op library. Included by the top-level Makefile.
#   make native     incremental build of runtime_ops/_lib/libqcompiler_ops.so (fetches headers)
#   make asan       build with -fsanitize=address,undefined; run the C harness, the glue and corrupt-input tests
#   make neon-test  cross-compile the NEON kernels (aarch64 gcc) and test them under qemu-user
#   make fuzz       libFuzzer (clang, installed if missing) on the ops' checks + kernels for FUZZ_TIME
#                   seconds (default 600) at nice 10; crashes land in build/runtime_ops-fuzz/crashes
ORT_HEADERS_DIR ?= $(HOME)/.cache/qcompiler/onnxruntime-headers-1.21
RT_BUILD := build/runtime_ops
RT_ASAN_BUILD := build/runtime_ops-asan
RT_LIB := runtime_ops/_lib/libqcompiler_ops.so
RT_HEADER_STAMP := $(ORT_HEADERS_DIR)/include/onnxruntime_cxx_api.h
RT_SOURCES := runtime_ops/CMakeLists.txt runtime_ops/csrc/exports.map \
	$(wildcard runtime_ops/csrc/*/*.c runtime_ops/csrc/*/*.cc runtime_ops/csrc/*/*.h)

.PHONY: native asan neon-test rt-cmake fuzz fuzz-build fuzz-seeds rt-clang

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
	$(PY) tests/runtime_ops/fuzz_seeds.py $(RT_ASAN_BUILD)/fuzz-seeds >/dev/null
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
		$(RT_ASAN_BUILD)/qc_fuzz_replay $(RT_ASAN_BUILD)/fuzz-seeds $(wildcard runtime_ops/csrc/fuzz/regressions)
	QCOMPILER_OPS_LIB=$(CURDIR)/$(RT_ASAN_BUILD)/libqcompiler_ops.so \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	QCOMPILER_ASAN=1 $(PY) -m pytest -q -p no:cacheprovider tests/runtime_ops/test_glue.py \
		tests/runtime_ops/test_corrupt_inputs.py tests/runtime_ops/test_concurrency.py \
		tests/runtime_ops/test_hostile_verdicts.py tests/runtime_ops/test_hostile_regressions.py

# ---------------------------------------------------------------------------------- fuzzing
RT_FUZZ_BUILD := build/runtime_ops-fuzz
RT_FUZZ := $(RT_FUZZ_BUILD)/fuzz_ops
FUZZ_TIME ?= 600
FUZZ_CC ?= clang
FUZZ_CXX ?= clang++
FUZZ_FLAGS := -O1 -g -ffp-contract=off -fno-math-errno -fno-omit-frame-pointer \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined
RT_FUZZ_KERNELS := $(filter-out %/dispatch.c,$(wildcard runtime_ops/csrc/kernels/*.c)) runtime_ops/csrc/kernels/dispatch.c

rt-clang:
	@echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' > /tmp/qc_fuzz_probe.c; \
	$(FUZZ_CC) -fsanitize=fuzzer /tmp/qc_fuzz_probe.c -o /tmp/qc_fuzz_probe 2>/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-14-dev; }

$(RT_FUZZ): $(RT_SOURCES) runtime_ops/csrc/fuzz/fuzz_ops.cc | rt-clang
	mkdir -p $(RT_FUZZ_BUILD)/obj
	for f in $(RT_FUZZ_KERNELS); do \
		case $$f in *avx2*) isa="-mavx2 -mfma";; *avx512*) isa="-mavx2 -mfma -mavx512f -mavx512bw -mavx512vl -mavx512vnni";; *) isa="";; esac; \
		$(FUZZ_CC) -std=c11 $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $$isa -c $$f -o $(RT_FUZZ_BUILD)/obj/$$(basename $$f).o || exit 1; \
	done
	$(FUZZ_CXX) -std=c++17 $(FUZZ_FLAGS) -fsanitize=fuzzer runtime_ops/csrc/fuzz/fuzz_ops.cc runtime_ops/csrc/ops/validate.cc \
		$(RT_FUZZ_BUILD)/obj/*.o -lm -o $@

fuzz-build: $(RT_FUZZ)

fuzz-seeds:
	$(PY) tests/runtime_ops/fuzz_seeds.py $(RT_FUZZ_BUILD)/seeds --compiled

# The working corpus grows in $(RT_FUZZ_BUILD)/corpus; crash / timeout inputs go to .../crashes.
fuzz: $(RT_FUZZ) fuzz-seeds
	mkdir -p $(RT_FUZZ_BUILD)/corpus $(RT_FUZZ_BUILD)/crashes
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 nice -n 10 $(RT_FUZZ) -max_total_time=$(FUZZ_TIME) \
		-timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=$(RT_FUZZ_BUILD)/crashes/ \
		$(RT_FUZZ_BUILD)/corpus $(RT_FUZZ_BUILD)/seeds $(wildcard runtime_ops/csrc/fuzz/regressions)

neon-test:
	bash runtime_ops/neon_test.sh build/neon
