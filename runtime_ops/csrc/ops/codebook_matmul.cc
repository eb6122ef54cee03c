// onnxruntime glue of ai.qcompiler::CodebookMatMul (contract: runtime_ops/formats.py).
#include "glue.h"

namespace qc {
struct CodebookMatMulOp : MatMulOpBase<CodebookMatMulOp> {
    static constexpr int kKind = QC_CODEBOOK;
    static constexpr const char *kName = "CodebookMatMul";
};
const OrtCustomOp *CodebookMatMul_op() {
    static CodebookMatMulOp op;
    return &op;
}
}  // namespace qc
