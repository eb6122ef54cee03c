"""The ONNX op types that transformer exports use: the random tiny models of models/hf_exports.py
exported by Optimum (its cached folders), by torch.onnx's TorchScript exporter (opset 14 and 17)
and by its dynamo exporter, plus all-MiniLM-L6-v2 by the installed transformers (default attention).

    python -m models.op_census [--out build/op_census.json] [arch ...]

Prints one line per export and writes {export: sorted op types} as JSON (subgraphs of If/Loop and
model-local functions included). tests/qat/test_onnx_to_torch_ops.py holds the union it printed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

ARCHS = ("bert", "roberta", "deberta-v2", "distilbert", "albert", "gpt2", "llama", "qwen2", "phi3", "t5", "bart",
         "marian", "whisper")


def op_types(model) -> set[str]:
    """'domain::Op' (plain 'Op' for the standard domain) of every node, subgraphs and functions too."""
    import onnx

    found: set[str] = set()

    def walk(graph):
        for node in graph.node:
            found.add(f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(model.graph)
    for fn in model.functions:
        walk(fn)
    return found


class _Wrapper:
    """forward(input_ids, attention_mask[, decoder_input_ids | input_features]) -> the first output."""

    @staticmethod
    def make(model, kind: str):
        import torch

        class W(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, *args):
                if kind == "speech":
                    out = self.m(input_features=args[0], decoder_input_ids=args[1], use_cache=False)
                elif kind == "seq2seq":
                    out = self.m(input_ids=args[0], attention_mask=args[1], decoder_input_ids=args[2],
                                 use_cache=False)
                elif kind == "causal":
                    out = self.m(input_ids=args[0], attention_mask=args[1], use_cache=False)
                else:
                    out = self.m(input_ids=args[0], attention_mask=args[1])
                return out[0]

        return W().eval()


def _inputs(arch: str, model):
    import torch

    from models.hf_exports import CAUSAL, SEQ2SEQ, SPEECH, VOCAB, _configs

    task = _configs()[arch][0] if arch in _configs() else "feature"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 9:] = 0
    if task == SPEECH:
        n = model.config.num_mel_bins
        return "speech", (torch.randn(2, n, 2 * model.config.max_source_positions, generator=g), ids[:, :4]), \
            ["input_features", "decoder_input_ids"]
    if task == SEQ2SEQ:
        return "seq2seq", (ids, mask, ids[:, :5]), ["input_ids", "attention_mask", "decoder_input_ids"]
    if task == CAUSAL:
        return "causal", (ids, mask), ["input_ids", "attention_mask"]
    return "feature", (ids, mask), ["input_ids", "attention_mask"]


def _export(module, args, names, path: Path, exporter: str) -> None:
    import torch

    seq_axes = {n: {0: "batch", 1: "seq"} for n in names if n != "input_features"}
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            auto = torch.export.Dim.AUTO
            shapes = tuple(None if n == "input_features" else {0: auto, 1: auto} for n in names)
            try:
                torch.onnx.export(module, args, str(path), dynamo=True, input_names=names, external_data=False,
                                  dynamic_shapes=(shapes,))          # forward(*args): one tuple of them
            except Exception:  # noqa: BLE001 - some models do not export with symbolic shapes: fixed ones
                torch.onnx.export(module, args, str(path), dynamo=True, input_names=names, external_data=False)
        else:
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, dynamic_axes=seq_axes,
                              opset_version=int(exporter.removeprefix("torchscript")), do_constant_folding=True)


def _source_model(arch: str):
    import torch

    if arch == "minilm":
        from models.minilm import load_torch_model

        return load_torch_model()
    from models.hf_exports import _source

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(0)
        return _source(arch, Path(tmp) / "src")


def census(archs, exporters=("optimum", "torchscript14", "torchscript17", "dynamo")) -> dict[str, list[str]]:
    import onnx

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result: dict[str, list[str]] = {}
    for arch in archs:
        model = None
        for exporter in exporters:
            key = f"{arch}/{exporter}"
            t0 = time.perf_counter()
            try:
                if exporter == "optimum":
                    if arch == "minilm":
                        continue
                    from models.compat import files_of
                    from models.hf_exports import export

                    ops: set[str] = set()
                    for f in files_of(arch):
                        ops |= op_types(onnx.load(str(export(arch) / f), load_external_data=False))
                else:
                    model = model if model is not None else _source_model(arch)
                    kind, args, names = _inputs(arch, model)
                    with tempfile.TemporaryDirectory() as tmp:
                        path = Path(tmp) / "model.onnx"
                        _export(_Wrapper.make(model, kind), args, names, path, exporter)
                        ops = op_types(onnx.load(str(path), load_external_data=False))
            except Exception as exc:  # noqa: BLE001 - a census lists what failed and goes on
                print(f"{key}: export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
                continue
            result[key] = sorted(ops)
            print(f"{key} ({time.perf_counter() - t0:.0f} s): {' '.join(sorted(ops))}", flush=True)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archs", nargs="*", default=[*ARCHS, "minilm"])
    parser.add_argument("--out", default="build/op_census.json")
    args = parser.parse_args(argv)
    result = census(args.archs)
    union = sorted(set().union(*result.values())) if result else []
    print("union:", " ".join(union))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"exports": result, "union": union}, indent=1))


if __name__ == "__main__":
    main()
