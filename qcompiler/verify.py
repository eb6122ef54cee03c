"""Verify: run the compiled model beside the FP32 one on the same inputs and measure the error.

Per output: cosine similarity, relative L2 error and max abs difference. Per layer:
the relative L2 error of every linear's output (passes keep those value names), so
the report can show where the error comes from. The compiled model runs with the
qcompiler op library registered when it uses our custom ops.
"""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler.calibration import session_with_taps
from qcompiler.errors import QCompilerError

CUSTOM_DOMAIN = "ai.qcompiler"


def uses_custom_ops(model) -> bool:
    """Whether any node (subgraphs included) of an onnx-ir model or a ModelProto is one of ours."""
    if isinstance(model, onnx.ModelProto):
        return _graph_uses_custom_ops(model.graph)
    return any(node.domain == CUSTOM_DOMAIN for node in model.graph.all_nodes())


def _graph_uses_custom_ops(graph: onnx.GraphProto) -> bool:
    for node in graph.node:
        if node.domain == CUSTOM_DOMAIN:
            return True
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            if any(_graph_uses_custom_ops(g) for g in subgraphs):
                return True
    return False


def make_session(proto_or_model, taps=(), threads: int = 1):
    """An onnxruntime session (with our op library when needed), optionally tapping values."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if uses_custom_ops(proto_or_model):
        try:
            from qcompiler import ops

            ops.register(opts)
        except Exception as exc:  # the function fallback still runs the model
            opts.log_severity_level = 3
            _ = exc
    return session_with_taps(proto_or_model, list(taps), session_options=opts)


def _rel_l2(ref: np.ndarray, got: np.ndarray) -> float:
    denom = float(np.linalg.norm(ref.astype(np.float64)))
    diff = float(np.linalg.norm(ref.astype(np.float64) - got.astype(np.float64)))
    return diff / denom if denom > 0 else diff


def _cosine_rows(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    a = ref.reshape(-1, ref.shape[-1]).astype(np.float64) if ref.ndim else ref.reshape(1, 1)
    b = got.reshape(-1, got.shape[-1]).astype(np.float64) if got.ndim else got.reshape(1, 1)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)


def verify(reference_model, compiled_model, feeds: list[dict[str, np.ndarray]], layer_names: list[str],
           progress=None) -> dict:
    """Compare compiled vs reference on `feeds`; returns output and per-layer errors."""
    ref_sess = make_session(reference_model, taps=layer_names)
    ref_outputs = [o.name for o in ref_sess.get_outputs()]
    got_sess = make_session(compiled_model, taps=layer_names)
    got_names = {o.name for o in got_sess.get_outputs()}
    layers = [n for n in layer_names if n in got_names and n in ref_outputs]
    graph_outputs = [n for n in ref_outputs if n not in set(layer_names)]
    out_stats = {n: {"cos": [], "rel": [], "maxabs": 0.0} for n in graph_outputs}
    layer_err = {n: [] for n in layers}
    for i, feed in enumerate(feeds):
        try:
            ref = dict(zip(graph_outputs + layers, ref_sess.run(graph_outputs + layers, feed)))
            got = dict(zip(graph_outputs + layers, got_sess.run(graph_outputs + layers, feed)))
        except Exception as exc:
            raise QCompilerError(f"verification run failed: {str(exc).splitlines()[0][:200]}") from None
        for n in graph_outputs:
            r, g = ref[n], got[n]
            if r.dtype.kind != "f":
                out_stats[n]["rel"].append(float(np.mean(r != g)))
                continue
            out_stats[n]["cos"].extend(_cosine_rows(r, g).tolist())
            out_stats[n]["rel"].append(_rel_l2(r, g))
            out_stats[n]["maxabs"] = max(out_stats[n]["maxabs"], float(np.max(np.abs(r - g))) if r.size else 0.0)
        for n in layers:
            # a pruned FFN's hidden layer has fewer units: not comparable; empty: an If branch not taken
            if ref[n].shape == got[n].shape and ref[n].size:
                layer_err[n].append(_rel_l2(ref[n], got[n]))
        if progress:
            progress(i + 1, len(feeds))
    outputs = {}
    for n, s in out_stats.items():
        entry = {"rel_l2": float(np.mean(s["rel"])) if s["rel"] else 0.0, "max_abs": s["maxabs"]}
        if s["cos"]:
            entry["cosine_mean"] = float(np.mean(s["cos"]))
            entry["cosine_min"] = float(np.min(s["cos"]))
        outputs[n] = entry
    per_layer = {n: float(np.mean(v)) for n, v in layer_err.items() if v}
    worst = max(per_layer.items(), key=lambda kv: kv[1]) if per_layer else None
    return {
        "samples": len(feeds),
        "outputs": outputs,
        "per_layer_rel_l2": per_layer,
        "worst_layer": {"value": worst[0], "rel_l2": worst[1]} if worst else None,
    }


def check_model(path) -> str:
    """onnx.checker full check on the saved model; returns '' when it passes, else the reason.

    Models with our custom domain are checked too: their ops are defined by model-local functions.
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
        return ""
    except Exception as exc:
        return str(exc).strip().splitlines()[0][:300]
