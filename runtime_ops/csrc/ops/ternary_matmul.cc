// onnxruntime glue of ai.qcompiler::TernaryMatMul (contract: runtime_ops/formats.py).
#include "glue.h"

namespace qc {
struct TernaryMatMulOp : MatMulOpBase<TernaryMatMulOp> {
    static constexpr int kKind = QC_TERNARY;
    static constexpr const char *kName = "TernaryMatMul";
};
const OrtCustomOp *TernaryMatMul_op() {
    static TernaryMatMulOp op;
    return &op;
}
}  // namespace qc
