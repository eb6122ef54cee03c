"""The ONNX-to-torch evaluator against the ONNX backend node tests of the installed onnx package:
every op it claims (SUPPORTED_OPS) passes every node test of that op whose tensors are float32,
int64 or bool, and it claims every op that transformer exports use (TRANSFORMER_EXPORT_OPS).

Cases: onnx/backend/test/data/node/*/ (model.onnx + test_data_set_*/*.pb) when the package ships
that folder, else the generators it ships (onnx.backend.test.case.node, the code those folders are
written from: the same models and data; the onnx 1.23 wheel ships only the generators).
A case belongs to every op its graph uses (If bodies included); it runs when all of them are
claimed. Tolerance: each case's own rtol/atol (onnx's backend runner defaults, rtol 1e-3 and
atol 1e-7, unless the case sets others); integer and bool outputs must be equal.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import io
import os
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import numpy_helper

from qcompiler.qat.onnx_to_torch import SUPPORTED_OPS, OnnxModule

# The union of op types in the exports of random small BERT, RoBERTa, DeBERTa-v2, DistilBERT,
# ALBERT, GPT-2, LLaMA, Qwen2, Phi-3, T5, BART, Marian, Whisper (Optimum: every file of the folder;
# torch.onnx TorchScript at opsets 14 and 17; torch.onnx dynamo) and of all-MiniLM-L6-v2, as
# `python -m models.op_census` printed it (torch 2.13, transformers 4.57.6, optimum-onnx 2.1.0:
# 45 exports, the dynamo ones with dynamic batch and sequence; TorchScript fails on GPT-2, LLaMA, Qwen2, Phi-3 and Whisper with transformers' masks).
TRANSFORMER_EXPORT_OPS = (
    'Abs', 'Add', 'And', 'Cast', 'Ceil', 'Clip', 'Concat', 'Constant', 'ConstantOfShape', 'Conv', 'Cos',
    'CumSum', 'Div', 'Equal', 'Erf', 'Expand', 'Flatten', 'Gather', 'GatherElements', 'GatherND', 'Gelu',
    'Gemm', 'Greater', 'Identity', 'If', 'IsNaN', 'LayerNormalization', 'Less', 'LessOrEqual', 'Log',
    'MatMul', 'Max', 'Min', 'Mul', 'Neg', 'Not', 'Pow', 'Range', 'Reciprocal', 'ReduceMean', 'Relu', 'Reshape',
    'ScatterND', 'Shape', 'Sigmoid', 'Sign', 'Sin', 'Slice', 'Softmax', 'Split', 'Sqrt', 'Squeeze', 'Sub',
    'Tanh', 'Tile', 'Transpose', 'Trilu', 'Unsqueeze', 'Where')

DTYPES = (np.float32, np.int64, np.bool_)
# A case in float64 / int32 is expressible in float32 / int64 when no attribute names a data type
# (Cast's `to`, a Constant's tensor, ...): it runs with its tensors converted (float64 values and
# results rounded to float32, then compared with the case's tolerance).
WIDEN = {np.float64: (np.float32, onnx.TensorProto.FLOAT), np.int32: (np.int64, onnx.TensorProto.INT64)}


def _read_pb(path):
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def _from_folders(root):
    cases = []
    for folder in sorted(glob.glob(os.path.join(root, "test_*"))):
        sets = []
        for ds in sorted(glob.glob(os.path.join(folder, "test_data_set_*"))):
            try:
                sets.append(([_read_pb(p) for p in sorted(glob.glob(os.path.join(ds, "input_*.pb")))],
                             [_read_pb(p) for p in sorted(glob.glob(os.path.join(ds, "output_*.pb")))]))
            except Exception:  # noqa: BLE001 - a sequence / optional is no TensorProto
                sets.append((None, None))
        cases.append((os.path.basename(folder), onnx.load(os.path.join(folder, "model.onnx")), sets, 1e-3, 1e-7))
    return cases


@functools.lru_cache(maxsize=1)
def node_cases() -> list:
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
    if glob.glob(os.path.join(root, "test_*", "model.onnx")):
        return _from_folders(root)
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        collected = node.collect_testcases(None)
    return [(c.name, c.model, [(list(i), list(o)) for i, o in c.data_sets], c.rtol, c.atol) for c in collected]


def op_types(graph) -> set[str]:
    found = set()
    for n in graph.node:
        found.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}")
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                found |= op_types(a.g)
            for g in a.graphs:
                found |= op_types(g)
    return found


def _is_tensor_type(value_info) -> bool:
    return value_info.type.WhichOneof("value") == "tensor_type"


def _typed_attributes(graph) -> bool:
    for n in graph.node:
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.TENSOR, onnx.AttributeProto.TENSORS) or a.name in ("to", "dtype"):
                return True
            if a.type == onnx.AttributeProto.GRAPH and _typed_attributes(a.g):
                return True
    return bool(graph.initializer)


def expressed(model, sets):
    """(model, sets) with float64 / int32 tensors as float32 / int64 where that changes no semantics;
    unchanged otherwise (skip_reason then names the dtype)."""
    arrays = [np.asarray(a) for ins, outs in sets if ins is not None for a in [*ins, *outs]
              if isinstance(a, (np.ndarray, np.generic))]
    if not any(a.dtype.type in WIDEN for a in arrays) or _typed_attributes(model.graph) or \
            not all(_is_tensor_type(v) for v in [*model.graph.input, *model.graph.output]) or \
            any(a.dtype.type not in (*DTYPES, *WIDEN) for a in arrays):
        return model, sets
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        t = v.type.tensor_type
        for src, (_, code) in WIDEN.items():
            if t.elem_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(src)):
                t.elem_type = code

    def conv(a):
        a = np.asarray(a)
        return a.astype(WIDEN[a.dtype.type][0]) if a.dtype.type in WIDEN else a

    return model, [([conv(a) for a in ins], [conv(a) for a in outs]) for ins, outs in sets]


def skip_reason(model, sets) -> str | None:
    """Why a case cannot run here (None: it runs)."""
    unclaimed = sorted(op_types(model.graph) - set(SUPPORTED_OPS))
    if unclaimed:
        return f"uses unclaimed op(s) {', '.join(unclaimed)}"
    if not all(_is_tensor_type(v) for v in [*model.graph.input, *model.graph.output]):
        return "a sequence / optional / map value (the evaluator runs tensors only)"
    if not sets or any(i is None for i, _ in sets):
        return "no tensor data set"
    for ins, outs in sets:
        for a in [*ins, *outs]:
            if not isinstance(a, (np.ndarray, np.generic)) or np.asarray(a).dtype.type not in DTYPES:
                return f"dtype {getattr(a, 'dtype', type(a).__name__)} is not float32/int64/bool"
    return None


def run_case(model, sets, rtol, atol) -> str | None:
    """None when every data set matches, else what went wrong (one line)."""
    try:
        module = OnnxModule(ir.from_proto(model))
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        return f"build: {type(exc).__name__}: {exc}"
    names = [v.name for v in model.graph.input]
    for ins, outs in sets:
        try:
            with torch.no_grad():
                got = module(**{n: torch.from_numpy(np.array(a)) for n, a in zip(names, ins)})
        except Exception as exc:  # noqa: BLE001
            return f"run: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if len(got) != len(outs):
            return f"{len(got)} outputs, the case has {len(outs)}"
        for k, (want, have) in enumerate(zip(outs, got)):
            want, have = np.asarray(want), have.detach().numpy()
            if have.dtype != want.dtype or have.shape != want.shape:
                return f"output {k}: {have.dtype}{list(have.shape)} != {want.dtype}{list(want.shape)}"
            if want.dtype == np.float32:
                if not np.allclose(have, want, rtol=rtol, atol=atol, equal_nan=True):
                    return f"output {k}: max abs error {np.nanmax(np.abs(have - want)):.3g}"
            elif not np.array_equal(have, want):
                return f"output {k}: values differ"
    return None


@functools.lru_cache(maxsize=1)
def results() -> dict[str, list[tuple[str, str, str | None]]]:
    """op -> [(case, "run" | "skip", failure or skip reason)] over all node tests."""
    per_op: dict[str, list] = {op: [] for op in SUPPORTED_OPS}
    for name, model, sets, rtol, atol in node_cases():
        ops = op_types(model.graph) & set(SUPPORTED_OPS)
        if not ops:
            continue
        model, sets = expressed(model, sets)
        why = skip_reason(model, sets)
        outcome = ("skip", why) if why else ("run", run_case(model, sets, rtol, atol))
        for op in ops:
            per_op[op].append((name, *outcome))
    return per_op


def test_claims_every_op_transformer_exports_use():
    assert not set(TRANSFORMER_EXPORT_OPS) - set(SUPPORTED_OPS)


@pytest.mark.parametrize("op", SUPPORTED_OPS)
def test_passes_every_node_test_of(op):
    cases = results()[op]
    ran = [c for c in cases if c[1] == "run"]
    failed = [f"{name}: {why}" for name, kind, why in ran if why]
    assert not failed, f"{op} fails {len(failed)} of {len(ran)} node tests:\n" + "\n".join(failed)
    assert ran, f"{op} has no node test expressible in float32/int64/bool: " + \
        "; ".join(f"{n} ({why})" for n, _, why in cases)
