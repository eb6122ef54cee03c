// libFuzzer target over the ops' contract checks (csrc/ops/validate.cc, the code the onnxruntime
// glue runs) and the kernel entry points behind them (qc_matmul_create / qc_matmul_run /
// qc_packed_gather), without onnxruntime. An input that the checks accept must then run without
// a sanitizer report and give the right result: the scalar level-0 kernel equal to a reference
// written here (the contract's fp32 order) bit for bit, NaN and Inf included; every other ISA
// variant within the contract's bound at level 0 and equal to the scalar one bit for bit at level
// 4; PackedGather equal to a direct decode. A wrong result aborts (a "crash" for the fuzzer).
//
// Input layout (fuzz_format.md beside this file; tests/runtime_ops/fuzz_seeds.py writes seeds):
//   op byte, 6 attribute specs, 5-6 tensor specs, then the tensors' bytes in order.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../ops/validate.h"

namespace {

constexpr size_t kMaxElements = size_t(1) << 16;  // per tensor: keeps each run fast

struct Reader {
    const uint8_t *p;
    size_t n;
    bool ok = true;
    uint8_t u8() {
        if (!n) { ok = false; return 0; }
        --n;
        return *p++;
    }
    uint64_t le(int bytes) {
        uint64_t v = 0;
        for (int i = 0; i < bytes; ++i) v |= (uint64_t)u8() << (8 * i);
        return v;
    }
};

qc::Attr read_attr(Reader &r) {
    qc::Attr a;
    switch (r.u8() % 4) {
    case 0: return a;  // absent
    case 1: a.value = (int8_t)r.u8(); break;
    case 2: a.value = (int64_t)r.le(8); break;
    default: a.value = (int64_t)r.le(2); break;
    }
    a.present = true;
    return a;
}

// dtype codes of the input: 0 = the contract's, else one of these
const int kDtypes[] = {qc::kFloat, qc::kUint8, qc::kInt8, qc::kInt32, qc::kInt64, qc::kFloat16};
size_t dtype_size(int t) {
    switch (t) {
    case qc::kFloat: case qc::kInt32: return 4;
    case qc::kInt64: return 8;
    case qc::kFloat16: return 2;
    default: return 1;
    }
}

struct Spec {
    int mode = 0;  // 0 contract shape, 1 absent, 2 explicit, 3 contract shape with dim 0 replaced
    std::vector<int64_t> dims;
    int dtype = 0;  // 0 contract
    int content = 0;  // 0 raw bytes, 1 small ints (one byte each), 2 running sum of small bytes
    int64_t dim0 = 0;
};

Spec read_spec(Reader &r) {
    Spec s;
    s.mode = r.u8() % 4;
    if (s.mode == 2) {
        const int rank = r.u8() % 5;
        for (int i = 0; i < rank; ++i) s.dims.push_back((int64_t)r.le(2));
    } else if (s.mode == 3) {
        s.dim0 = r.u8();
    }
    const uint8_t d = r.u8();
    s.dtype = d == 0 ? 0 : kDtypes[(d - 1) % 6];
    s.content = r.u8() % 3;
    return s;
}

// Owns a tensor's bytes; the view is what the checks and kernels see.
struct Tensor {
    qc::TensorView v;
    std::vector<uint8_t> bytes;
};

bool make_tensor(const Spec &s, std::vector<int64_t> contract_shape, int contract_dtype, Reader &data, Tensor &t) {
    if (s.mode == 1) return true;  // absent
    std::vector<int64_t> shape = s.mode == 2 ? s.dims : contract_shape;
    if (s.mode == 3 && !shape.empty()) shape[0] = s.dim0;
    size_t count = 1;
    for (int64_t d : shape) {
        if (d < 0 || (d && count > kMaxElements / (size_t)d)) return false;
        count *= (size_t)d;
    }
    if (count > kMaxElements) return false;
    const int type = s.dtype ? s.dtype : contract_dtype;
    const size_t es = dtype_size(type);
    t.bytes.assign(count * es + 1, 0);
    if (s.content == 0) {
        for (size_t i = 0; i < count * es; ++i) t.bytes[i] = data.n ? data.u8() : 0;
    } else {
        int64_t run = 0;
        for (size_t i = 0; i < count; ++i) {
            const int64_t b = data.n ? (int8_t)data.u8() : 0;
            run += b < 0 ? -b : b;
            int64_t v = s.content == 1 ? b : run;
            if (type == qc::kFloat) {
                float f = (float)v / 8.f;
                std::memcpy(&t.bytes[i * 4], &f, 4);
            } else if (type == qc::kFloat16) {
                const uint16_t h = (uint16_t)(0x3C00u + ((uint64_t)v << 4));  // near 1.0, any sign pattern
                std::memcpy(&t.bytes[i * 2], &h, 2);
            } else {
                std::memcpy(&t.bytes[i * es], &v, es);  // little-endian truncation
            }
        }
    }
    t.v.present = true;
    t.v.type = type;
    t.v.shape = shape;
    t.v.count = count;
    t.v.data = t.bytes.data();
    return true;
}

[[noreturn]] void wrong(const char *what, long long a, long long b) {
    std::fprintf(stderr, "WRONG RESULT: %s (%lld, %lld)\n", what, a, b);
    std::abort();
}

void serial_for(void *, qc_task_fn fn, void *ctx, size_t total) {
    for (size_t i = 0; i < total; ++i) fn(ctx, i);
}

// ----------------------------------------------------------------------- MatMul reference
// W [K][N] as the reference dequantizes it (formats.dequantize), outlier rows zeroed.
std::vector<float> dequantize(const qc::MatMulAttrs &a, const qc::MatMulWeights &m, bool zero_outliers) {
    const int64_t K = a.K, N = a.N, rb = a.row_bytes;
    std::vector<float> W((size_t)(K * N), 0.f);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
            const int64_t g = k / a.group_size;
            float w;
            if (a.kind == QC_TERNARY) {
                const unsigned c = (m.packed[n * rb + k / 4] >> (2 * (k % 4))) & 3u;
                static const float val[4] = {0.f, 1.f, 0.f, -1.f};
                w = m.scales[(size_t)(n * a.G + g)] * val[c];
            } else if (a.kind == QC_BINARY) {
                w = 0.f;
                for (int64_t i = 0; i < a.bits; ++i) {
                    const unsigned bit = (m.packed[(i * N + n) * rb + k / 8] >> (k % 8)) & 1u;
                    w = w + m.scales[(size_t)((i * N + n) * a.G + g)] * (bit ? 1.f : -1.f);
                }
            } else if (a.kind == QC_INT4) {
                const unsigned c = (m.packed[n * rb + k / 2] >> (4 * (k % 2))) & 15u;
                const unsigned z = (m.zero_points[n * ((a.G + 1) / 2) + g / 2] >> (4 * (g % 2))) & 15u;
                w = m.scales[(size_t)(n * a.G + g)] * (float)((int)c - (int)z);
            } else {
                const int64_t b = a.bits, pos = k * b;
                unsigned v = m.packed[n * rb + pos / 8];
                if (pos % 8 + b > 8 && pos / 8 + 1 < rb) v |= (unsigned)m.packed[n * rb + pos / 8 + 1] << 8;
                const unsigned idx = (v >> (pos % 8)) & ((1u << b) - 1u);
                w = m.scales[(size_t)((n << b) + idx)];
            }
            W[(size_t)(k * N + n)] = w;
        }
    for (int64_t j = 0; zero_outliers && j < m.n_out; ++j)
        for (int64_t n = 0; n < N; ++n) W[(size_t)(m.outlier_idx[j] * N + n)] = 0.f;
    return W;
}

void reference(const qc::MatMulAttrs &a, const qc::MatMulWeights &m, const std::vector<float> &W, const float *A,
               int64_t M, float *Y) {
    const int64_t K = a.K, N = a.N;
    for (int64_t r = 0; r < M; ++r)
        for (int64_t n = 0; n < N; ++n) {
            float y = 0.f;
            for (int64_t k = 0; k < K; ++k) y = y + A[r * K + k] * W[(size_t)(k * N + n)];
            for (int64_t j = 0; j < m.n_out; ++j) y = y + A[r * K + m.outlier_idx[j]] * m.outlier_w[(size_t)(j * N + n)];
            if (!m.bias.empty()) y = y + m.bias[(size_t)n];
            Y[r * N + n] = y;
        }
}

// formats._table_weight_abs: the largest |weight| a table lookup of element k scales
double table_weight_abs(const qc::MatMulAttrs &a, const qc::MatMulWeights &m, int64_t k, int64_t n) {
    const int64_t g = k / a.group_size;
    if (a.kind == QC_TERNARY) return std::fabs(m.scales[(size_t)(n * a.G + g)]);
    if (a.kind == QC_INT4) return 15.0 * std::fabs(m.scales[(size_t)(n * a.G + g)]);
    double x = 0;
    if (a.kind == QC_BINARY) {
        for (int64_t i = 0; i < a.bits; ++i) x += std::fabs(m.scales[(size_t)((i * a.N + n) * a.G + g)]);
    } else {
        for (int64_t e = 0; e < (int64_t(1) << a.bits); ++e) x = std::fmax(x, std::fabs(m.scales[(size_t)((n << a.bits) + e)]));
    }
    return x;
}

bool same_bits(float x, float y) {
    if (std::isnan(x) || std::isnan(y)) return std::isnan(x) && std::isnan(y);
    uint32_t a, b;
    std::memcpy(&a, &x, 4);
    std::memcpy(&b, &y, 4);
    return a == b;
}

std::vector<float> run(const qc_matmul_desc &d, const qc_isa *isa, const float *A, int64_t M, int64_t N,
                       const char **path = nullptr) {
    qc_matmul *w = qc_matmul_create(&d, isa);
    if (!w) wrong("qc_matmul_create failed on accepted input", 0, 0);
    if (path) *path = qc_matmul_path_for(w, M);  // a static string
    std::vector<float> Y((size_t)(M * N) + 1, 0.f);
    if (qc_matmul_run(w, A, M, Y.data(), serial_for, nullptr)) wrong("qc_matmul_run failed", 0, 0);
    qc_matmul_free(w);
    return Y;
}

void level4_bound(const qc::MatMulAttrs &a, const qc::MatMulWeights &m, const float *A, int64_t rows, int kind,
                  const std::vector<float> &bound, const std::vector<float> &ref, const std::vector<float> &y4,
                  int forced);

void fuzz_matmul(int kind, Reader &r) {
    const char *op = kind == QC_TERNARY ? "TernaryMatMul" : kind == QC_BINARY ? "BinaryCodeMatMul"
                     : kind == QC_INT4  ? "Int4MatMul" : "CodebookMatMul";
    const qc::Attr K = read_attr(r), N = read_attr(r), gs = read_attr(r), bits = read_attr(r), fv = read_attr(r),
                   lvl = read_attr(r);
    const int64_t M = r.u8() % 9;
    const int n_in = kind == QC_INT4 ? 7 : 6;  // Int4MatMul: + zero_points
    Spec spec[7];
    for (int i = 0; i < n_in; ++i) spec[i] = read_spec(r);
    if (!r.ok) return;
    qc::MatMulAttrs a;
    try {
        a = qc::validate_matmul_attrs(kind, op, K, N, gs, bits, fv, lvl);
    } catch (const qc::ContractError &) {
        return;
    }
    // contract shapes for the tensors the spec leaves to the contract (attributes now sane)
    const int64_t G = a.G, n_out = spec[4].mode == 2 && !spec[4].dims.empty() ? spec[4].dims[0] : 2;
    std::vector<int64_t> packed_shape = kind == QC_BINARY ? std::vector<int64_t>{a.bits, a.N, a.row_bytes}
                                                          : std::vector<int64_t>{a.N, a.row_bytes};
    std::vector<int64_t> scale_shape = kind == QC_BINARY   ? std::vector<int64_t>{a.bits, a.N, G}
                                       : kind == QC_TERNARY || kind == QC_INT4 ? std::vector<int64_t>{a.N, G}
                                                            : std::vector<int64_t>{a.N, int64_t(1) << a.bits};
    const std::vector<int64_t> shapes[7] = {{M, a.K}, packed_shape, scale_shape, {a.N}, {n_out}, {n_out, a.N},
                                            {a.N, (G + 1) / 2}};
    const int dtypes[7] = {qc::kFloat, qc::kUint8, qc::kFloat16, qc::kFloat, qc::kInt64, qc::kFloat16, qc::kUint8};
    Tensor t[7];
    for (int i = 0; i < n_in; ++i)
        if (!make_tensor(spec[i], shapes[i], dtypes[i], r, t[i])) return;
    if (t[4].v.present && t[4].v.type == qc::kInt64 && a.K > 0)  // mostly valid outlier indices
        for (size_t j = 0; j < t[4].v.count; ++j) {
            int64_t *p = (int64_t *)t[4].bytes.data() + j;
            if (spec[4].content != 0) *p = ((*p % (a.K + 1)) + (a.K + 1)) % (a.K + 1);
        }
    qc::TensorView w[7];
    for (int i = 0; i < n_in; ++i) w[i] = t[i].v;
    qc::MatMulWeights m;
    int64_t rows;
    try {
        m = qc::validate_matmul_weights(op, a, w);
        rows = qc::validate_matmul_activation(op, a, w[0]);
    } catch (const qc::ContractError &) {
        return;
    }
    if (rows * a.K * a.N > (int64_t(1) << 20)) return;  // valid but too slow for a fuzz case (harness, not a hang)
    const float *A = w[0].as<float>();
    const std::vector<float> W = dequantize(a, m, true);
    if (std::getenv("QC_FUZZ_DUMP")) {  // debugging aid: the accepted case's values
        std::fprintf(stderr, "M=%lld K=%lld N=%lld gs=%lld n_out=%lld\nA:", (long long)rows, (long long)a.K,
                     (long long)a.N, (long long)a.group_size, (long long)m.n_out);
        for (size_t i = 0; i < w[0].count; ++i) std::fprintf(stderr, " %g", A[i]);
        std::fprintf(stderr, "\nW[k][n]:");
        for (float x : W) std::fprintf(stderr, " %g", x);
        std::fprintf(stderr, "\noutliers:");
        for (int64_t j = 0; j < m.n_out; ++j) std::fprintf(stderr, " %lld", (long long)m.outlier_idx[j]);
        std::fprintf(stderr, "\n");
    }
    std::vector<float> ref((size_t)(rows * a.N) + 1, 0.f);
    reference(a, m, W, A, rows, ref.data());
    qc_matmul_desc d = m.desc(a);
    // level 0, scalar: the reference bit for bit, NaN/Inf included (what the glue runs on non-finite data)
    d.accuracy_level = 0;
    const std::vector<float> y0 = run(d, qc_isa_scalar(), A, rows, a.N);
    for (int64_t i = 0; i < rows * a.N; ++i)
        if (!same_bits(y0[(size_t)i], ref[(size_t)i])) wrong("scalar level 0 != reference", i, kind);
    const bool finite = m.finite_weights && qc::all_finite(A, w[0].count) &&
                        qc::all_finite(m.outlier_w.data(), m.outlier_w.size()) &&
                        qc::all_finite(m.bias.data(), m.bias.size()) && qc::all_finite(ref.data(), ref.size() - 1);
    if (!finite) return;  // the glue takes the scalar level-0 kernel there
    // the contract's bounds need |A| @ |W| (+ outliers); near fp32 overflow no order-free bound holds
    std::vector<float> bound((size_t)(rows * a.N) + 1, 0.f);
    double wabs_max = 0, aabs_max = 0;
    for (float x : W) wabs_max = std::fmax(wabs_max, std::fabs(x));
    for (float x : m.outlier_w) wabs_max = std::fmax(wabs_max, std::fabs(x));
    for (size_t i = 0; i < w[0].count; ++i) aabs_max = std::fmax(aabs_max, std::fabs(A[i]));
    for (float x : m.scales) wabs_max = std::fmax(wabs_max, std::fabs(x) * (double)a.bits);  // table scales
    // activation tables sum 3-4 activations: no bound once those sums can overflow
    if (aabs_max > 1e37 || aabs_max * wabs_max * (double)(a.K + m.n_out + 1) > 1e30) return;
    for (int64_t r0 = 0; r0 < rows; ++r0)
        for (int64_t n = 0; n < a.N; ++n) {
            double s = 0;
            for (int64_t k = 0; k < a.K; ++k) s += std::fabs(A[r0 * a.K + k]) * std::fabs(W[(size_t)(k * a.N + n)]);
            for (int64_t j = 0; j < m.n_out; ++j)
                s += std::fabs(A[r0 * a.K + m.outlier_idx[j]]) * std::fabs(m.outlier_w[(size_t)(j * a.N + n)]);
            double t = 0;  // + 2^-20 * |A| @ Wabs_table (formats.tolerance: fp32 tables of activation sums)
            for (int64_t k = 0; k < a.K; ++k) t += std::fabs(A[r0 * a.K + k]) * table_weight_abs(a, m, k, n);
            // + 2^-22 |bias|: the bias is added last (as the reference does) and that add rounds at the
            // output's magnitude, so a sum differing within the bound can land one output ulp away
            const double b = m.bias.empty() ? 0.0 : std::fabs(m.bias[(size_t)n]);
            bound[(size_t)(r0 * a.N + n)] = (float)(1e-4 * s + std::ldexp(t, -20) + std::ldexp(b, -22) + 1e-6);
        }
    const qc_isa *isas[] = {qc_isa_scalar(), qc_isa_avx2(), qc_isa_avxvnni(), qc_isa_avx512(), qc_isa_avx512_novbmi(), qc_isa_amx(),
                            qc_isa_neon()};
    for (const qc_isa *isa : isas) {
        if (!isa) continue;
        const std::vector<float> y = run(d, isa, A, rows, a.N);
        for (int64_t i = 0; i < rows * a.N; ++i)
            if (!(std::fabs((double)y[(size_t)i] - ref[(size_t)i]) <= bound[(size_t)i] * 1.0001 + 1e-30)) {
                std::fprintf(stderr, "%s K=%lld N=%lld gs=%lld bits=%lld: y=%.9g ref=%.9g bound=%.9g\n", isa->name,
                             (long long)a.K, (long long)a.N, (long long)a.group_size, (long long)a.bits, y[(size_t)i],
                             ref[(size_t)i], bound[(size_t)i]);
                wrong("level 0 outside the contract's bound", i, kind);
            }
    }
    if (a.level != 4) return;
    d.accuracy_level = 4;
    // scalar on each path: the batched int8 path forced from one row, and off (QCOMPILER_GEMM_MIN_M
    // is read when the weights are prepacked); both within the level-4 bound
    const char *pl = nullptr, *pg = nullptr;
    setenv("QCOMPILER_GEMM_MIN_M", "0", 1);
    const std::vector<float> y4l = run(d, qc_isa_scalar(), A, rows, a.N, &pl);
    setenv("QCOMPILER_GEMM_MIN_M", "1", 1);
    const std::vector<float> y4g = run(d, qc_isa_scalar(), A, rows, a.N, &pg);
    // each variant forced, then at the default crossover (per int8 kernel): scalar's bits on the path it took
    for (int forced = 1; forced >= 0; --forced) {
        if (!forced) unsetenv("QCOMPILER_GEMM_MIN_M");
        for (const qc_isa *isa : isas) {
            if (!isa || isa == qc_isa_scalar()) continue;
            const char *path = nullptr;
            const std::vector<float> y = run(d, isa, A, rows, a.N, &path);
            const std::vector<float> *want = !std::strcmp(path, pg) ? &y4g : !std::strcmp(path, pl) ? &y4l : nullptr;
            if (!want) {
                if (isa->i8_gemm) wrong("level 4 ISA variant on a path scalar does not take", forced, kind);
                continue;  // a variant without the batched kernel declined it
            }
            for (int64_t i = 0; i < rows * a.N; ++i)
                if (!same_bits(y[(size_t)i], (*want)[(size_t)i]))
                    wrong(forced ? "level 4 ISA variant != scalar (batched path forced)" : "level 4 ISA variant != scalar", i, kind);
        }
    }
    level4_bound(a, m, A, rows, kind, bound, ref, y4l, 0);
    level4_bound(a, m, A, rows, kind, bound, ref, y4g, 1);
}

// The contract's level-4 bound on scalar's level-4 output y4 (forced: the batched path's).
void level4_bound(const qc::MatMulAttrs &a, const qc::MatMulWeights &m, const float *A, int64_t rows, int kind,
                  const std::vector<float> &bound, const std::vector<float> &ref, const std::vector<float> &y4,
                  int forced) {
    // level 4 bound: level 0 + (max|a| * sum|W| + max|W| * sum|a|) / 64 (outlier channels excluded from a)
    const std::vector<float> Wfull = dequantize(a, m, false);
    std::vector<uint8_t> is_out((size_t)a.K, 0);
    for (int64_t j = 0; j < m.n_out; ++j) is_out[(size_t)m.outlier_idx[j]] = 1;
    for (int64_t r0 = 0; r0 < rows; ++r0) {
        double amax = 0, asum = 0;
        for (int64_t k = 0; k < a.K; ++k)
            if (!is_out[(size_t)k]) {
                amax = std::fmax(amax, std::fabs(A[r0 * a.K + k]));
                asum += std::fabs(A[r0 * a.K + k]);
            }
        for (int64_t n = 0; n < a.N; ++n) {
            double wsum = 0, wmax = 0;
            for (int64_t k = 0; k < a.K; ++k) {  // Wabs as formats.weight_abs: outlier rows not zeroed
                double x = std::fabs(Wfull[(size_t)(k * a.N + n)]);
                if (kind == QC_BINARY) {  // Wabs = sum_i |alpha_i| for binary codes
                    x = 0;
                    for (int64_t i = 0; i < a.bits; ++i)
                        x += std::fabs(m.scales[(size_t)((i * a.N + n) * a.G + k / a.group_size)]);
                }
                wsum += x;
                wmax = std::fmax(wmax, table_weight_abs(a, m, k, n));
            }
            const double b = bound[(size_t)(r0 * a.N + n)] + (amax * wsum + wmax * asum) / 64.0;
            const size_t i = (size_t)(r0 * a.N + n);
            if (!(std::fabs((double)y4[i] - ref[i]) <= b * 1.001 + 1e-6)) {
                std::fprintf(stderr, "level 4%s K=%lld N=%lld gs=%lld bits=%lld M=%lld: y=%.9g ref=%.9g bound=%.9g\n",
                             forced ? " (batched path)" : "", (long long)a.K, (long long)a.N, (long long)a.group_size,
                             (long long)a.bits, (long long)rows, y4[i], ref[i], b);
                wrong(forced ? "level 4 outside the contract's bound (batched path)" : "level 4 outside the contract's bound",
                      (long long)i, kind);
            }
        }
    }
}

// ----------------------------------------------------------------------------- PackedGather
void fuzz_gather(Reader &r) {
    const char *op = "PackedGather";
    const qc::Attr D = read_attr(r), gs = read_attr(r), fv = read_attr(r);
    const int64_t V = r.u8() % 17, total = (int64_t)r.le(2) % 4096, n_idx = r.u8() % 33;
    Spec spec[5];
    for (auto &s : spec) s = read_spec(r);
    if (!r.ok) return;
    qc::GatherAttrs a;
    try {
        a = qc::validate_gather_attrs(op, D, gs, fv);
    } catch (const qc::ContractError &) {
        return;
    }
    const std::vector<int64_t> shapes[5] = {{total}, {V + 1}, {V}, {V, a.G}, {n_idx}};
    const int dtypes[5] = {qc::kUint8, qc::kInt64, qc::kUint8, qc::kFloat16, qc::kInt64};
    Tensor t[5];
    for (int i = 0; i < 5; ++i)
        if (!make_tensor(spec[i], shapes[i], dtypes[i], r, t[i])) return;
    if (t[2].v.present && t[2].v.type == qc::kUint8 && spec[2].content != 0)  // mostly valid bit widths
        for (size_t j = 0; j < t[2].v.count; ++j) t[2].bytes[j] = (uint8_t)(2u << (t[2].bytes[j] % 3));
    qc::TensorView v[5];
    for (int i = 0; i < 5; ++i) v[i] = t[i].v;
    qc::GatherTable g;
    std::vector<int64_t> out_shape;
    try {
        g = qc::validate_gather_table(op, a, v);
        qc::validate_gather_indices(op, v[4]);
        out_shape = qc::gather_output_shape(op, a, v[4]);
    } catch (const qc::ContractError &) {
        return;
    }
    size_t out_count = 1;
    for (int64_t d : out_shape) out_count *= (size_t)d;
    if (out_count > (size_t(1) << 22)) return;
    std::vector<float> out(out_count + 1, 0.f);
    const qc::TensorView &idx = v[4];
    const bool is64 = idx.type == qc::kInt64;
    const int64_t bad = qc_packed_gather(g.table, g.row_offsets, g.row_bits, g.scales.data(), g.V, a.D, a.group_size,
                                         is64 ? idx.as<int64_t>() : nullptr, is64 ? nullptr : idx.as<int32_t>(),
                                         (int64_t)idx.count, out.data());
    // direct decode: the bitstream rule, two's complement, times scales[r, d // group_size]
    for (size_t i = 0; i < idx.count; ++i) {
        int64_t row = is64 ? idx.as<int64_t>()[i] : idx.as<int32_t>()[i];
        if (row < -g.V || row >= g.V) {
            if (bad != (int64_t)i + 1) wrong("out-of-range index not reported first", bad, (long long)i);
            return;
        }
        if (row < 0) row += g.V;
        const int b = g.row_bits[row];
        for (int64_t d = 0; d < a.D; ++d) {
            int64_t q = 0;
            for (int j = 0; j < b; ++j) {
                const int64_t bit = d * b + j;
                q |= (int64_t)((g.table[g.row_offsets[row] + bit / 8] >> (bit % 8)) & 1) << j;
            }
            if (q >= (int64_t(1) << (b - 1))) q -= int64_t(1) << b;
            const float want = (float)q * g.scales[(size_t)(row * a.G + d / a.group_size)];
            if (!same_bits(out[i * (size_t)a.D + (size_t)d], want)) wrong("PackedGather value", (long long)i, (long long)d);
        }
    }
    if (bad) wrong("index reported out of range but all were in range", bad, 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Reader r{data, size};
    const int op = r.u8() % 5;  // 0-2: the kinds, 3: PackedGather, 4: Int4MatMul (see fuzz_format.md)
    if (op == 3)
        fuzz_gather(r);
    else
        fuzz_matmul(op == 4 ? QC_INT4 : op, r);
    return 0;
}
