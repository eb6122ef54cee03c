"""Quantization-aware training of a torch model against its FP32 teacher: the loop for users who
have the torch source (the ONNX-only path is qcompiler.qat.recover).

`train_qat` runs Adam with warm-up and cosine decay over a step budget (and an optional wall-time
cap), gradient clipping, and a progress bar; the caller's `loss_fn(batch)` computes the loss from
the student (and usually a frozen teacher). `kd_loss` is the usual one for sequence models:
cross-entropy on the labels plus KL divergence to the teacher's distribution (word-level
knowledge distillation, as in TernaryBERT's logits term and Kim & Rush 2016).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.nn import functional as F

from qcompiler.qat.loop import optimize
from qcompiler.qat.modules import FakeQuantWeight

__all__ = ["QATConfig", "train_qat", "kd_loss", "param_groups"]


@dataclasses.dataclass
class QATConfig:
    steps: int = 600
    max_seconds: float | None = None
    lr: float = 1e-3            # latent quantized weights
    scale_lr: float = 1e-4      # trainable scales (bcq alphas, int4 scales)
    fp_lr: float = 3e-4         # everything else (biases, norms, FP32 modules)
    warmup: int = 30
    clip: float = 1.0
    weight_decay: float = 0.0


def param_groups(model: nn.Module, cfg: QATConfig) -> list[dict]:
    """Latent weights, format scales and the remaining trainable parameters, each with its rate."""
    latent, scales = [], []
    for module in model.modules():
        if isinstance(module, FakeQuantWeight):
            latent.append(module.weight)
            scales += [p for n, p in module.named_parameters(recurse=False) if n != "weight"]
    seen = {id(p) for p in latent + scales}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    groups = [{"params": latent, "lr": cfg.lr}, {"params": scales, "lr": cfg.scale_lr},
              {"params": rest, "lr": cfg.fp_lr, "weight_decay": cfg.weight_decay}]
    return [g for g in groups if g["params"]]


def train_qat(model: nn.Module, batches: Iterator[Any], loss_fn: Callable[[Any], tuple[torch.Tensor, dict]],
              cfg: QATConfig, console: Console | None = None, show: bool = True, label: str = "QAT") -> dict:
    """Train `model` for cfg.steps batches drawn from `batches` (or until cfg.max_seconds).
    Returns {steps, seconds, loss_first, loss_last} (loss_last: mean of the last 20 steps)."""
    columns = (TextColumn(f"  {label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    model.train()
    with Progress(*columns, console=console or Console(stderr=True), transient=True, disable=not show) as bar:
        task = bar.add_task(label, total=cfg.steps, loss="-")
        recent: list[float] = []

        def on_step(step, loss, parts):
            recent[:] = (recent + [loss])[-20:]
            bar.update(task, completed=step, loss=f"{sum(recent) / len(recent):.4f}")

        losses, seconds = optimize(param_groups(model, cfg), cfg.steps, cfg.warmup, lambda: loss_fn(next(batches)),
                                   cfg.max_seconds, cfg.clip, on_step)
    model.eval()
    tail = losses[-20:]
    return {"steps": len(losses), "seconds": round(seconds, 1),
            "loss_first": round(losses[0], 5) if losses else None,
            "loss_last": round(sum(tail) / len(tail), 5) if tail else None}


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
            kd_weight: float = 0.5, temperature: float = 1.0, label_smoothing: float = 0.0
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """(1 - kd_weight) * CE(labels) + kd_weight * T^2 * KL(teacher || student) over the positions
    whose label is not ignore_index. logits [..., V], labels [...]."""
    v = logits.shape[-1]
    flat, tflat, y = logits.reshape(-1, v), teacher_logits.reshape(-1, v), labels.reshape(-1)
    keep = y != ignore_index
    ce = F.cross_entropy(flat[keep], y[keep], label_smoothing=label_smoothing)
    t = temperature
    kl = F.kl_div(F.log_softmax(flat[keep] / t, -1), F.log_softmax(tflat[keep] / t, -1), log_target=True,
                  reduction="batchmean") * t * t
    loss = (1 - kd_weight) * ce + kd_weight * kl
    return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}
