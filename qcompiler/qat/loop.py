"""The optimisation loop both trainers share (qcompiler.qat.distill for ONNX graphs,
qcompiler.qat.trainer for torch models): Adam, linear warm-up then cosine decay over the step
budget, optional gradient-norm clipping, a wall-time cap."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

__all__ = ["lr_factor", "optimize"]


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Learning-rate multiplier of `step`: linear warm-up over `warmup` steps, then cosine to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(steps - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def optimize(groups: list[dict], steps: int, warmup: int, next_loss: Callable[[], tuple[torch.Tensor, dict]],
             max_seconds: float | None = None, clip: float = 0.0,
             on_step: Callable[[int, float, dict], None] | None = None) -> tuple[list[float], float]:
    """Adam over `groups` (each with its "lr") for `steps` steps or until `max_seconds`; next_loss()
    gives one step's (loss, parts); on_step(step number, loss, parts) after each step.
    Returns (the losses, seconds)."""
    opt = torch.optim.Adam(groups)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    start = time.perf_counter()
    losses: list[float] = []
    for step in range(steps):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        loss, parts = next_loss()
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, steps, warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1], parts)
    return losses, time.perf_counter() - start
