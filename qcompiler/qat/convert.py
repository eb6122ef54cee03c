"""Torch models in and out of fake quantization, by a scheme: nn.Linear -> QuantLinear and
nn.Embedding -> QuantEmbedding before training (`quantize_modules`), and back to plain modules
holding the trained on-grid weights for torch.onnx export (`export_modules`).

The formats come from the same scheme files the compiler reads ([weights], [roles.*],
[embeddings]), through QuantSpec.from_plan, so `qcompile --scheme S` on the export finds every
trained weight on S's grid and packs it losslessly. Roles are not inferred from a torch module
tree: pass `role_of(name, module)` (e.g. "attn_q", "ffn_up") when the scheme has per-role rules;
every linear is "linear" otherwise.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from qcompiler.qat.modules import FORMATS, QuantEmbedding, QuantLinear, QuantSpec

__all__ = ["quantize_modules", "export_modules", "EMBEDDING_FORMATS"]

EMBEDDING_FORMATS = ("ternary", "int8", "int4")


def _spec(scheme, role: str, noise: float) -> QuantSpec | None:
    settings = scheme.weight_settings(role)
    fmt = str(settings.get("format", "none"))
    return QuantSpec.from_plan(fmt, settings, noise) if fmt in FORMATS else None


def _embedding_spec(scheme, noise: float) -> QuantSpec | None:
    settings = dict(scheme.embeddings or {})
    fmt = str(settings.get("format", "none"))
    if fmt not in EMBEDDING_FORMATS:
        return None                      # e.g. "packed" (rows of several widths): left FP32
    if fmt == "int4":
        settings.setdefault("block_size", 32)
        settings["symmetric"] = True     # quantize_embeddings: symmetric int4 rows
    settings.setdefault("scale_dtype", "float16")   # quantize_embeddings stores row scales in float16
    return QuantSpec.from_plan(fmt, settings, noise)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def quantize_modules(model: nn.Module, scheme, role_of: Callable[[str, nn.Module], str | None] | None = None,
                     embeddings: bool = True, noise: float = 0.0) -> dict[str, str]:
    """Swap, in place, every nn.Linear (and nn.Embedding when `embeddings`) for its fake-quantized
    twin in the scheme's format, initialised from the module's weight. `role_of` returning None
    leaves a module FP32. Returns {module name: format} of what was swapped."""
    from qcompiler.schemes import load_scheme

    scheme = load_scheme(scheme) if isinstance(scheme, str) else scheme
    swapped: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            role = role_of(name, module) if role_of else "linear"
            spec = None if role is None else _spec(scheme, role, noise)
            if spec is not None:
                _set(model, name, QuantLinear.from_linear(module, spec))
                swapped[name] = spec.format
        elif isinstance(module, nn.Embedding) and embeddings:
            spec = _embedding_spec(scheme, noise)
            if spec is not None:
                _set(model, name, QuantEmbedding.from_embedding(module, spec))
                swapped[name] = f"{spec.format} rows"
    return swapped


@torch.no_grad()
def export_modules(model: nn.Module) -> nn.Module:
    """A copy of `model` with every QuantLinear / QuantEmbedding back as nn.Linear / nn.Embedding
    holding the weight the compiled op multiplies by (eval mode, no noise): what torch.onnx exports
    and qcompile packs without loss."""
    out = copy.deepcopy(model).eval()
    for name, module in list(out.named_modules()):
        if isinstance(module, QuantLinear):
            eff = torch.from_numpy(module.qweight.effective())          # [K, N]
            lin = nn.Linear(eff.shape[0], eff.shape[1], bias=module.bias is not None)
            lin.weight.copy_(eff.T)
            if module.bias is not None:
                lin.bias.copy_(module.bias)
            _set(out, name, lin)
        elif isinstance(module, QuantEmbedding):
            table = torch.from_numpy(module.qweight.effective()).T      # [V, D]
            emb = nn.Embedding(table.shape[0], table.shape[1], padding_idx=module.padding_idx)
            emb.weight.copy_(table)
            _set(out, name, emb)
    return out
