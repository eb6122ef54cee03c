// The library's only export: RegisterCustomOps adds the ai.qcompiler domain to session options.
// Built on onnxruntime 1.21 headers; the API table comes from the running onnxruntime (>= 1.21).
#include "glue.h"

namespace qc {
const OrtCustomOp *TernaryMatMul_op();
const OrtCustomOp *BinaryCodeMatMul_op();
const OrtCustomOp *CodebookMatMul_op();
const OrtCustomOp *Int4MatMul_op();
const OrtCustomOp *PackedGather_op();
}  // namespace qc

extern "C" __attribute__((visibility("default"))) OrtStatus *ORT_API_CALL
RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *api_base) {
    const OrtApi *api = api_base->GetApi(ORT_API_VERSION);
    if (!api) return nullptr;  // cannot even report: onnxruntime older than the headers
    Ort::InitApi(api);
    return qc::guarded([&] {
        OrtCustomOpDomain *domain = nullptr;  // lives as long as the process: sessions keep pointers
        Ort::ThrowOnError(api->CreateCustomOpDomain(qc::kDomain, &domain));
        for (const OrtCustomOp *op : {qc::TernaryMatMul_op(), qc::BinaryCodeMatMul_op(), qc::CodebookMatMul_op(),
                                      qc::Int4MatMul_op(), qc::PackedGather_op()})
            Ort::ThrowOnError(api->CustomOpDomain_Add(domain, const_cast<OrtCustomOp *>(op)));
        Ort::ThrowOnError(api->AddCustomOpDomain(options, domain));
    });
}
