// Shared glue: views, validation, the MatMul kernel (prepack at creation, run at Compute).
#include "glue.h"

#include <cstring>

namespace qc {

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

Attr attr_int(const OrtKernelInfo *info, const char *name) {
    Attr a;
    OrtStatus *st = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &a.value);
    if (st) {
        Ort::GetApi().ReleaseStatus(st);
        return Attr{};
    }
    a.present = true;
    return a;
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
MatMulKernel::MatMulKernel(const OrtKernelInfo *info, int kind, const char *name)
    : name_(name), n_inputs_(kind == QC_INT4 ? 7 : 6) {
    attrs_ = validate_matmul_attrs(kind, name, attr_int(info, "K"), attr_int(info, "N"), attr_int(info, "group_size"),
                                   attr_int(info, "bits"), attr_int(info, "format_version"),
                                   attr_int(info, "accuracy_level"));
    // Prepack when all weight inputs are constant initializers (once: onnxruntime creates the kernel
    // before any run, and nothing below changes after).
    bool all_const = true;
    const size_t n_in = input_count(info);
    for (size_t i = 1; i < n_inputs_; ++i) {
        bool c = false;
        constants_[i] = constant_input(info, i, &c);
        const bool present = i < n_in && !input_name(info, i).empty();
        if (present && !c) all_const = false;
    }
    if (all_const) {
        prepacked_ = build(constants_, false, &prepacked_exact_);
    }
}

MatMulPtr MatMulKernel::build(const TensorView *w, bool exact, bool *is_exact) const {
    const MatMulWeights m = validate_matmul_weights(name_, attrs_, w);
    qc_matmul_desc d = m.desc(attrs_);
    const qc_isa *isa = qc_isa_get();
    // Non-finite scales, or non-finite activations on a kernel that is not exact: the scalar fp32
    // kernel, bit-exact with the reference, so NaN and Inf propagate as the reference says.
    if (exact || !m.finite_weights || (d.accuracy_level == 0 && std::strcmp(isa->name, "scalar") == 0)) {
        d.accuracy_level = 0;
        isa = qc_isa_scalar();
        exact = true;
    }
    if (is_exact) *is_exact = exact;
    qc_matmul *p = qc_matmul_create(&d, isa);
    if (!p) throw std::bad_alloc();
    return MatMulPtr{p, qc_matmul_free};
}

OrtStatusPtr MatMulKernel::ComputeV2(OrtKernelContext *context) {
    return guarded([&] {
        Ort::KernelContext ctx(context);
        const TensorView A = view(ctx.GetInput(0));
        const int64_t M = validate_matmul_activation(name_, attrs_, A);
        const bool finite_A = all_finite(A.as<float>(), A.count);
        MatMulPtr tmp{nullptr, qc_matmul_free};  // per-call weights: this run's only
        const qc_matmul *w = prepacked_.get();
        if (w && !finite_A && !prepacked_exact_) {
            tmp = build(constants_, true);
            w = tmp.get();
        } else if (!w) {
            TensorView in[7];
            const size_t n = ctx.GetInputCount();
            for (size_t i = 1; i < n_inputs_ && i < n; ++i) in[i] = view(ctx.GetInput(i));
            tmp = build(in, !finite_A);
            w = tmp.get();
        }
        std::vector<int64_t> out_shape = A.shape;
        out_shape.back() = attrs_.N;
        auto Y = ctx.GetOutput(0, out_shape);
        if (M == 0) return;
        if (qc_matmul_run(w, A.as<float>(), M, Y.GetTensorMutableData<float>(), ort_parallel_for, context))
            throw std::bad_alloc();
    });
}

}  // namespace qc
