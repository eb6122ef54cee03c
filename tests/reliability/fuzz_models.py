"""Small models and mutations of them for the reliability tests: a LayerNorm + two linears block,
the same block inside If / Loop subgraphs, and proto-level damage (dtypes, shapes, opsets, missing
initializers, external data)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

K, H = 32, 48


def block_graph(prefix: str = "", rng: np.random.Generator | None = None, name: str = "block",
                x: str = "x", y: str = "y", with_inits: bool = True):
    """x [B, K] -> LayerNorm -> MatMul W1 + b1 -> Relu -> MatMul W2 + b2 -> y: nodes and initializers."""
    rng = rng or np.random.default_rng(0)
    p = prefix
    inits = [
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(K)).astype(np.float32), f"{p}ln_g"),
        numpy_helper.from_array((0.05 * rng.standard_normal(K)).astype(np.float32), f"{p}ln_b"),
        numpy_helper.from_array((rng.standard_normal((K, H)) / np.sqrt(K)).astype(np.float32), f"{p}W1"),
        numpy_helper.from_array((0.02 * rng.standard_normal(H)).astype(np.float32), f"{p}b1"),
        numpy_helper.from_array((rng.standard_normal((H, K)) / np.sqrt(H)).astype(np.float32), f"{p}W2"),
        numpy_helper.from_array((0.02 * rng.standard_normal(K)).astype(np.float32), f"{p}b2"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", [x, f"{p}ln_g", f"{p}ln_b"], [f"{p}h"], name=f"{p}ln", axis=-1),
        helper.make_node("MatMul", [f"{p}h", f"{p}W1"], [f"{p}u0"], name=f"{p}up"),
        helper.make_node("Add", [f"{p}u0", f"{p}b1"], [f"{p}u"], name=f"{p}up_bias"),
        helper.make_node("Relu", [f"{p}u"], [f"{p}r"], name=f"{p}relu"),
        helper.make_node("MatMul", [f"{p}r", f"{p}W2"], [f"{p}d0"], name=f"{p}down"),
        helper.make_node("Add", [f"{p}d0", f"{p}b2"], [y], name=f"{p}down_bias"),
    ]
    return nodes, (inits if with_inits else [])


def block_model(opset: int = 17) -> onnx.ModelProto:
    nodes, inits = block_graph()
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", K])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def if_model() -> onnx.ModelProto:
    """y = If(cond) then block(x) else block'(x); the branches read weights of the outer graph."""
    then_nodes, then_inits = block_graph("t_", np.random.default_rng(1), x="x", y="yt")
    else_nodes, else_inits = block_graph("e_", np.random.default_rng(2), x="x", y="ye")
    then_g = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("yt", TensorProto.FLOAT, ["B", K])])
    else_g = helper.make_graph(else_nodes, "else", [], [helper.make_tensor_value_info("ye", TensorProto.FLOAT, ["B", K])])
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)
    g = helper.make_graph([node], "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K]),
                                         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", K])], then_inits + else_inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def loop_model(inner_weights: bool = False) -> onnx.ModelProto:
    """y = the block applied `trip` times in a Loop (carried state); weights outside or inside the body."""
    nodes, inits = block_graph("l_", np.random.default_rng(3), x="s_in", y="s_out")
    body_inits = inits if inner_weights else []
    body = helper.make_graph(
        nodes + [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["B", K])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["B", K])], body_inits)
    node = helper.make_node("Loop", ["trip", "", "x"], ["y"], name="repeat", body=body)
    g = helper.make_graph([node], "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K]),
                                           helper.make_tensor_value_info("trip", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", K])],
                          [] if inner_weights else inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def linear_model(path, k: int, n: int):
    """x [B, k] -> MatMul W [k, n] + b -> y, saved at path (one file); returns path."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y0"], name="proj"),
             helper.make_node("Add", ["y0", "b"], ["y"], name="proj_bias")]
    g = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


DTYPES = [TensorProto.UNDEFINED, TensorProto.INT32, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8,
          TensorProto.UINT8, TensorProto.INT64, TensorProto.BOOL, TensorProto.STRING, TensorProto.BFLOAT16,
          TensorProto.UINT4, TensorProto.COMPLEX64, 999]


def set_dtype(model: onnx.ModelProto, index: int, dtype: int) -> onnx.ModelProto:
    """Relabel one initializer's dtype, bytes unchanged (the classic broken-converter output)."""
    init = model.graph.initializer[index % len(model.graph.initializer)]
    init.data_type = dtype
    return model


def set_dims(model: onnx.ModelProto, index: int, dims: list[int]) -> onnx.ModelProto:
    """Give one initializer other dims (its bytes no longer match, or a zero-sized tensor)."""
    init = model.graph.initializer[index % len(model.graph.initializer)]
    del init.dims[:]
    init.dims.extend(dims)
    if 0 in dims:
        init.raw_data = b""
    return model


def drop_initializer(model: onnx.ModelProto, index: int) -> onnx.ModelProto:
    del model.graph.initializer[index % len(model.graph.initializer)]
    return model


def set_input_dims(model: onnx.ModelProto, dims: list) -> onnx.ModelProto:
    """Input x with other (dynamic, zero or fixed) dims."""
    shape = model.graph.input[0].type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d
    return model


def set_opsets(model: onnx.ModelProto, default: int, extra: list[tuple[str, int]]) -> onnx.ModelProto:
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", default)] + [helper.make_opsetid(d, v) for d, v in extra])
    return model
