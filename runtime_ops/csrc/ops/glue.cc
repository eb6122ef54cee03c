// Shared glue: views, validation, the MatMul kernel (prepack at creation, run at Compute).
#include "glue.h"

#include <cstring>

namespace qc {

std::string shape_str(const std::vector<int64_t> &shape) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    return s.str();
}

TensorView view(const Ort::ConstValue &v) {
    TensorView t;
    if (!v) return t;
    auto info = v.GetTensorTypeAndShapeInfo();
    t.present = true;
    t.type = info.GetElementType();
    t.shape = info.GetShape();
    t.count = info.GetElementCount();
    t.data = v.GetTensorRawData();
    return t;
}

void expect_shape(const char *op, const char *what, const TensorView &t, const std::vector<int64_t> &shape) {
    if (t.shape != shape) fail(op, what, " has shape ", shape_str(t.shape), ", expected ", shape_str(shape));
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
    std::vector<float> out(t.count);
    if (t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        if (t.count) std::memcpy(out.data(), t.data, t.count * sizeof(float));
    } else if (t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
        const uint16_t *h = t.as<uint16_t>();
        for (size_t i = 0; i < t.count; ++i) out[i] = half_to_float(h[i]);
    } else {
        fail(op, what, " must be float32 or float16 (element type ", (int)t.type, ")");
    }
    return out;
}

int64_t attr_int(const OrtKernelInfo *info, const char *name, int64_t dflt, bool required, const char *op) {
    int64_t v = 0;
    OrtStatus *st = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &v);
    if (st) {
        Ort::GetApi().ReleaseStatus(st);
        if (required) fail(op, "missing required int attribute '", name, "'");
        return dflt;
    }
    return v;
}

size_t input_count(const OrtKernelInfo *info) {
    size_t n = 0;
    Ort::ThrowOnError(Ort::GetApi().KernelInfo_GetInputCount(info, &n));
    return n;
}

std::string input_name(const OrtKernelInfo *info, size_t i) {
    size_t len = 0;
    Ort::ThrowOnError(Ort::GetApi().KernelInfo_GetInputName(info, i, nullptr, &len));
    std::string s(len, '\0');
    Ort::ThrowOnError(Ort::GetApi().KernelInfo_GetInputName(info, i, s.data(), &len));
    if (!s.empty() && s.back() == '\0') s.pop_back();
    return s;
}

TensorView constant_input(const OrtKernelInfo *info, size_t i, bool *is_constant) {
    *is_constant = false;
    if (i >= input_count(info) || input_name(info, i).empty()) return TensorView{};
    int is_const = 0;
    const OrtValue *v = nullptr;
    Ort::ThrowOnError(Ort::GetApi().KernelInfoGetConstantInput_tensor(info, i, &is_const, &v));
    if (!is_const || !v) return TensorView{};
    *is_constant = true;
    return view(Ort::ConstValue{v});
}

void ort_parallel_for(void *host, qc_task_fn fn, void *ctx, size_t total) {
    Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(static_cast<OrtKernelContext *>(host), fn, total, 0, ctx));
}

// ------------------------------------------------------------------------------ MatMulKernel
MatMulKernel::MatMulKernel(const OrtKernelInfo *info, int kind, const char *name) : kind_(kind), name_(name) {
    K_ = attr_int(info, "K", 0, true, name);
    N_ = attr_int(info, "N", 0, true, name);
    group_size_ = attr_int(info, "group_size", K_, false, name);
    const int64_t version = attr_int(info, "format_version", kFormatVersion, false, name);
    level_ = attr_int(info, "accuracy_level", 0, false, name);
    if (version != kFormatVersion) fail(name, "unknown format_version ", version, " (this library reads 1)");
    if (K_ <= 0 || N_ <= 0) fail(name, "K and N must be positive (K=", K_, ", N=", N_, ")");
    if (K_ > (int64_t(1) << 31) || N_ > (int64_t(1) << 31)) fail(name, "K or N too large");
    if (group_size_ <= 0) fail(name, "group_size must be positive, got ", group_size_);
    if (level_ < 0 || level_ > 4) fail(name, "accuracy_level must be in 0..4, got ", level_);
    if (kind == QC_TERNARY) {
        bits_ = 2;
    } else {
        bits_ = attr_int(info, "bits", 0, true, name);
        const int64_t lo = kind == QC_BINARY ? 1 : 2;
        if (bits_ < lo || bits_ > 4) fail(name, "bits must be in ", lo, "..4, got ", bits_);
    }
    // Prepack when all weight inputs are constant initializers.
    TensorView w[6];
    bool all_const = true;
    const size_t n_in = input_count(info);
    for (size_t i = 1; i < 6; ++i) {
        bool c = false;
        w[i] = constant_input(info, i, &c);
        const bool present = i < n_in && !input_name(info, i).empty();
        if (present && !c) all_const = false;
    }
    if (all_const) prepacked_ = build(w, 6).release();
}

MatMulKernel::~MatMulKernel() { qc_matmul_free(prepacked_); }

std::unique_ptr<qc_matmul, void (*)(qc_matmul *)> MatMulKernel::build(const TensorView *w, size_t n) const {
    const char *op = name_;
    const TensorView &packed = w[1], &scales = w[2];
    const TensorView none;
    const TensorView &bias = n > 3 ? w[3] : none, &oidx = n > 4 ? w[4] : none, &ow = n > 5 ? w[5] : none;
    if (!packed.present || !scales.present) fail(op, "inputs 1 and 2 are required");
    if (packed.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) fail(op, "packed weights must be uint8");
    const int code_bits = kind_ == QC_TERNARY ? 2 : kind_ == QC_BINARY ? 1 : (int)bits_;
    const int64_t row_bytes = (K_ * code_bits + 7) / 8, G = (K_ + group_size_ - 1) / group_size_;
    if (kind_ == QC_BINARY) {
        expect_shape(op, "W_packed [bits, N, ceil(K/8)]", packed, {bits_, N_, row_bytes});
        expect_shape(op, "alphas [bits, N, G]", scales, {bits_, N_, G});
    } else if (kind_ == QC_TERNARY) {
        expect_shape(op, "W_packed [N, ceil(K/4)]", packed, {N_, row_bytes});
        expect_shape(op, "scales [N, G]", scales, {N_, G});
    } else {
        expect_shape(op, "indices [N, ceil(K*bits/8)]", packed, {N_, row_bytes});
        expect_shape(op, "codebook [N, 2^bits]", scales, {N_, int64_t(1) << bits_});
    }
    std::vector<float> s = to_float(op, "input 2 (scales)", scales);
    std::vector<float> b;
    if (bias.present) {
        if (bias.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(op, "bias must be float32");
        expect_shape(op, "bias [N]", bias, {N_});
        b.assign(bias.as<float>(), bias.as<float>() + N_);
    }
    if (oidx.present != ow.present) fail(op, "outlier_idx and outlier_w must be given together");
    std::vector<float> owf;
    int64_t n_out = 0;
    if (oidx.present) {
        if (oidx.shape.size() != 1) fail(op, "outlier_idx must be 1-D, got ", shape_str(oidx.shape));
        n_out = oidx.shape[0];
        expect_shape(op, "outlier_w [n_out, N]", ow, {n_out, N_});
        for (int64_t j = 0; j < n_out; ++j) {
            const int64_t k = oidx.as<int64_t>()[j];
            if (k < 0 || k >= K_) fail(op, "outlier_idx[", j, "] = ", k, " is outside [0, K=", K_, ")");
        }
        owf = to_float(op, "outlier_w", ow);
    }
    qc_matmul_desc d{};
    d.kind = kind_;
    d.K = K_; d.N = N_; d.group_size = group_size_; d.bits = (int)bits_; d.accuracy_level = (int)level_;
    d.packed = packed.as<uint8_t>();
    d.scales = s.data();
    d.n_out = n_out;
    d.outlier_idx = n_out ? oidx.as<int64_t>() : nullptr;
    d.outlier_w = n_out ? owf.data() : nullptr;
    d.bias = bias.present ? b.data() : nullptr;
    qc_matmul *m = qc_matmul_create(&d, qc_isa_get());
    if (!m) throw std::bad_alloc();
    return {m, qc_matmul_free};
}

OrtStatusPtr MatMulKernel::ComputeV2(OrtKernelContext *context) {
    return guarded([&] {
        Ort::KernelContext ctx(context);
        const TensorView A = view(ctx.GetInput(0));
        if (A.shape.empty()) fail(name_, "A must have rank >= 1");
        if (A.shape.back() != K_) fail(name_, "A has shape ", shape_str(A.shape), " but K=", K_);
        std::unique_ptr<qc_matmul, void (*)(qc_matmul *)> tmp{nullptr, qc_matmul_free};
        const qc_matmul *w = prepacked_;
        if (!w) {
            TensorView in[6];
            const size_t n = ctx.GetInputCount();
            for (size_t i = 1; i < 6 && i < n; ++i) in[i] = view(ctx.GetInput(i));
            tmp = build(in, 6);
            w = tmp.get();
        }
        std::vector<int64_t> out_shape = A.shape;
        out_shape.back() = N_;
        auto Y = ctx.GetOutput(0, out_shape);
        const int64_t M = K_ ? (int64_t)(A.count / (size_t)K_) : 0;
        if (M == 0) return;
        if (qc_matmul_run(w, A.as<float>(), M, Y.GetTensorMutableData<float>(), ort_parallel_for, context))
            throw std::bad_alloc();
    });
}

}  // namespace qc
