// Thin onnxruntime glue shared by the op files: tensor views, validation helpers, errors, and the
// bridge from the kernels' parallel-for to onnxruntime's intra-op thread pool.
#pragma once
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kernels/qc_kernels.h"

namespace qc {

constexpr const char *kDomain = "ai.qcompiler";
constexpr int64_t kFormatVersion = 1;

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

// An input as seen by the kernel: present or not, its type, shape and data.
struct TensorView {
    bool present = false;
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    std::vector<int64_t> shape;
    const void *data = nullptr;
    size_t count = 0;
    template <typename T>
    const T *as() const { return static_cast<const T *>(data); }
};

TensorView view(const Ort::ConstValue &v);
void expect_shape(const char *op, const char *what, const TensorView &t, const std::vector<int64_t> &shape);
std::vector<float> to_float(const char *op, const char *what, const TensorView &t);  // float32 or float16

int64_t attr_int(const OrtKernelInfo *info, const char *name, int64_t dflt, bool required, const char *op);
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

// The three MatMul ops share one kernel; the op files only name the kind and the inputs.
struct MatMulKernel {
    MatMulKernel(const OrtKernelInfo *info, int kind, const char *name);
    ~MatMulKernel();
    OrtStatusPtr ComputeV2(OrtKernelContext *context);

   private:
    struct Weights;
    std::unique_ptr<qc_matmul, void (*)(qc_matmul *)> build(const TensorView *w, size_t n) const;
    int kind_;
    const char *name_;
    int64_t K_, N_, group_size_, bits_, level_;
    qc_matmul *prepacked_ = nullptr;
};

template <typename TOp>
struct MatMulOpBase : Ort::CustomOpBase<TOp, MatMulKernel, true> {
    OrtStatusPtr CreateKernelV2(const OrtApi &, const OrtKernelInfo *info, void **kernel) const {
        return guarded([&] { *kernel = new MatMulKernel(info, TOp::kKind, TOp::kName); });
    }
    const char *GetName() const { return TOp::kName; }
    size_t GetInputTypeCount() const { return 6; }
    ONNXTensorElementDataType GetInputType(size_t i) const {
        switch (i) {
        case 0: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        case 1: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
        case 2: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // float32 or float16, checked
        case 3: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        case 4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
        default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
        }
    }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
        return i >= 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace qc
