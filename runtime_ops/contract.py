"""The public contract of the ai.qcompiler ops: what the compiler's passes call.

One facade over `formats` (the table, packers, references, tolerances) and `onnx_functions`
(function bodies, node and model builders).
"""

from .formats import (  # noqa: F401
    ACCURACY_LEVELS, DOMAIN, FIXED_BITS, FORMAT_VERSION, MATMUL_OPS, OPS, OPSET_VERSION, STANDARD_OPSET, ContractError,
    OpFormat, bits_per_weight, dequantize, validate, num_groups, pack_binary_code, pack_bitstream, pack_codebook,
    pack_int4, pack_packed_gather, pack_ternary, reference, tolerance, unpack_binary_code, unpack_bitstream,
    unpack_codebook, unpack_int4, unpack_packed_gather, unpack_ternary, validate_node,
)
from .onnx_functions import (  # noqa: F401
    attach_functions, make_function, make_model, make_node, node_attributes, opset_imports,
)
