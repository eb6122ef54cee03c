// onnxruntime glue of ai.qcompiler::BinaryCodeMatMul (contract: runtime_ops/formats.py).
#include "glue.h"

namespace qc {
struct BinaryCodeMatMulOp : MatMulOpBase<BinaryCodeMatMulOp> {
    static constexpr int kKind = QC_BINARY;
    static constexpr const char *kName = "BinaryCodeMatMul";
};
const OrtCustomOp *BinaryCodeMatMul_op() {
    static BinaryCodeMatMulOp op;
    return &op;
}
}  // namespace qc
