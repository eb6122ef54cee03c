// Thin onnxruntime glue shared by the op files: tensor views, validation helpers, errors, and the
// bridge from the kernels' parallel-for to onnxruntime's intra-op thread pool.
#pragma once
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../kernels/qc_kernels.h"
#include "validate.h"

namespace qc {

constexpr const char *kDomain = "ai.qcompiler";

TensorView view(const Ort::ConstValue &v);

Attr attr_int(const OrtKernelInfo *info, const char *name);
std::string input_name(const OrtKernelInfo *info, size_t i);
size_t input_count(const OrtKernelInfo *info);
// The input as a constant initializer at kernel creation; not present -> .present == false.
TensorView constant_input(const OrtKernelInfo *info, size_t i, bool *is_constant);

void ort_parallel_for(void *host, qc_task_fn fn, void *ctx, size_t total);

// Runs f, converting exceptions into an OrtStatus (never lets one cross the C boundary).
template <typename F>
OrtStatusPtr guarded(F &&f) {
    try {
        f();
        return nullptr;
    } catch (const ContractError &e) {
        return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    } catch (const Ort::Exception &e) {
        return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::bad_alloc &) {
        return Ort::GetApi().CreateStatus(ORT_FAIL, "ai.qcompiler: out of memory");
    } catch (const std::exception &e) {
        return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
    }
}

using MatMulPtr = std::unique_ptr<qc_matmul, void (*)(qc_matmul *)>;

// The MatMul ops share one kernel; the op files only name the kind and the inputs. The
// object is immutable after construction (concurrent runs of one session share it): weights that
// are constant initializers are validated and prepacked once, here; weights fed as graph inputs
// are validated and packed per run into per-call buffers.
struct MatMulKernel {
    MatMulKernel(const OrtKernelInfo *info, int kind, const char *name);
    OrtStatusPtr ComputeV2(OrtKernelContext *context);

   private:
    // exact: the scalar level-0 kernel (bit-exact with the reference, NaN/Inf included)
    MatMulPtr build(const TensorView *w, bool exact, bool *is_exact = nullptr) const;
    const char *name_;
    MatMulAttrs attrs_;
    MatMulPtr prepacked_{nullptr, qc_matmul_free};
    bool prepacked_exact_ = false;
    size_t n_inputs_;          // 6, or 7 for Int4MatMul (zero_points)
    TensorView constants_[7];  // the constant initializers (owned by the session, outlive the kernel)
};

template <typename TOp>
struct MatMulOpBase : Ort::CustomOpBase<TOp, MatMulKernel, true> {
    OrtStatusPtr CreateKernelV2(const OrtApi &, const OrtKernelInfo *info, void **kernel) const {
        return guarded([&] { *kernel = new MatMulKernel(info, TOp::kKind, TOp::kName); });
    }
    const char *GetName() const { return TOp::kName; }
    size_t GetInputTypeCount() const { return TOp::kKind == QC_INT4 ? 7 : 6; }
    ONNXTensorElementDataType GetInputType(size_t i) const {
        switch (i) {
        case 0: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        case 1: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
        case 2: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // float32 or float16, checked
        case 3: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        case 4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
        case 5: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
        default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;  // Int4MatMul's zero_points
        }
    }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
        return i >= 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace qc
