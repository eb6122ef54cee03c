// onnxruntime glue of ai.qcompiler::PackedGather (contract: runtime_ops/formats.py).
#include "glue.h"

namespace qc {

struct PackedGatherKernel {
    explicit PackedGatherKernel(const OrtKernelInfo *info) {
        const char *op = "PackedGather";
        D_ = attr_int(info, "D", 0, true, op);
        group_size_ = attr_int(info, "group_size", D_, false, op);
        const int64_t version = attr_int(info, "format_version", kFormatVersion, false, op);
        if (version != kFormatVersion) fail(op, "unknown format_version ", version, " (this library reads 1)");
        if (D_ <= 0 || D_ > (int64_t(1) << 31)) fail(op, "D must be positive, got ", D_);
        if (group_size_ <= 0) fail(op, "group_size must be positive, got ", group_size_);
        TensorView t[4];
        bool all = true;
        for (size_t i = 0; i < 4; ++i) {
            bool c = false;
            t[i] = constant_input(info, i, &c);
            all = all && c;
        }
        if (all) {
            prepare(t);
            prepared_ = true;
        }
    }

    // Validates the table inputs and keeps owned copies of what Compute reads.
    void prepare(const TensorView *t) {
        const char *op = "PackedGather";
        const TensorView &table = t[0], &off = t[1], &rbits = t[2], &sc = t[3];
        if (table.shape.size() != 1) fail(op, "table must be 1-D, got ", shape_str(table.shape));
        if (rbits.shape.size() != 1) fail(op, "row_bits must be 1-D, got ", shape_str(rbits.shape));
        const int64_t V = rbits.shape[0], G = (D_ + group_size_ - 1) / group_size_;
        expect_shape(op, "row_offsets [V+1]", off, {V + 1});
        expect_shape(op, "scales [V, G]", sc, {V, G});
        if (const char *err = qc_packed_gather_check(rbits.as<uint8_t>(), off.as<int64_t>(), V, table.shape[0], D_))
            fail(op, err);
        V_ = V;
        table_.assign(table.as<uint8_t>(), table.as<uint8_t>() + table.count);
        offsets_.assign(off.as<int64_t>(), off.as<int64_t>() + off.count);
        row_bits_.assign(rbits.as<uint8_t>(), rbits.as<uint8_t>() + rbits.count);
        scales_ = to_float(op, "scales", sc);
    }

    OrtStatusPtr ComputeV2(OrtKernelContext *context) {
        return guarded([&] {
            const char *op = "PackedGather";
            Ort::KernelContext ctx(context);
            if (!prepared_) {
                TensorView t[4];
                for (size_t i = 0; i < 4; ++i) t[i] = view(ctx.GetInput(i));
                prepare(t);
            }
            const TensorView idx = view(ctx.GetInput(4));
            if (idx.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 && idx.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
                fail(op, "indices must be int32 or int64");
            std::vector<int64_t> shape = idx.shape;
            shape.push_back(D_);
            auto out = ctx.GetOutput(0, shape);
            if (!idx.count) return;
            const bool is64 = idx.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
            const int64_t bad = qc_packed_gather(table_.data(), offsets_.data(), row_bits_.data(), scales_.data(), V_,
                                                 D_, group_size_, is64 ? idx.as<int64_t>() : nullptr,
                                                 is64 ? nullptr : idx.as<int32_t>(), (int64_t)idx.count,
                                                 out.GetTensorMutableData<float>());
            if (bad) {
                const int64_t v = is64 ? idx.as<int64_t>()[bad - 1] : idx.as<int32_t>()[bad - 1];
                fail(op, "index ", v, " at position ", bad - 1, " is out of range [-", V_, ", ", V_, ")");
            }
        });
    }

   private:
    int64_t D_, group_size_, V_ = 0;
    bool prepared_ = false;
    std::vector<uint8_t> table_, row_bits_;
    std::vector<int64_t> offsets_;
    std::vector<float> scales_;
};

struct PackedGatherOp : Ort::CustomOpBase<PackedGatherOp, PackedGatherKernel, true> {
    OrtStatusPtr CreateKernelV2(const OrtApi &, const OrtKernelInfo *info, void **kernel) const {
        return guarded([&] { *kernel = new PackedGatherKernel(info); });
    }
    const char *GetName() const { return "PackedGather"; }
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
