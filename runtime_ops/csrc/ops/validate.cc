// The contract checks of the four ops (see validate.h): attributes first, then every tensor's type
// and exact shape against the attributes, then the data the kernels index with.
#include "validate.h"

#include <cmath>
#include <cstring>

namespace qc {

std::string shape_str(const std::vector<int64_t> &shape) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    return s.str();
}

static void expect_shape(const char *op, const char *what, const TensorView &t, const std::vector<int64_t> &shape) {
    if (t.shape != shape) fail(op, what, " has shape ", shape_str(t.shape), ", expected ", shape_str(shape));
}

static void expect_type(const char *op, const char *what, const TensorView &t, int type, const char *type_name) {
    if (t.type != type) fail(op, what, " must be ", type_name, " (element type ", t.type, ")");
}

static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: normalize
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; --exp; }
            bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

std::vector<float> to_float(const char *op, const char *what, const TensorView &t) {
    if (t.type != kFloat && t.type != kFloat16)
        fail(op, what, " must be float32 or float16 (element type ", t.type, ")");
    std::vector<float> out(t.count);
    if (t.type == kFloat) {
        if (t.count) std::memcpy(out.data(), t.data, t.count * sizeof(float));
    } else {
        const uint16_t *h = t.as<uint16_t>();
        for (size_t i = 0; i < t.count; ++i) out[i] = half_to_float(h[i]);
    }
    return out;
}

bool all_finite(const float *x, size_t n) {
    // NaN and +-Inf have all exponent bits set: min over the cleared exponent bits is 0 then
    // (an integer reduction, vectorized: this runs on every activation tensor).
    uint32_t m = 0x7F800000u;
    for (size_t i = 0; i < n; ++i) {
        uint32_t b;
        std::memcpy(&b, x + i, 4);
        const uint32_t e = ~b & 0x7F800000u;
        m = e < m ? e : m;
    }
    return m != 0;
}

// ------------------------------------------------------------------------------------ MatMul ops
MatMulAttrs validate_matmul_attrs(int kind, const char *op, Attr K, Attr N, Attr group_size, Attr bits,
                                  Attr format_version, Attr accuracy_level) {
    MatMulAttrs a;
    a.kind = kind;
    if (!K.present) fail(op, "missing required int attribute 'K'");
    if (!N.present) fail(op, "missing required int attribute 'N'");
    const int64_t version = format_version.present ? format_version.value : kFormatVersion;
    if (version != kFormatVersion) fail(op, "unknown format_version ", version, " (this library reads 1)");
    a.K = K.value;
    a.N = N.value;
    if (a.K <= 0 || a.N <= 0) fail(op, "K and N must be positive (K=", a.K, ", N=", a.N, ")");
    if (a.K > kMaxDim || a.N > kMaxDim) fail(op, "K or N too large (K=", a.K, ", N=", a.N, ", at most 2^31)");
    a.group_size = group_size.present ? group_size.value : a.K;
    if (a.group_size <= 0) fail(op, "group_size must be positive, got ", a.group_size);
    a.level = accuracy_level.present ? accuracy_level.value : 0;
    if (a.level != 0 && a.level != 4) fail(op, "accuracy_level must be 0 or 4, got ", a.level);
    if (kind == QC_TERNARY || kind == QC_INT4) {
        a.bits = kind == QC_TERNARY ? 2 : 4;
    } else {
        if (!bits.present) fail(op, "missing required int attribute 'bits'");
        a.bits = bits.value;
        const int64_t lo = kind == QC_BINARY ? 1 : 2;
        if (a.bits < lo || a.bits > 4) fail(op, "bits must be in ", lo, "..4, got ", a.bits);
    }
    const int64_t code_bits = kind == QC_TERNARY ? 2 : kind == QC_BINARY ? 1 : a.bits;
    a.G = ceil_div_nonneg(a.K, a.group_size);
    a.row_bytes = ceil_div_nonneg(a.K * code_bits, 8);  // K <= 2^31, code_bits <= 4: no overflow
    return a;
}

qc_matmul_desc MatMulWeights::desc(const MatMulAttrs &a) const {
    qc_matmul_desc d{};
    d.kind = a.kind;
    d.K = a.K; d.N = a.N; d.group_size = a.group_size; d.bits = (int)a.bits; d.accuracy_level = (int)a.level;
    d.packed = packed;
    d.scales = scales.data();
    d.n_out = n_out;
    d.outlier_idx = n_out ? outlier_idx : nullptr;
    d.outlier_w = n_out ? outlier_w.data() : nullptr;
    d.bias = bias.empty() ? nullptr : bias.data();
    d.zero_points = zero_points;
    return d;
}

MatMulWeights validate_matmul_weights(const char *op, const MatMulAttrs &a, const TensorView *w) {
    const TensorView &packed = w[1], &scales = w[2], &bias = w[3], &oidx = w[4], &ow = w[5];
    if (!packed.present || !scales.present) fail(op, "inputs 1 and 2 are required");
    // The function fallback cannot run a node with inputs left out, so the kernel refuses them too
    // (one verdict with and without the library): "no bias" is a zero bias, "no outliers" [0], [0, N].
    if (!bias.present || !oidx.present || !ow.present)
        fail(op, "inputs 3-5 (bias, outlier_idx, outlier_w) are required: a zero bias [N] and an empty "
                 "outlier pair ([0], [0, N]) where there are none");
    expect_type(op, "packed weights (input 1)", packed, kUint8, "uint8");
    if (a.kind == QC_BINARY) {
        expect_shape(op, "W_packed [bits, N, ceil(K/8)]", packed, {a.bits, a.N, a.row_bytes});
        expect_shape(op, "alphas [bits, N, G]", scales, {a.bits, a.N, a.G});
    } else if (a.kind == QC_TERNARY) {
        expect_shape(op, "W_packed [N, ceil(K/4)]", packed, {a.N, a.row_bytes});
        expect_shape(op, "scales [N, G]", scales, {a.N, a.G});
    } else if (a.kind == QC_INT4) {
        expect_shape(op, "W_packed [N, ceil(K/2)]", packed, {a.N, a.row_bytes});
        expect_shape(op, "scales [N, G]", scales, {a.N, a.G});
        const TensorView &zp = w[6];
        if (!zp.present) fail(op, "input 6 (zero_points) is required: 4-bit zero points [N, ceil(G/2)] (all 8 for symmetric codes)");
        expect_type(op, "zero_points (input 6)", zp, kUint8, "uint8");
        expect_shape(op, "zero_points [N, ceil(G/2)]", zp, {a.N, ceil_div_nonneg(a.G, 2)});
    } else {
        expect_shape(op, "indices [N, ceil(K*bits/8)]", packed, {a.N, a.row_bytes});
        expect_shape(op, "codebook [N, 2^bits]", scales, {a.N, int64_t(1) << a.bits});
    }
    if (scales.type != kFloat && scales.type != kFloat16)
        fail(op, "input 2 (scales) must be float32 or float16 (element type ", scales.type, ")");
    expect_type(op, "bias", bias, kFloat, "float32");
    expect_shape(op, "bias [N]", bias, {a.N});
    expect_type(op, "outlier_idx", oidx, kInt64, "int64");
    expect_type(op, "outlier_w", ow, kFloat16, "float16");
    if (oidx.shape.size() != 1) fail(op, "outlier_idx must be 1-D, got ", shape_str(oidx.shape));
    const int64_t n_out = oidx.shape[0];
    expect_shape(op, "outlier_w [n_out, N]", ow, {n_out, a.N});
    for (int64_t j = 0; j < n_out; ++j) {
        const int64_t k = oidx.as<int64_t>()[j];
        if (k < 0 || k >= a.K) fail(op, "outlier_idx[", j, "] = ", k, " is outside [0, K=", a.K, ")");
    }
    // Only now, every shape known to match the tensors: copies sized by those tensors.
    MatMulWeights m;
    m.packed = packed.as<uint8_t>();
    if (a.kind == QC_INT4) m.zero_points = w[6].as<uint8_t>();
    m.scales = to_float(op, "input 2 (scales)", scales);
    m.finite_weights = all_finite(m.scales.data(), m.scales.size());
    m.bias.assign(bias.as<float>(), bias.as<float>() + bias.count);
    if (n_out) {
        m.n_out = n_out;
        m.outlier_idx = oidx.as<int64_t>();
        m.outlier_w = to_float(op, "outlier_w", ow);
    }
    return m;
}

int64_t validate_matmul_activation(const char *op, const MatMulAttrs &a, const TensorView &A) {
    if (!A.present) fail(op, "input 0 (A) is required");
    expect_type(op, "A", A, kFloat, "float32");
    if (A.shape.empty()) fail(op, "A must have rank >= 1");
    if (A.shape.back() != a.K) fail(op, "A has shape ", shape_str(A.shape), " but K=", a.K);
    return (int64_t)(A.count / (size_t)a.K);
}

// ---------------------------------------------------------------------------------- PackedGather
GatherAttrs validate_gather_attrs(const char *op, Attr D, Attr group_size, Attr format_version) {
    GatherAttrs a;
    if (!D.present) fail(op, "missing required int attribute 'D'");
    const int64_t version = format_version.present ? format_version.value : kFormatVersion;
    if (version != kFormatVersion) fail(op, "unknown format_version ", version, " (this library reads 1)");
    a.D = D.value;
    if (a.D <= 0 || a.D > kMaxDim) fail(op, "D must be in 1..2^31, got ", a.D);
    a.group_size = group_size.present ? group_size.value : a.D;
    if (a.group_size <= 0) fail(op, "group_size must be positive, got ", a.group_size);
    a.G = ceil_div_nonneg(a.D, a.group_size);
    return a;
}

GatherTable validate_gather_table(const char *op, const GatherAttrs &a, const TensorView *t) {
    const TensorView &table = t[0], &off = t[1], &rbits = t[2], &sc = t[3];
    if (!table.present || !off.present || !rbits.present || !sc.present) fail(op, "inputs 0..3 are required");
    expect_type(op, "table", table, kUint8, "uint8");
    expect_type(op, "row_offsets", off, kInt64, "int64");
    expect_type(op, "row_bits", rbits, kUint8, "uint8");
    if (table.shape.size() != 1) fail(op, "table must be 1-D, got ", shape_str(table.shape));
    if (rbits.shape.size() != 1) fail(op, "row_bits must be 1-D, got ", shape_str(rbits.shape));
    const int64_t V = rbits.shape[0];
    if (V < 1) fail(op, "the table has no rows (row_bits is empty)");
    expect_shape(op, "row_offsets [V+1]", off, {V + 1});
    expect_shape(op, "scales [V, G]", sc, {V, a.G});
    if (sc.type != kFloat && sc.type != kFloat16)
        fail(op, "scales must be float32 or float16 (element type ", sc.type, ")");
    if (const char *err = qc_packed_gather_check(rbits.as<uint8_t>(), off.as<int64_t>(), V, table.shape[0], a.D))
        fail(op, err);
    GatherTable g;
    g.V = V;
    g.total_bytes = table.shape[0];
    g.table = table.as<uint8_t>();
    g.row_bits = rbits.as<uint8_t>();
    g.row_offsets = off.as<int64_t>();
    g.scales = to_float(op, "scales", sc);
    return g;
}

void validate_gather_indices(const char *op, const TensorView &idx) {
    if (!idx.present) fail(op, "input 4 (indices) is required");
    if (idx.type != kInt64 && idx.type != kInt32) fail(op, "indices must be int32 or int64");
}

std::vector<int64_t> gather_output_shape(const char *op, const GatherAttrs &a, const TensorView &idx) {
    int64_t total = 0;
    if (__builtin_mul_overflow((int64_t)idx.count, a.D, &total) || total > (INT64_MAX >> 2))
        fail(op, "output of ", idx.count, " x ", a.D, " elements is too large");
    std::vector<int64_t> shape = idx.shape;
    shape.push_back(a.D);
    return shape;
}

}  // namespace qc
