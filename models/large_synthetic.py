"""Large synthetic transformer-shaped ONNX models with external data, for the scale benchmark.

Two shapes, both written weight by weight straight into ``<name>.data`` (the generator never
holds more than one weight in memory, so it builds models larger than RAM):

- ``chain``: ``h_{i+1} = MatMul(h_i, W_i)``, ``layers`` weights of ``dim x dim`` (36 x 4096^2
  FP32 = 2.4 GB, the issue's anchor), input ``h0`` float32 [batch, dim].
- ``transformer``: token ids -> embedding Gather -> ``layers`` pre-LN blocks
  (LayerNormalization, q/k/v MatMul+Add, heads Reshape/Transpose, scaled softmax attention,
  output MatMul+Add, residual; LayerNormalization, FFN up MatMul+Add, Gelu as Erf, FFN down
  MatMul+Add, residual) -> final LayerNormalization. Opset 17, inputs ``input_ids`` int64
  [batch, seq], output ``last_hidden_state``. 12 * dim^2 weights per layer (dim 2048,
  12 layers: 2.4 GB).

Weights are seeded normal with std 1/sqrt(fan_in), written in the graph's order.

CLI: ``python -m models.large_synthetic OUT.onnx --kind chain --layers 36 --dim 4096``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["write_chain", "write_transformer", "chain_bytes", "transformer_bytes"]

_CHUNK_ROWS = 512   # rows generated per step, so a 4096^2 weight needs 8 MB at a time


def chain_bytes(layers: int, dim: int) -> int:
    return layers * dim * dim * 4


def transformer_bytes(layers: int, dim: int, vocab: int = 8192, ffn_mult: int = 4) -> int:
    per_layer = (4 * dim * dim + 2 * ffn_mult * dim * dim + 9 * dim + ffn_mult * dim) * 4
    return layers * per_layer + vocab * dim * 4 + 2 * dim * 4


class _DataWriter:
    """Appends seeded weights to one external data file and returns their TensorProtos."""

    def __init__(self, data_path: Path, seed: int) -> None:
        self.path = data_path
        self.file = open(data_path, "wb")
        self.rng = np.random.default_rng(seed)

    def _proto(self, name: str, dims: list[int], offset: int, length: int, dtype=TensorProto.FLOAT):
        t = TensorProto(name=name, data_type=dtype, dims=dims)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            t.external_data.add(key=key, value=value)
        return t

    def normal(self, name: str, rows: int, cols: int, std: float) -> TensorProto:
        offset = self.file.tell()
        for start in range(0, rows, _CHUNK_ROWS):
            n = min(_CHUNK_ROWS, rows - start)
            block = self.rng.standard_normal((n, cols), dtype=np.float32)
            block *= np.float32(std)
            self.file.write(block.tobytes())
        return self._proto(name, [rows, cols], offset, rows * cols * 4)

    def vector(self, name: str, values: np.ndarray) -> TensorProto:
        values = np.ascontiguousarray(values, np.float32)
        offset = self.file.tell()
        self.file.write(values.tobytes())
        return self._proto(name, list(values.shape), offset, values.nbytes)

    def close(self) -> None:
        self.file.close()


def _save(graph: onnx.GraphProto, path: Path, opset: int) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="models.large_synthetic")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def write_chain(path: str | os.PathLike, layers: int = 36, dim: int = 4096, seed: int = 0, opset: int = 17) -> Path:
    """A chain of `layers` MatMuls dim x dim with external data `<path>.data`; returns path."""
    path = Path(path)
    writer = _DataWriter(path.with_name(path.name + ".data"), seed)
    nodes, inits = [], []
    try:
        for i in range(layers):
            inits.append(writer.normal(f"W{i}", dim, dim, 1.0 / np.sqrt(dim)))
            nodes.append(helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"h{i + 1}"], name=f"layer{i}/MatMul"))
    finally:
        writer.close()
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["batch", dim])],
                              [helper.make_tensor_value_info(f"h{layers}", TensorProto.FLOAT, ["batch", dim])], inits)
    _save(graph, path, opset)
    return path


def write_transformer(path: str | os.PathLike, layers: int = 12, dim: int = 2048, heads: int = 16,
                      ffn_mult: int = 4, vocab: int = 8192, seed: int = 0) -> Path:
    """A pre-LN transformer encoder stack with external data `<path>.data`; returns path."""
    if dim % heads:
        raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
    path = Path(path)
    writer = _DataWriter(path.with_name(path.name + ".data"), seed)
    ffn = ffn_mult * dim
    hd = dim // heads
    nodes, inits = [], []
    small = [
        helper.make_tensor("heads_shape", TensorProto.INT64, [4], [0, 0, heads, hd]),
        helper.make_tensor("merge_shape", TensorProto.INT64, [3], [0, 0, dim]),
        helper.make_tensor("inv_sqrt_hd", TensorProto.FLOAT, [], [1.0 / np.sqrt(hd)]),
        helper.make_tensor("inv_sqrt2", TensorProto.FLOAT, [], [1.0 / np.sqrt(2.0)]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
    ]

    def node(op, inputs, outputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def linear(x, prefix, k, n):
        inits.append(writer.normal(f"{prefix}.weight", k, n, 1.0 / np.sqrt(k)))
        inits.append(writer.vector(f"{prefix}.bias", writer.rng.normal(0, 0.02, n)))
        y = node("MatMul", [x, f"{prefix}.weight"], [f"{prefix}/MatMul_out"], f"{prefix}/MatMul")
        return node("Add", [y, f"{prefix}.bias"], [f"{prefix}/Add_out"], f"{prefix}/Add")

    def layernorm(x, prefix):
        inits.append(writer.vector(f"{prefix}.weight", 1.0 + writer.rng.normal(0, 0.1, dim)))
        inits.append(writer.vector(f"{prefix}.bias", writer.rng.normal(0, 0.05, dim)))
        return node("LayerNormalization", [x, f"{prefix}.weight", f"{prefix}.bias"], [f"{prefix}/out"],
                    f"{prefix}/LayerNormalization", axis=-1, epsilon=1e-5)

    try:
        inits.append(writer.normal("embed.weight", vocab, dim, 1.0))
        x = node("Gather", ["embed.weight", "input_ids"], ["embed/out"], "embed/Gather")
        for i in range(layers):
            p = f"layers.{i}"
            h = layernorm(x, f"{p}.ln1")
            q, k, v = (linear(h, f"{p}.attn.{t}", dim, dim) for t in ("q", "k", "v"))
            qh, kh, vh = (node("Reshape", [t, "heads_shape"], [f"{p}/{n}_heads"], f"{p}/{n}_Reshape")
                          for t, n in ((q, "q"), (k, "k"), (v, "v")))
            qt = node("Transpose", [qh], [f"{p}/q_t"], f"{p}/q_Transpose", perm=[0, 2, 1, 3])
            kt = node("Transpose", [kh], [f"{p}/k_t"], f"{p}/k_Transpose", perm=[0, 2, 3, 1])
            vt = node("Transpose", [vh], [f"{p}/v_t"], f"{p}/v_Transpose", perm=[0, 2, 1, 3])
            s = node("MatMul", [qt, kt], [f"{p}/scores"], f"{p}/scores_MatMul")
            s = node("Mul", [s, "inv_sqrt_hd"], [f"{p}/scores_scaled"], f"{p}/scores_Mul")
            a = node("Softmax", [s], [f"{p}/probs"], f"{p}/Softmax", axis=-1)
            c = node("MatMul", [a, vt], [f"{p}/context"], f"{p}/context_MatMul")
            c = node("Transpose", [c], [f"{p}/context_t"], f"{p}/context_Transpose", perm=[0, 2, 1, 3])
            c = node("Reshape", [c, "merge_shape"], [f"{p}/context_merged"], f"{p}/context_Reshape")
            o = linear(c, f"{p}.attn.out", dim, dim)
            x = node("Add", [x, o], [f"{p}/attn_residual"], f"{p}/attn_residual_Add")
            h = layernorm(x, f"{p}.ln2")
            u = linear(h, f"{p}.ffn.up", dim, ffn)
            e = node("Mul", [u, "inv_sqrt2"], [f"{p}/gelu_div"], f"{p}/gelu_Mul")
            e = node("Erf", [e], [f"{p}/gelu_erf"], f"{p}/gelu_Erf")
            e = node("Add", [e, "one"], [f"{p}/gelu_add"], f"{p}/gelu_Add")
            e = node("Mul", [u, e], [f"{p}/gelu_mul"], f"{p}/gelu_Mul2")
            g = node("Mul", [e, "half"], [f"{p}/gelu_out"], f"{p}/gelu_Mul3")
            d = linear(g, f"{p}.ffn.down", ffn, dim)
            x = node("Add", [x, d], [f"{p}/ffn_residual"], f"{p}/ffn_residual_Add")
        x = layernorm(x, "final_ln")
        nodes[-1].output[0] = "last_hidden_state"
    finally:
        writer.close()
    graph = helper.make_graph(
        nodes, "transformer",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", dim])],
        inits + small)
    _save(graph, path, 17)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.large_synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("output")
    parser.add_argument("--kind", choices=("chain", "transformer"), default="chain")
    parser.add_argument("--layers", type=int, default=None, help="default: 36 (chain), 12 (transformer)")
    parser.add_argument("--dim", type=int, default=None, help="default: 4096 (chain), 2048 (transformer)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.layers is not None and args.layers < 1) or (args.dim is not None and args.dim < 1):
        print("error: --layers and --dim must be positive", file=sys.stderr)
        return 2
    out = Path(args.output)
    if not out.parent.is_dir():
        print(f"error: output directory does not exist: {out.parent}", file=sys.stderr)
        return 2
    if args.kind == "chain":
        write_chain(out, args.layers or 36, args.dim or 4096, args.seed)
    else:
        write_transformer(out, args.layers or 12, args.dim or 2048, seed=args.seed)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
