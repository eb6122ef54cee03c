"""`--recover distill`: distil the calibrated-recovery model from the FP32 original, then keep the
better of the two.

Called by the pipeline after calibration, before the transform passes. The canonical graph
becomes a torch student (qcompiler.qat.onnx_to_torch) whose planned ternary / bcq / int4 weights
are FakeQuantWeight modules initialised from the calibrated recovery the passes would write
(same codes, scales and float16 outlier rows), its embedding tables the dequantized tables that
quantize_embeddings would write (frozen), and its linear biases and LayerNorm parameters
trainable. After distillation on the calibration samples (all but a held-out tail), the student
and its step-0 self (= calibrated recovery) are compared on the held-out tail; only when the
trained one is better are its weights written back: quantized weights as their exact dequantized
values, which the passes then pack losslessly (qcompiler.qat.on_grid), so the compiled model is
the trained fake-quant model to float rounding (activations aside: accuracy_level 4 ops quantize
them to int8 at run time, the student does not).
"""

from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from qcompiler.analyze import Linear, weight_array
from qcompiler.errors import UsageError
from qcompiler.passes.base import QPass
from qcompiler.qat.distill import DistillConfig, distill, heldout_cosine, stack_feeds
from qcompiler.qat.modules import FakeQuantWeight, QuantSpec
from qcompiler.qat.on_grid import find_on_grid
from qcompiler.qat.onnx_to_torch import SUPPORTED_OPS, OnnxModule, first_unsupported
from qcompiler.qat.torch_ops import UnsupportedOp, torch_dtype

__all__ = ["RECOVER_MODES", "DEFAULT_STEPS", "DEFAULT_SECONDS", "RecoverOptions", "DistillRecovery",
           "recover_with_distillation", "with_recovery", "build_student", "write_back", "check_trainable",
           "UnsupportedTraining"]

RECOVER_MODES = ("calibrated", "distill")
DEFAULT_STEPS = 1200       # MiniLM, 2 threads: 1200 steps in 544 s, ternary cosine 0.952 (600 steps: 0.933)
DEFAULT_SECONDS = 1200.0   # 20 minutes of training at most, whatever the step count
TRAINABLE_FORMATS = ("ternary", "bcq", "int4")


@dataclasses.dataclass
class RecoverOptions:
    steps: int = DEFAULT_STEPS
    max_seconds: float | None = DEFAULT_SECONDS
    batch_size: int = 8
    lr: float = 2e-4
    noise: float = 0.0          # MDNQ-style noise rate on the quantized weights while training
    heldout: int = 32           # calibration samples kept for the comparison (at most 1/4 of them)
    threads: int | None = None  # torch threads (None: torch's default)
    seed: int = 0
    augment: int = 0            # unlabeled variants per training sample (qcompiler.qat.augment); 0: none


class _Param(nn.Module):
    """A trainable FP initializer (bias, LayerNorm scale/shift) for OnnxModule's `weights`."""

    def __init__(self, array: np.ndarray):
        super().__init__()
        self.value = nn.Parameter(torch.from_numpy(np.array(array, np.float32)))

    def forward(self) -> torch.Tensor:
        return self.value


def _is_tied(ctx, lin: Linear) -> bool:
    return any(e.table is lin.weight for e in ctx.roles.embeddings)


def _calibrated(ctx, lin: Linear, fmt: str, settings: dict, gram) -> tuple[np.ndarray, np.ndarray, Any]:
    """(effective weight [K, N], outlier rows, format params) that the scheme's pass would write."""
    w = weight_array(lin)
    if fmt in ("ternary", "bcq"):
        from qcompiler.passes.replace_matmul import ReplaceMatMulOptions, _settings, quantize_and_pack

        s = _settings(lin.name, fmt, settings)
        p = quantize_and_pack(w, fmt, s, gram, ReplaceMatMulOptions())
        eff = p.effective.copy()
        idx = np.asarray(p.outlier_idx, np.int64)
        if len(idx):    # the op adds the float16 rows alone (its packed rows there are ignored)
            eff[idx] = p.outlier_w.astype(np.float32)
        return eff, idx, None
    from qcompiler.passes.quantize_int4 import QuantizeInt4Options, quantize_int4_weight
    from qcompiler.quantizers.recovery import recover

    o = QuantizeInt4Options()
    block = int(settings.get("block_size", 32))
    symmetric = bool(settings.get("symmetric", True))
    if str(settings.get("recovery", "none")) == "gptq" and gram is not None:
        rec = recover(w, gram, "int4", 4, block, n_outliers=int(settings.get("n_outliers", 2)),
                      act_order=o.act_order, refit=o.refit, damp=o.damp, symmetric=symmetric)
        eff = rec.dequantized.copy()
        idx = np.asarray(rec.outlier_idx, np.int64)
        if len(idx):
            eff[idx] = rec.outlier_w.astype(np.float32)
        return eff, idx, (rec.scales, rec.zero_points)
    q = quantize_int4_weight(w, block, symmetric, o.grid, o.min_ratio, o.refine)
    return q.dequantize(), np.zeros(0, np.int64), (q.scales, q.zero_points)


def _embedding_tables(ctx) -> dict[str, np.ndarray]:
    """The int8 / int4 tables quantize_embeddings writes, dequantized (frozen in the student). Other
    embedding formats (PackedGather rows) stay FP32 in the student: a small mismatch, not an error."""
    from qcompiler.quantizers.uniform import quantize_rows

    out = {}
    for emb in ctx.roles.embeddings:
        wp = ctx.plan.get(emb.name)
        table = emb.table.const_value
        if wp is None or wp.format not in ("int8", "int4") or table is None or table.size < 4096:
            continue
        t = table.numpy().astype(np.float32)
        bits = 8 if wp.format == "int8" else 4
        q = quantize_rows(t, bits=bits, block_size=int(wp.settings.get("block_size", 32)) if bits == 4 else None,
                          search_clip=bits == 4)
        q.scales = q.scales.astype(np.float16).astype(np.float32)
        out[emb.name] = q.dequantize()
    return out


def build_student(ctx, model: ir.Model, noise: float = 0.0):
    """(student, teacher, {weight name: (Linear, FakeQuantWeight)}, {initializer name: _Param})."""
    stats = ctx.stats or {}
    quantized: dict[str, tuple[Linear, FakeQuantWeight]] = {}
    transposed: dict[str, bool] = {}
    for lin in ctx.roles.linears:
        wp = ctx.plan.get(lin.name)
        if wp is None or wp.format not in TRAINABLE_FORMATS or lin.name in quantized or _is_tied(ctx, lin):
            continue
        grams = [getattr(stats.get(other.node.inputs[0].name), "gram", None)
                 for other in ctx.roles.linears if other.name == lin.name]
        gram = sum(grams) if grams and all(g is not None for g in grams) else None
        eff, idx, params = _calibrated(ctx, lin, wp.format, wp.settings, gram)
        spec = QuantSpec.from_plan(wp.format, wp.settings, noise)
        fq = FakeQuantWeight(torch.from_numpy(eff), spec, idx)
        if wp.format == "bcq":
            rec = find_on_grid(eff, "bcq", spec.bits, spec.group_size, spec.scale_dtype, outliers=idx)
            if rec is not None:
                fq.set_alphas(rec.scales)
        elif wp.format == "int4":
            fq.set_int4(*params)
        quantized[lin.name] = (lin, fq)
        transposed[lin.name] = lin.transposed
    fp: dict[str, _Param] = {}
    for lin, _ in quantized.values():
        b = lin.bias
        if b is not None and b.is_initializer() and b.const_value is not None and b.name not in fp:
            fp[b.name] = _Param(b.const_value.numpy())
    for node in model.graph:
        if node.op_type in ("LayerNormalization", "RMSNormalization"):
            for v in node.inputs[1:]:
                if v is not None and v.is_initializer() and v.const_value is not None and v.name not in fp \
                        and v.const_value.dtype == ir.DataType.FLOAT:
                    fp[v.name] = _Param(v.const_value.numpy())
    teacher = OnnxModule(model)
    weights = {name: fq for name, (_, fq) in quantized.items()}
    weights.update(fp)
    student = OnnxModule(model, weights=weights, transposed=transposed, overrides=_embedding_tables(ctx))
    return student, teacher, quantized, fp


def _split(feeds: list[dict[str, np.ndarray]], heldout: int):
    n = len(feeds)
    if n < 4:
        return feeds, feeds, "all samples (fewer than 4: no separate held-out set)"
    h = max(1, min(heldout, n // 4))
    return feeds[:-h], feeds[-h:], f"last {h} of {n} calibration samples"


def _static_batch(model: ir.Model, sample: dict[str, np.ndarray]) -> int | None:
    """For a graph whose inputs have fixed shapes (e.g. a dynamo export without dynamic axes): the
    rows of one calibration sample, the batch it must be run with; None when shapes are dynamic."""
    for v in model.graph.inputs:
        shape = v.shape
        if shape is not None and len(shape) >= 2 and all(isinstance(d, int) for d in shape) and v.name in sample:
            return int(sample[v.name].shape[0])
    return None


def write_back(model: ir.Model, quantized, fp) -> None:
    for name, (lin, fq) in quantized.items():
        eff = fq.effective()
        array = eff.T if lin.transposed else eff
        old = lin.weight.const_value
        lin.weight.const_value = ir.tensor(np.ascontiguousarray(array.astype(np.float32)).reshape(old.shape),
                                           name=old.name)
    values = model.graph.initializers
    for name, p in fp.items():
        old = values[name].const_value
        values[name].const_value = ir.tensor(p.value.detach().numpy().astype(np.float32).reshape(old.shape),
                                             name=old.name)


def recover_with_distillation(ctx, model: ir.Model, feeds: list[dict[str, np.ndarray]] | None,
                              options: RecoverOptions | None = None, console: Console | None = None,
                              show: bool = False) -> dict[str, Any]:
    """Distil, compare with calibrated recovery on held-out samples, write back the better. Returns
    the report entry (`chosen` says which)."""
    o = options or RecoverOptions()
    if o.steps < 0:
        raise UsageError(f"--recover-steps must be >= 0, got {o.steps}")
    t0 = time.perf_counter()
    if o.threads:
        torch.set_num_threads(int(o.threads))
    torch.manual_seed(o.seed)
    source = "calibration data"
    if not feeds:
        from qcompiler import calibration

        feeds = calibration.synthesize_inputs(model, samples=max(ctx.options.calib_samples, 64), seed=ctx.options.seed)
        source = f"synthesized ({len(feeds)} samples of random tokens)"
    student, teacher, quantized, fp = build_student(ctx, model, o.noise)
    entry: dict[str, Any] = {"mode": "distill", "data": source, "trained_weights": len(quantized),
                             "trained_fp_parameters": len(fp)}
    if not quantized:
        entry.update(chosen="calibrated", reason="no ternary/bcq/int4 weight to train")
        return entry
    train_feeds, held_feeds, held_desc = _split(feeds, o.heldout)
    if o.augment:               # the held-out samples stay as given: they judge trained vs calibrated
        from qcompiler.qat.augment import augment

        extra = augment(train_feeds, o.augment, seed=o.seed)
        entry["augmented_samples"] = len(extra)
        train_feeds = train_feeds + extra
    train, held = stack_feeds(train_feeds), stack_feeds(held_feeds)
    entry["heldout"] = held_desc
    static = _static_batch(model, train_feeds[0])
    batch_size, heldout_batch = (static, static) if static else (o.batch_size, 16)
    if static:
        entry["static_shapes"] = f"graph inputs of fixed shapes: batches of {static} rows, padding kept"
    cos_cal = heldout_cosine(student, teacher, held, heldout_batch, trim=not static)
    entry["heldout_cosine_calibrated"] = round(cos_cal, 5)
    if o.steps == 0:
        entry.update(chosen="calibrated", reason="--recover-steps 0", seconds=round(time.perf_counter() - t0, 1))
        return entry
    cfg = DistillConfig(steps=o.steps, max_seconds=o.max_seconds, batch_size=batch_size, lr=o.lr,
                        scale_lr=o.lr, seed=o.seed, trim=not static)
    latent = [fq.weight for _, fq in quantized.values()]
    scales = [p for _, fq in quantized.values() for n, p in fq.named_parameters() if n != "weight"]
    groups = [{"params": latent, "lr": cfg.lr}, {"params": [p.value for p in fp.values()], "lr": cfg.lr}]
    if scales:
        groups.append({"params": scales, "lr": cfg.scale_lr})
    columns = (TextColumn("  distilling"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=True, disable=not show) as bar:
        task = bar.add_task("distill", total=cfg.steps, loss="-")
        history = distill(student, teacher, train, cfg, groups,
                          lambda done, total, parts: bar.update(task, completed=done, loss=f"{parts['loss']:.4f}"))
    cos_qat = heldout_cosine(student, teacher, held, heldout_batch, trim=not static)
    entry.update(history)
    entry["heldout_cosine_distilled"] = round(cos_qat, 5)
    if cos_qat > cos_cal:
        write_back(model, quantized, fp)
        entry["chosen"] = "distill"
    else:
        entry["chosen"] = "calibrated"
        entry["reason"] = "distillation did not beat calibrated recovery on the held-out samples"
    entry["seconds_total"] = round(time.perf_counter() - t0, 1)
    entry["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return entry



@dataclasses.dataclass
class DistillRecoveryOptions:
    """A scheme may set these in [options.recover]; --recover-steps overrides `steps`."""

    steps: int = DEFAULT_STEPS
    max_seconds: float | None = DEFAULT_SECONDS
    noise: float = 0.0          # MDNQ-style noise rate on the quantized weights while training
    lr: float = 2e-4
    batch_size: int = 8
    augment: int = 0            # unlabeled variants per training sample (token replacement, truncation, concatenation)


class DistillRecovery(QPass):
    """Transform-stage pass run before the quantizing passes: distil, compare with calibrated
    recovery on held-out calibration samples, write back the better (see the module docstring)."""

    name = "recover"
    stage = "transform"
    Options = DistillRecoveryOptions

    console: Console | None = None
    show = False

    def precheck(self, model: ir.Model) -> None:
        """Called by the pipeline before calibration: UnsupportedTraining (exit 2) naming the first op
        or data type the torch student cannot run, so no calibration time is spent first."""
        from qcompiler import model_io

        if model_io._estimated_size(model) > 2_000_000_000:
            return                                       # call() keeps calibrated recovery anyway
        check_trainable(model)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from qcompiler import calibration, model_io

        ctx, o = self.ctx, self.options
        if model_io._estimated_size(model) > 2_000_000_000:
            self.report("chosen", "calibrated")
            self.report("reason", "model over 2 GB: distillation in torch would hold it in memory several times")
            return ir.passes.PassResult(model, False)
        feeds = ctx.calib_feeds if ctx.calib_feeds and not ctx.calibration_synthesized else None
        if feeds is None and ctx.options.calib_path:
            feeds = calibration.load_calibration(ctx.options.calib_path, model)
        options = RecoverOptions(steps=o.steps, max_seconds=o.max_seconds, noise=o.noise, lr=o.lr,
                                 batch_size=o.batch_size, augment=o.augment)
        entry = recover_with_distillation(ctx, model, feeds, options, self.console, self.show)
        for key, value in entry.items():
            self.report(key, value)
        return ir.passes.PassResult(model, entry.get("chosen") == "distill")


class UnsupportedTraining(UnsupportedOp):
    """--recover distill was asked for a graph the torch student cannot run (exit 2, before calibration)."""

    exit_code = 2


def check_trainable(model: ir.Model) -> None:
    """UnsupportedTraining naming the first node whose op (If branches included) or the first graph
    input / initializer whose data type the ONNX-to-torch evaluator does not run."""
    node = first_unsupported(model.graph)
    if node is not None:
        where = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
        raise UnsupportedTraining(
            f"--recover distill cannot train through op {where}{node.op_type} (node {node.name or '?'}): the "
            f"ONNX-to-torch evaluator does not run it (it runs {len(SUPPORTED_OPS)} standard ops: "
            f"{', '.join(SUPPORTED_OPS)}); use --recover calibrated")
    for v in [*model.graph.inputs, *model.graph.initializers.values()]:
        if v.dtype is None:
            continue
        try:
            torch_dtype(v.dtype)
        except UnsupportedOp:
            raise UnsupportedTraining(f"--recover distill cannot train through {v.name}: data type {v.dtype.name} "
                                      f"is not supported by the ONNX-to-torch evaluator; use --recover calibrated")


def with_recovery(passes: list, ctx, mode: str, steps: int | None, console: Console | None = None,
                  show: bool = False) -> list:
    """The pipeline's entry: `passes` with DistillRecovery before the first quantizing transform pass
    (after FFN pruning) when `mode` is "distill"; unchanged for "calibrated"."""
    if mode not in RECOVER_MODES:
        raise UsageError(f"unknown --recover '{mode}' (one of {', '.join(RECOVER_MODES)})")
    if steps is not None and steps < 0:
        raise UsageError(f"--recover-steps must be >= 0, got {steps}")
    if mode == "calibrated":
        if steps:
            raise UsageError("--recover-steps needs --recover distill")
        return passes
    values = ctx.scheme.pass_options(DistillRecovery.name)      # a scheme's [options.recover]: steps, noise, ...
    if steps is not None:
        values["steps"] = int(steps)
    step = DistillRecovery.from_dict(ctx, values)
    step.console, step.show = console, show
    first = next((i for i, p in enumerate(passes) if p.stage == "transform" and p.name != "prune_ffn"), len(passes))
    return [*passes[:first], step, *passes[first:]]
