// onnxruntime glue of ai.qcompiler::PackedGather (contract: runtime_ops/formats.py).
// The kernel object is immutable after construction: a table of constant initializers is
// validated and copied once when the kernel is created; a table fed as graph inputs is validated
// per run and read in place, its fp32 scales in a per-call buffer (concurrent runs of one session
// share the kernel).
#include "glue.h"

namespace qc {

namespace {
constexpr const char *kOp = "PackedGather";
}

struct PackedGatherKernel {
    explicit PackedGatherKernel(const OrtKernelInfo *info)
        : attrs_(validate_gather_attrs(kOp, attr_int(info, "D"), attr_int(info, "group_size"),
                                       attr_int(info, "format_version"))) {
        TensorView t[4];
        bool all = true;
        for (size_t i = 0; i < 4; ++i) {
            bool c = false;
            t[i] = constant_input(info, i, &c);
            all = all && c;
        }
        if (!all) return;
        const GatherTable g = validate_gather_table(kOp, attrs_, t);
        table_.assign(g.table, g.table + g.total_bytes);
        offsets_.assign(g.row_offsets, g.row_offsets + g.V + 1);
        row_bits_.assign(g.row_bits, g.row_bits + g.V);
        prepared_.V = g.V;
        prepared_.total_bytes = g.total_bytes;
        prepared_.table = table_.data();
        prepared_.row_offsets = offsets_.data();
        prepared_.row_bits = row_bits_.data();
        prepared_.scales = g.scales;
        is_prepared_ = true;
    }

    OrtStatusPtr ComputeV2(OrtKernelContext *context) const {
        return guarded([&] {
            Ort::KernelContext ctx(context);
            GatherTable per_call;  // this run's table when it is not a constant
            const GatherTable *g = &prepared_;
            if (!is_prepared_) {
                TensorView t[4];
                for (size_t i = 0; i < 4; ++i) t[i] = view(ctx.GetInput(i));
                per_call = validate_gather_table(kOp, attrs_, t);
                g = &per_call;
            }
            const TensorView idx = view(ctx.GetInput(4));
            validate_gather_indices(kOp, idx);
            auto out = ctx.GetOutput(0, gather_output_shape(kOp, attrs_, idx));
            if (!idx.count) return;
            const bool is64 = idx.type == kInt64;
            const int64_t bad = qc_packed_gather(g->table, g->row_offsets, g->row_bits, g->scales.data(), g->V,
                                                 attrs_.D, attrs_.group_size, is64 ? idx.as<int64_t>() : nullptr,
                                                 is64 ? nullptr : idx.as<int32_t>(), (int64_t)idx.count,
                                                 out.GetTensorMutableData<float>());
            if (bad) {
                const int64_t v = is64 ? idx.as<int64_t>()[bad - 1] : idx.as<int32_t>()[bad - 1];
                fail(kOp, "index ", v, " at position ", bad - 1, " is out of range [-", g->V, ", ", g->V, ")");
            }
        });
    }

   private:
    const GatherAttrs attrs_;
    bool is_prepared_ = false;
    GatherTable prepared_;  // points into the owned copies below
    std::vector<uint8_t> table_, row_bits_;
    std::vector<int64_t> offsets_;
};

struct PackedGatherOp : Ort::CustomOpBase<PackedGatherOp, PackedGatherKernel, true> {
    OrtStatusPtr CreateKernelV2(const OrtApi &, const OrtKernelInfo *info, void **kernel) const {
        return guarded([&] { *kernel = new PackedGatherKernel(info); });
    }
    const char *GetName() const { return kOp; }
    size_t GetInputTypeCount() const { return 5; }
    ONNXTensorElementDataType GetInputType(size_t i) const {
        switch (i) {
        case 0: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
        case 1: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
        case 2: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
        default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // scales f32/f16, indices i32/i64: checked
        }
    }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

const OrtCustomOp *PackedGather_op() {
    static PackedGatherOp op;
    return &op;
}

}  // namespace qc
