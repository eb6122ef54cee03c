"""Prune FFN hidden units that calibration shows to be (almost) never active (FullyQT).

Matches an FFN: an `ffn_up` linear (W1 [K, H], b1) whose output reaches an `ffn_down` linear
(W2 [H, K']) through elementwise ops whose constant operands are scalars (GELU, ReLU, SiLU...),
so hidden unit i lives only in column i of W1/b1 and row i of W2. From the calibration
statistics of the down projection's input, unit i is removed when its largest absolute
activation max_i < threshold * std(max over all units). Removing it drops that column of W1
and b1 and that row of W2. threshold = 0 removes nothing (exact). Leaves alone an FFN whose
path has a non-scalar constant or a consumer outside the path (the units would be read
elsewhere), and reports why.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from qcompiler.analyze import Linear
from qcompiler.passes.base import QPass

_ELEMENTWISE = {"Gelu", "Erf", "Relu", "Sigmoid", "Tanh", "FastGelu", "Mul", "Add", "Div", "Sub", "Pow",
                "Cast", "Sqrt", "Neg", "Abs", "Identity", "Softplus", "Elu", "LeakyRelu", "HardSigmoid", "Mish"}


@dataclasses.dataclass
class PruneFFNOptions:
    threshold: float = 0.0      # C: prune units with max activation < C * std of all units' maxima
    min_keep: int = 8           # never leave fewer hidden units than this per FFN


class PruneFFN(QPass):
    name = "prune_ffn"
    stage = "transform"
    Options = PruneFFNOptions

    @property
    def needs_stats(self) -> bool:
        return self.options.threshold > 0

    def extra_taps(self) -> list[str]:
        if self.ctx is None or self.ctx.roles is None:
            return []
        return [lin.node.inputs[0].name for lin in self.ctx.roles.linears if lin.role == "ffn_down"]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.options.threshold <= 0 or self.ctx is None or self.ctx.roles is None:
            self.report("removed_fraction", 0.0)
            return ir.passes.PassResult(model, False)
        modified = False
        removed_total = kept_total = 0
        ups = [lin for lin in self.ctx.roles.linears if lin.role == "ffn_up"]
        downs = {id(lin.node): lin for lin in self.ctx.roles.linears if lin.role == "ffn_down"}
        for up in ups:
            found = self._path_to_down(up, downs)
            if isinstance(found, str):
                self.report_append("left", {"ffn_up": up.name, "reason": found})
                continue
            down, path_values = found
            stats = self.ctx.stats.get(down.node.inputs[0].name)
            if stats is None:
                self.report_append("left", {"ffn_up": up.name, "reason": "no calibration statistics"})
                continue
            maxima = stats.channel_absmax.astype(np.float64)
            keep = maxima >= self.options.threshold * maxima.std()
            if keep.sum() < self.options.min_keep:
                keep[np.argsort(-maxima)[: self.options.min_keep]] = True
            removed = int((~keep).sum())
            removed_total += removed
            kept_total += int(keep.sum())
            self.report_append("layers", {"layer": up.layer, "ffn_up": up.name, "units": int(keep.size),
                                          "removed": removed})
            if removed == 0:
                continue
            self._slice(up, down, keep, path_values)
            self._slice_stats(down.node.inputs[0].name, keep)
            modified = True
        total = removed_total + kept_total
        self.report("removed_fraction", removed_total / total if total else 0.0)
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _path_to_down(up: Linear, downs: dict) -> tuple[Linear, list[ir.Value]] | str:
        """The ffn_down reached from up's output through elementwise ops only, or why not."""
        frontier, seen, path_values, found = [up.output], set(), [], None
        while frontier:
            value = frontier.pop()
            if value.is_graph_output():
                return "FFN hidden activation is a graph output"
            for use in value.uses():
                node = use.node
                if id(node) in downs:
                    if found is not None and found.node is not downs[id(node)].node:
                        return "FFN hidden activation feeds two down projections"
                    found = downs[id(node)]
                    continue
                if node.op_type not in _ELEMENTWISE:
                    return f"FFN hidden activation also feeds {node.op_type}"
                for inp in node.inputs:
                    if inp is not None and inp.const_value is not None and inp.const_value.size != 1:
                        return f"{node.op_type} on the FFN path has a non-scalar constant"
                if id(node) not in seen:
                    seen.add(id(node))
                    path_values.extend(node.outputs)
                    frontier.extend(node.outputs)
        if found is None:
            return "no ffn_down reached"
        if found.weight is up.weight or len(list(up.weight.uses())) != 1 or len(list(found.weight.uses())) != 1:
            return "weights shared with other MatMuls"
        return found, path_values

    def _slice_stats(self, name: str, keep: np.ndarray) -> None:
        """Later passes (outlier channels, recovery) read these statistics: keep them in step."""
        stats = self.ctx.stats.get(name)
        if stats is None:
            return
        # a new object: the calibration cache (shared by the compiles of a bench) keeps the original
        self.ctx.stats[name] = dataclasses.replace(
            stats,
            channel_absmax=stats.channel_absmax[keep],
            channel_sumsq=stats.channel_sumsq[keep],
            samples=np.ascontiguousarray(stats.samples[:, keep]),
            gram=None if stats.gram is None else np.ascontiguousarray(stats.gram[np.ix_(keep, keep)]))

    @staticmethod
    def _slice(up: Linear, down: Linear, keep: np.ndarray, path_values: list[ir.Value]) -> None:
        w1 = up.weight.const_value.numpy()
        w1 = w1[keep, :] if up.transposed else w1[:, keep]
        up.weight.const_value = ir.tensor(np.ascontiguousarray(w1), name=up.weight.name)
        up.weight.shape = ir.Shape(w1.shape)
        if up.bias is not None:
            b1 = up.bias.const_value.numpy()
            b1 = b1[..., keep]
            up.bias.const_value = ir.tensor(np.ascontiguousarray(b1), name=up.bias.name)
            up.bias.shape = ir.Shape(b1.shape)
        w2 = down.weight.const_value.numpy()
        w2 = w2[:, keep] if down.transposed else w2[keep, :]
        down.weight.const_value = ir.tensor(np.ascontiguousarray(w2), name=down.weight.name)
        down.weight.shape = ir.Shape(w2.shape)
        for value in [up.node.outputs[0], up.output, *path_values]:
            if value.shape is not None and len(value.shape) >= 1:
                dims = list(value.shape)
                dims[-1] = int(keep.sum())
                value.shape = ir.Shape(dims)
