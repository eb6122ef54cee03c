"""Knowledge distillation with the quantizers in the loop (TernaryBERT-style), bounded in steps and time.

loss = sum over layers of MSE(student hidden state, teacher hidden state)      (LayerNorm outputs)
     + sum over layers of MSE(student attention, teacher attention) * seq_len  (Softmax outputs)
     + output_weight * mean(1 - cosine(student output, teacher output))       (pooled when masked)

Padding positions (attention_mask == 0) are left out of the hidden-state and pooled terms. The
teacher is the FP32 graph; the student its fake-quantized copy (qcompiler.qat.onnx_to_torch).
TernaryBERT distils attention scores before the softmax; the exported graphs add the mask there
(-inf-like values), so we distil the probabilities and scale their MSE by the sequence length.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from qcompiler.qat.loop import optimize

__all__ = ["DistillConfig", "distill", "distill_loss", "output_cosine", "stack_feeds", "pooled", "trim_padding"]


@dataclasses.dataclass
class DistillConfig:
    steps: int = 1200                 # optimizer steps (0: no training)
    max_seconds: float | None = 1200.0  # stop early when the wall time is spent
    batch_size: int = 8
    lr: float = 2e-4                  # latent weights and FP parameters (Adam, cosine decay)
    scale_lr: float = 2e-4            # trainable scales (bcq alphas, int4 scales)
    warmup: int = 20
    output_weight: float = 1.0
    attention_weight: float = 1.0
    hidden_weight: float = 1.0
    seed: int = 0
    trim: bool = True                 # drop all-padding trailing positions (False: static-shape graphs)


def stack_feeds(feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Calibration samples (first axis 1 each, same shapes) -> one tensor per input."""
    return {k: torch.from_numpy(np.concatenate([f[k] for f in feeds], axis=0)) for k in feeds[0]}


def _mask_of(inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    for name, value in inputs.items():
        if "mask" in name.lower() and value.dim() == 2:
            return value.to(torch.float32)
    return None


def pooled(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, S, D] with a [B, S] mask -> the mask-mean over S; anything else -> flattened per sample."""
    if mask is not None and y.dim() == 3 and tuple(y.shape[:2]) == tuple(mask.shape):
        m = mask[..., None]
        return (y * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return y.reshape(y.shape[0], -1) if y.dim() > 0 else y.reshape(1, 1)


def output_cosine(student_out, teacher_out, mask) -> torch.Tensor:
    """Mean over float outputs of the per-sample cosine: [B]."""
    cos = []
    for s, t in zip(student_out, teacher_out):
        if not s.is_floating_point() or s.dim() == 0:
            continue
        cos.append(nn.functional.cosine_similarity(pooled(s, mask), pooled(t, mask), dim=-1, eps=1e-12))
    return torch.stack(cos).mean(dim=0)


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the trailing positions that every sample of the batch pads (right padding): the same
    result for the kept positions, less work (calibration samples are padded to the longest one).
    Only when every input is [B, seq, ...] (an encoder's ids/masks); otherwise the batch as is."""
    mask = _mask_of(batch)
    if mask is None:
        return batch
    used = torch.nonzero(mask.sum(dim=0) > 0)
    length = int(used.max()) + 1 if len(used) else 1
    seq = mask.shape[1]
    if length == seq:
        return batch
    if any(v.dim() < 2 or v.shape[1] != seq for v in batch.values()):
        # e.g. a decoder: a source mask beside cross-attention keys [B, H, S, d] and new tokens
        # [B, T]: the padded axis is not axis 1 everywhere, so trimming could break the shapes
        return batch
    return {k: v[:, :length] if v.dim() >= 2 and v.shape[1] == seq else v for k, v in batch.items()}


def _masked_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and s.dim() == 3 and tuple(s.shape[:2]) == tuple(mask.shape):
        m = mask[..., None]
        return ((s - t) ** 2 * m).sum() / (m.sum() * s.shape[-1]).clamp(min=1)
    return nn.functional.mse_loss(s, t)


def distill_loss(student_out, student_taps, teacher_out, teacher_taps, mask, cfg: DistillConfig
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    hidden = sum((_masked_mse(s, t, mask) for s, t in zip(student_taps["hidden"], teacher_taps["hidden"])),
                 torch.zeros(()))
    attention = torch.zeros(())
    for s, t in zip(student_taps["attention"], teacher_taps["attention"]):
        attention = attention + nn.functional.mse_loss(s, t) * s.shape[-1]
    out = (1 - output_cosine(student_out, teacher_out, mask)).mean()
    loss = cfg.hidden_weight * hidden + cfg.attention_weight * attention + cfg.output_weight * out
    return loss, {"hidden": float(hidden.detach()), "attention": float(attention.detach()), "output": float(out.detach())}


def _batches(train: dict[str, torch.Tensor], batch_size: int, seed: int, trim: bool = True):
    """Endless batches of `train`: a fresh random order whenever the current one runs out."""
    n = next(iter(train.values())).shape[0]
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(n, generator=gen), 0
    while True:
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        batch = {k: v[idx] for k, v in train.items()}
        yield trim_padding(batch) if trim else batch


def distill(student: nn.Module, teacher: nn.Module, train: dict[str, torch.Tensor], cfg: DistillConfig,
            param_groups: list[dict], progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Train `student` towards `teacher` on the samples of `train` (one tensor per input, first axis
    = samples). Stops after cfg.steps steps or cfg.max_seconds. Returns a small history."""
    batches = _batches(train, cfg.batch_size, cfg.seed, cfg.trim)

    def next_loss():
        batch = next(batches)
        with torch.no_grad():
            t_out = teacher(**batch)
            t_taps = teacher.taps
        s_out = student(**batch)
        return distill_loss(s_out, student.taps, t_out, t_taps, _mask_of(batch), cfg)

    def on_step(step, loss, parts):
        if progress is not None:
            progress(step, cfg.steps, {"loss": loss, **parts})

    student.train()
    teacher.eval()
    losses, seconds = optimize(param_groups, cfg.steps, cfg.warmup, next_loss, cfg.max_seconds, on_step=on_step)
    student.eval()
    return {"steps": len(losses), "seconds": round(seconds, 1),
            "loss_first": round(losses[0], 6) if losses else None,
            "loss_last": round(float(np.mean(losses[-10:])), 6) if losses else None}


@torch.no_grad()
def heldout_cosine(student: nn.Module, teacher: nn.Module, data: dict[str, torch.Tensor], batch_size: int = 16,
                   trim: bool = True) -> float:
    """Mean output cosine (pooled where masked) of the student vs the teacher on `data`."""
    student.eval()
    n = next(iter(data.values())).shape[0]
    cos = []
    for i in range(0, n, batch_size):
        batch = {k: v[i:i + batch_size] for k, v in data.items()}
        if not trim and i + batch_size > n:
            break                        # a static batch: the rest does not fill one
        batch = trim_padding(batch) if trim else batch
        cos.append(output_cosine(student(**batch), teacher(**batch), _mask_of(batch)))
    return float(torch.cat(cos).mean())


__all__.append("heldout_cosine")
