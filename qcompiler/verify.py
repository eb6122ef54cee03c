"""Verify: run the compiled model beside the FP32 one on the same inputs and measure the error.

Per output: cosine similarity (per row: per token), relative L2 error and max abs difference;
for a text encoder's [batch, seq, hidden] outputs with an attention mask also the cosine of the
masked mean-pooled embeddings (what sentence-embedding users compare). Per layer: the relative
L2 error of every linear's output (passes keep those value names), so the report can show where
the error comes from. The compiled model runs with the qcompiler op library registered when it
uses our custom ops.

Inputs: a held-out part of the user's calibration data when given (split_held_out), never
synthesized then; without data, inputs synthesized from the signature, and the result says so
(`synthesized`, `inputs`). The headline figure a gate reads is `primary`: the first float output's
mean-pooled cosine for an encoder with a mask, its per-token cosine otherwise.
"""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler.calibration import session_with_taps
from qcompiler.errors import CalibrationError, QCompilerError, ort_message
from qcompiler.model_io import graph_protos

CUSTOM_DOMAIN = "ai.qcompiler"


def uses_custom_ops(model) -> bool:
    """Whether any node (subgraphs included) of an onnx-ir model or a ModelProto is one of ours."""
    if isinstance(model, onnx.ModelProto):
        return _graph_uses_custom_ops(model.graph)
    return any(node.domain == CUSTOM_DOMAIN for node in model.graph.all_nodes())


def _graph_uses_custom_ops(graph: onnx.GraphProto) -> bool:
    return any(node.domain == CUSTOM_DOMAIN for g in graph_protos(graph) for node in g.node)


def make_session(proto_or_model, taps=(), threads: int = 1):
    """An onnxruntime session (with our op library when needed), optionally tapping values.

    The session's `qc_runtime` says what runs the ai.qcompiler ops: "native" (qcompiler.ops),
    "fallback: <why>" (their ONNX function bodies, when the library cannot be registered), or
    "standard" (the model has none)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    runtime = "standard"
    if uses_custom_ops(proto_or_model):
        try:
            from qcompiler import ops

            ops.register(opts)
            runtime = "native"
        except Exception as exc:  # the function fallback still runs the model, and the report says so
            runtime = f"fallback: {ort_message(exc, 200)}"
    sess = session_with_taps(proto_or_model, list(taps), session_options=opts)
    try:
        sess.qc_runtime = runtime
    except AttributeError:
        pass
    return sess


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


def split_held_out(feeds: list[dict[str, np.ndarray]], n: int) -> tuple[list, list, str, bool]:
    """(calibration part, verification part, description, held out?) of the user's samples: the last
    n held out when there are 2n or more, else the last quarter (at least one); a single sample is
    both calibrated and verified on (said so)."""
    total = len(feeds)
    if total >= 2 * n:
        k = n
    elif total >= 2:
        k = max(1, total // 4)
    else:
        return feeds, feeds, f"the only calibration sample (not held out: too few samples to hold one out)", False
    return feeds[:-k], feeds[-k:], f"{k} held-out calibration samples (the last {k} of {total}, not calibrated on)", True


def _mask_for(feed: dict, value: np.ndarray):
    """The feed's attention mask [batch, seq] when `value` is [batch, seq, hidden] over the same positions."""
    mask = feed.get("attention_mask")
    if mask is None or value.ndim != 3 or mask.ndim != 2 or mask.shape != value.shape[:2]:
        return None
    return mask


def verify(reference_model, compiled_model, feeds: list[dict[str, np.ndarray]], layer_names: list[str],
           progress=None, inputs: str = "", synthesized: bool = False) -> dict:
    """Compare compiled vs reference on `feeds`; returns output and per-layer errors.

    `inputs` says where the feeds came from; `synthesized` marks feeds not from the user's data."""
    from qcompiler.embedding_eval import mean_pooled

    ref_sess = make_session(reference_model, taps=layer_names)
    ref_outputs = [o.name for o in ref_sess.get_outputs()]
    got_sess = make_session(compiled_model, taps=layer_names)
    got_names = {o.name for o in got_sess.get_outputs()}
    layers = [n for n in layer_names if n in got_names and n in ref_outputs]
    n_graph = len(reference_model.graph.output) if isinstance(reference_model, onnx.ModelProto) \
        else len(reference_model.graph.outputs)
    graph_outputs = ref_outputs[:n_graph]       # taps come after the model's own outputs
    run_names = graph_outputs + [n for n in layers if n not in graph_outputs]
    out_stats = {n: {"cos": [], "pooled": [], "rel": [], "maxabs": 0.0} for n in graph_outputs}
    has_past = any("past" in k.lower() and "mask" not in k.lower() for k in (feeds[0] if feeds else {}))
    layer_err = {n: [] for n in layers}
    for i, feed in enumerate(feeds):
        try:
            ref = dict(zip(run_names, ref_sess.run(run_names, feed)))
        except Exception as exc:     # the user's sample does not run on their own model: a data error
            kind = QCompilerError if synthesized else CalibrationError
            raise kind(f"the input model does not run on verification sample {i} ({inputs or 'given inputs'}): "
                       f"{ort_message(exc)}") from None
        try:
            got = dict(zip(run_names, got_sess.run(run_names, feed)))
        except Exception as exc:
            raise QCompilerError(f"the compiled model does not run on verification sample {i}, the input model "
                                 f"does: {ort_message(exc)}") from None
        for n in graph_outputs:
            r, g = ref[n], got[n]
            if r.dtype.kind != "f":
                out_stats[n]["rel"].append(float(np.mean(r != g)))
                continue
            out_stats[n]["cos"].extend(_cosine_rows(r, g).tolist())
            mask = None if has_past else _mask_for(feed, r)
            if mask is not None:
                out_stats[n]["pooled"].extend(_cosine_rows(mean_pooled(r, mask), mean_pooled(g, mask)).tolist())
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
        if s["pooled"]:
            entry["pooled_cosine_mean"] = float(np.mean(s["pooled"]))
            entry["pooled_cosine_min"] = float(np.min(s["pooled"]))
        outputs[n] = entry
    primary = None
    first = next((n for n in graph_outputs if "cosine_mean" in outputs[n]), None)
    if first is not None:
        o = outputs[first]
        pooled = "pooled_cosine_mean" in o
        primary = {"output": first, "metric": "mean_pooled_cosine" if pooled else "per_token_cosine",
                   "cosine_mean": o["pooled_cosine_mean" if pooled else "cosine_mean"],
                   "cosine_min": o["pooled_cosine_min" if pooled else "cosine_min"], "rel_l2": o["rel_l2"]}
    per_layer = {n: float(np.mean(v)) for n, v in layer_err.items() if v}
    worst = max(per_layer.items(), key=lambda kv: kv[1]) if per_layer else None
    return {
        "samples": len(feeds),
        "inputs": inputs,
        "synthesized": bool(synthesized),
        "runtime": getattr(got_sess, "qc_runtime", "standard"),
        "primary": primary,
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
