"""The passes, one per file, in the order a scheme may run them (installed as qcompiler.passes).

| pass | stage | what it does |
|---|---|---|
| canonicalize | canonical | opset upgrade, constant folding, Gemm -> MatMul+Add, Identity/dead-node removal, shapes |
| fold_layernorm | canonical | fuse decomposed LayerNorm/RMSNorm; fold gamma/beta into consumer MatMuls (pre-LN) |
| prune_ffn | transform | FullyQT FFN pruning: drop hidden units whose calibrated max activation is tiny |
| quantize_embeddings | transform | Gather tables row-wise int8/int4, dequantized after the Gather |
| insert_qdq | transform | int8 per-channel weights, dynamic or static int8 activations, FP32 outlier channels |
| quantize_int4 | transform | blockwise int4 weights, MSE-chosen clipping, MatMulNBits or opset-21 DequantizeLinear |
| replace_matmul | transform | ternary / binary-code / k-means weights as ai.qcompiler ops (+ function bodies), optional GPTQ recovery |
| merge_linears | final | quantized linears reading one activation (q/k/v, gate/up) as one op over concatenated output channels, split after |
| cleanup | final | remove unused, readable names, producer/scheme stamp |
"""

from __future__ import annotations

from qcompiler.passes.base import QPass
from qcompiler.passes.canonicalize import Canonicalize
from qcompiler.passes.fold_layernorm import FoldLayerNorm
from qcompiler.passes.cleanup import Cleanup
from qcompiler.passes.insert_qdq import InsertQDQ
from qcompiler.passes.merge_linears import MergeLinears
from qcompiler.passes.prune_ffn import PruneFFN
from qcompiler.passes.quantize_embeddings import QuantizeEmbeddings
from qcompiler.passes.quantize_int4 import QuantizeInt4
from qcompiler.passes.replace_matmul import ReplaceMatMul

# name -> pass class, in pipeline order. Each line is one file of this folder.
PASS_TABLE: dict[str, type[QPass]] = {
    Canonicalize.name: Canonicalize,
    FoldLayerNorm.name: FoldLayerNorm,
    PruneFFN.name: PruneFFN,
    QuantizeEmbeddings.name: QuantizeEmbeddings,
    InsertQDQ.name: InsertQDQ,
    QuantizeInt4.name: QuantizeInt4,
    ReplaceMatMul.name: ReplaceMatMul,
    MergeLinears.name: MergeLinears,
    Cleanup.name: Cleanup,
}

__all__ = ["PASS_TABLE", "QPass"]
