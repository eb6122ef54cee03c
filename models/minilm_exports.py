"""all-MiniLM-L6-v2 exported the ways a user of the installed transformers gets it: its default
attention implementation (not models.minilm's eager one), by torch.onnx's TorchScript exporter at
opset 14 or 17, or by its dynamo exporter (batch and sequence dynamic). Cached beside models.minilm's
export; written atomically.

    python -m models.minilm_exports ts14|ts17|dynamo   # prints the path
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

from models.minilm import DEFAULT_CACHE, encode, model_dir

KINDS = ("ts14", "ts17", "dynamo")
EXPORT_VERSION = 1


def _model():
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    bert = BertModel.from_pretrained(str(model_dir()), local_files_only=True, add_pooling_layer=False).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHidden().eval()


def export(kind: str, cache: Path | None = None) -> str:
    """Path of MiniLM exported as `kind` (ts14, ts17 or dynamo), made once."""
    import torch

    if kind not in KINDS:
        raise ValueError(f"unknown export kind {kind!r} (one of {', '.join(KINDS)})")
    cache = Path(cache) if cache is not None else DEFAULT_CACHE
    import transformers

    target = cache / f"all-MiniLM-L6-v2.{kind}.tf{transformers.__version__}.v{EXPORT_VERSION}.onnx"
    if target.exists():
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    feeds = encode(["A short sentence to trace the graph.", "Another one, a little bit longer than the first."])
    args = (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    names = ["input_ids", "attention_mask"]
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=cache)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if kind == "dynamo":
                dim = torch.export.Dim.AUTO
                torch.onnx.export(_model(), args, tmp, dynamo=True, input_names=names,
                                  output_names=["last_hidden_state"], external_data=False,
                                  dynamic_shapes=({0: dim, 1: dim}, {0: dim, 1: dim}))
            else:
                axes = {n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]}
                torch.onnx.export(_model(), args, tmp, dynamo=False, input_names=names,
                                  output_names=["last_hidden_state"], dynamic_axes=axes,
                                  opset_version=int(kind[2:]), do_constant_folding=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(target)


if __name__ == "__main__":
    for k in sys.argv[1:] or KINDS:
        print(k, export(k), flush=True)
