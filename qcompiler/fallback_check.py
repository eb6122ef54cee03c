"""Native kernels vs the ONNX function fallback on one compiled model: do they agree?

Runs the model twice on the same inputs, once with the ai.qcompiler library registered and once
in stock onnxruntime (which expands each op's FunctionProto body), and reports, per output, the
cosine and largest absolute difference. `--level0` first rewrites every op to accuracy_level 0
(fp32 activations, the packing unchanged) so the comparison isolates the kernels from the int8
activation rounding that accuracy_level 4 allows.

    python -m qcompiler.fallback_check model.onnx [--calib inputs.npz] [--samples 16] [--level0]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx

from qcompiler import calibration, model_io
from qcompiler.errors import QCompilerError, UsageError
from qcompiler.model_io import graph_protos
from qcompiler.verify import CUSTOM_DOMAIN, uses_custom_ops

__all__ = ["at_accuracy_level", "compare_native_fallback"]


def at_accuracy_level(proto: onnx.ModelProto, level: int) -> onnx.ModelProto:
    """A copy whose ai.qcompiler nodes all carry accuracy_level = level (packing untouched), in
    subgraphs too (a merged decoder's If branches)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for graph in graph_protos(out.graph):
        for node in graph.node:
            if node.domain != CUSTOM_DOMAIN:
                continue
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = level
    return out


def _session(proto: onnx.ModelProto, native: bool):
    import onnxruntime as ort

    from qcompiler import ops

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    if native:
        ops.register(opts)
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def compare_native_fallback(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> dict[str, dict]:
    """{output: {cos_mean, cos_min, max_abs}} between the native run and the function fallback."""
    if not uses_custom_ops(proto):
        raise UsageError("the model has no ai.qcompiler op: native and fallback runs are the same thing")
    native, fallback = _session(proto, True), _session(proto, False)
    names = [o.name for o in native.get_outputs()]
    inputs = {i.name for i in native.get_inputs()}
    cos: dict[str, list[float]] = {n: [] for n in names}
    max_abs = dict.fromkeys(names, 0.0)
    for feed in feeds:
        feed = {k: v for k, v in feed.items() if k in inputs}
        for name, a, b in zip(names, native.run(names, feed), fallback.run(names, feed)):
            a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
            denom = np.linalg.norm(a) * np.linalg.norm(b)
            cos[name].append(float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b)))
            max_abs[name] = max(max_abs[name], float(np.abs(a - b).max()) if a.size else 0.0)
    return {n: {"cos_mean": float(np.mean(cos[n])), "cos_min": float(np.min(cos[n])), "max_abs": max_abs[n]}
            for n in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qcompiler.fallback_check", description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--calib", help="inputs (.npz) to run; default: synthesized inputs")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--level0", action="store_true", help="compare at accuracy_level 0 (fp32 activations)")
    args = parser.parse_args(argv)
    try:
        model = model_io.load_model(args.model)
        feeds = (calibration.load_calibration(args.calib, model) if args.calib
                 else calibration.synthesize_inputs(model, samples=args.samples))[: args.samples]
        proto = onnx.load(args.model)
        if args.level0:
            proto = at_accuracy_level(proto, 0)
        result = compare_native_fallback(proto, feeds)
    except QCompilerError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    for name, r in result.items():
        print(f"{name}: cosine mean {r['cos_mean']:.6f} min {r['cos_min']:.6f}  max |diff| {r['max_abs']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
