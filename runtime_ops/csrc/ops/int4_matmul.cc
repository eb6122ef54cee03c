// onnxruntime glue of ai.qcompiler::Int4MatMul (contract: runtime_ops/formats.py).
#include "glue.h"

namespace qc {
struct Int4MatMulOp : MatMulOpBase<Int4MatMulOp> {
    static constexpr int kKind = QC_INT4;
    static constexpr const char *kName = "Int4MatMul";
};
const OrtCustomOp *Int4MatMul_op() {
    static Int4MatMulOp op;
    return &op;
}
}  // namespace qc
