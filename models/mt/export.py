"""Export the MT model to ONNX as two files: the encoder, and the decoder with past keys/values.

encoder.onnx:  input_ids [B,S], attention_mask [B,S]
               -> cross_key.{i}, cross_value.{i} [B,H,S,dh] per decoder layer (the decoder's
                  cross-attention projections of the encoder output, computed once per sentence)
decoder.onnx:  input_ids [B,T] (new tokens), encoder_attention_mask [B,S], cross_key.{i},
               cross_value.{i}, past_key.{i}, past_value.{i} [B,H,P,dh] (P may be 0)
               -> logits [B,T,V], present_key.{i}, present_value.{i} [B,H,P+T,dh]
One decoder file serves the first step (empty past) and every later one, so decoding is
incremental; opset 17, TorchScript exporter (dynamo=False), like the project's other exports.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from models.mt.model import MarianMT

OPSET = 17


def cross_names(layers: int) -> list[str]:
    return [f"cross_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]


def past_names(layers: int, prefix: str = "past") -> list[str]:
    return [f"{prefix}_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]


class _Encoder(nn.Module):
    def __init__(self, model: MarianMT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return tuple(t for kv in self.model.encode(input_ids, attention_mask) for t in kv)


class _Decoder(nn.Module):
    def __init__(self, model: MarianMT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, encoder_attention_mask, *kv):
        n = self.model.cfg.decoder_layers
        cross = [(kv[2 * i], kv[2 * i + 1]) for i in range(n)]
        past = [(kv[2 * n + 2 * i], kv[2 * n + 2 * i + 1]) for i in range(n)]
        logits, presents = self.model.decode(input_ids, encoder_attention_mask, cross, past)
        return (logits, *(t for kv_ in presents for t in kv_))


def _export(module, args, path: Path, inputs, outputs, axes) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    os.replace(tmp, path)


def export_onnx(model: MarianMT, out_dir: str | Path) -> tuple[str, str]:
    """Write encoder.onnx and decoder.onnx into out_dir; returns their paths."""
    model = model.eval()
    out_dir = Path(out_dir)
    n, cfg = model.cfg.decoder_layers, model.cfg
    src = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = (src != 0).to(torch.int64)
    cross = cross_names(n)
    enc_axes = {"input_ids": {0: "batch", 1: "src"}, "attention_mask": {0: "batch", 1: "src"},
                **{name: {0: "batch", 2: "src"} for name in cross}}
    enc_path = out_dir / "encoder.onnx"
    _export(_Encoder(model), (src, mask), enc_path, ["input_ids", "attention_mask"], cross, enc_axes)

    with torch.no_grad():
        cross_t = [t for kv in model.encode(src, mask) for t in kv]
    past_t = [torch.randn(2, cfg.heads, 3, cfg.head_dim) for _ in range(2 * n)]
    ids = torch.tensor([[4, 5], [6, 7]])
    past, present = past_names(n, "past"), past_names(n, "present")
    dec_axes = {"input_ids": {0: "batch", 1: "new"}, "encoder_attention_mask": {0: "batch", 1: "src"},
                "logits": {0: "batch", 1: "new"},
                **{name: {0: "batch", 2: "src"} for name in cross},
                **{name: {0: "batch", 2: "past"} for name in past},
                **{name: {0: "batch", 2: "total"} for name in present}}
    dec_path = out_dir / "decoder.onnx"
    _export(_Decoder(model), (ids, mask, *cross_t, *past_t), dec_path,
            ["input_ids", "encoder_attention_mask", *cross, *past], ["logits", *present], dec_axes)
    return str(enc_path), str(dec_path)
