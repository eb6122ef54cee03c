// The contract checks of the ai.qcompiler ops (runtime_ops/formats.py), one routine per op, on plain
// tensor views: no onnxruntime types, so the glue and the fuzz target (csrc/fuzz) run the same code.
// Every check uses overflow-checked 64-bit arithmetic and happens before any allocation; the only
// buffers the glue then allocates are sized by the tensors it was given, never by attributes alone.
#pragma once
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kernels/qc_kernels.h"

namespace qc {

constexpr int64_t kFormatVersion = 1;
constexpr int64_t kMaxDim = int64_t(1) << 31;  // K, N, D: larger is refused (the kernels index in int)

// ONNX TensorProto element types the ops read (same numbers as ONNXTensorElementDataType).
enum DType : int { kUndefined = 0, kFloat = 1, kUint8 = 2, kInt8 = 3, kInt32 = 6, kInt64 = 7, kFloat16 = 10 };

// A user mistake in the model (shapes, packing, attributes): becomes ORT_INVALID_ARGUMENT.
struct ContractError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] inline void fail(const char *op, Args &&...args) {
    std::ostringstream s;
    s << op << ": ";
    (s << ... << args);
    throw ContractError(s.str());
}

std::string shape_str(const std::vector<int64_t> &shape);

// An input as seen by the kernel: present or not, its element type, shape and data. count is the
// product of the dimensions (the host guarantees the data holds that many elements).
struct TensorView {
    bool present = false;
    int type = kUndefined;
    std::vector<int64_t> shape;
    const void *data = nullptr;
    size_t count = 0;
    template <typename T>
    const T *as() const { return static_cast<const T *>(data); }
};

// An int attribute as read from the node: absent or a value.
struct Attr {
    bool present = false;
    int64_t value = 0;
};

// ceil(a / b) for a >= 0, b > 0 without the overflow of (a + b - 1) / b.
inline int64_t ceil_div_nonneg(int64_t a, int64_t b) { return a / b + (a % b != 0); }

std::vector<float> to_float(const char *op, const char *what, const TensorView &t);  // float32 or float16
bool all_finite(const float *x, size_t n);

// ------------------------------------------------------------------ TernaryMatMul, BinaryCodeMatMul,
// CodebookMatMul, Int4MatMul (kind = QC_TERNARY / QC_BINARY / QC_CODEBOOK / QC_INT4)
struct MatMulAttrs {
    int kind = QC_TERNARY;
    int64_t K = 0, N = 0, group_size = 0, bits = 0, level = 0;
    int64_t G = 0, row_bytes = 0;  // derived: scale groups per channel, bytes per packed row
};
MatMulAttrs validate_matmul_attrs(int kind, const char *op, Attr K, Attr N, Attr group_size, Attr bits,
                                  Attr format_version, Attr accuracy_level);

// The weights (inputs 1..5 of w[6], 1..6 of w[7] for Int4MatMul; w[0] unused) checked and converted
// to what the kernels read.
// The fp32 copies are sized by the tensors. finite_weights: every scale/alpha/centroid is finite.
struct MatMulWeights {
    const uint8_t *packed = nullptr, *zero_points = nullptr;
    std::vector<float> scales, bias, outlier_w;
    int64_t n_out = 0;
    const int64_t *outlier_idx = nullptr;
    bool finite_weights = true;
    qc_matmul_desc desc(const MatMulAttrs &a) const;
};
MatMulWeights validate_matmul_weights(const char *op, const MatMulAttrs &a, const TensorView *w);
// A float32 [..., K]: returns M (rows).
int64_t validate_matmul_activation(const char *op, const MatMulAttrs &a, const TensorView &A);

// ---------------------------------------------------------------------------------- PackedGather
struct GatherAttrs {
    int64_t D = 0, group_size = 0, G = 0;
};
GatherAttrs validate_gather_attrs(const char *op, Attr D, Attr group_size, Attr format_version);

// The table inputs t[0..3] (table, row_offsets, row_bits, scales), checked; scales as fp32.
struct GatherTable {
    int64_t V = 0, total_bytes = 0;
    const uint8_t *table = nullptr, *row_bits = nullptr;
    const int64_t *row_offsets = nullptr;
    std::vector<float> scales;
};
GatherTable validate_gather_table(const char *op, const GatherAttrs &a, const TensorView *t);
// Indices: int32 or int64, any shape; the range is checked by the kernel as it reads them.
void validate_gather_indices(const char *op, const TensorView &idx);
// Output shape [*indices.shape, D], its element count checked against overflow.
std::vector<int64_t> gather_output_shape(const char *op, const GatherAttrs &a, const TensorView &idx);

}  // namespace qc
