"""The one torch.onnx export call our encoders share: inputs input_ids/attention_mask,
output last_hidden_state, batch and sequence dynamic, TorchScript exporter (the dynamo one
cannot write opset 14)."""

from __future__ import annotations

import warnings


def export_encoder(model, args, path, opset: int) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "last_hidden_state": {0: "batch", 1: "seq"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
