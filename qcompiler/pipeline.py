"""The compile pipeline, in one direction:

load -> canonicalize -> analyze -> plan -> calibrate -> transform -> pack -> verify -> save -> report

Packing happens inside the transform passes (they call the quantizers and the op
contract's packers); everything else is one function call per stage here.

Models whose weights exceed the memory budget (default 2 GB) are streamed: weights stay
memory-mapped, every packed weight a pass makes is spilled to the output's data file at once
(model_io.Spill, hooked on the passes' per-weight progress calls), and the resident pages of the
input's weights are dropped, so memory stays near one weight. Calibration and verification,
which would run the whole FP32 model in onnxruntime, are skipped then, and the report says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from qcompiler import calibration, model_io, report as report_mod, verify as verify_mod
from qcompiler.analyze import analyze, compiled_ops, runtime_weights
from qcompiler.context import TARGETS, CompileContext, CompileOptions
from qcompiler.dtype_support import check_activation_types
from qcompiler.contract_check import check_compiled_nodes
from qcompiler.index_check import check_index_ranges
from qcompiler.errors import ModelLoadError, QCompilerError, SchemeError, UsageError, ort_message, require_extra
from qcompiler.plan import KEEP, make_plan
from qcompiler.passes.merge_linears import compiled_weights
from qcompiler.quality_gate import check_gate
from qcompiler.schemes import Scheme, load_scheme
from qcompiler.synthetic_inputs import read_config

STAGES = ("canonical", "transform", "final")
# Weights above this many bytes are streamed (no in-memory reference copy or verification; calibration
# in pieces, on --calib data only).
DEFAULT_MEMORY_BUDGET = 2_000_000_000
STREAMING_CALIB_SAMPLES = 64          # calibration samples a streaming compile uses at most
CALIB_PIECE_MIN_BYTES = 1 << 20       # smallest piece of weights calibration runs at a time

# Library chatter (e.g. onnxscript's "falling back to the onnx C API" warning) is not for users.
logging.getLogger("onnxscript").setLevel(logging.ERROR)
# onnx-ir logs a failed (optional) shape inference with its traceback; the pass goes on without it.
logging.getLogger("onnx_ir").setLevel(logging.ERROR)


def default_output_path(model_path: str | os.PathLike, scheme_name: str) -> Path:
    p = Path(model_path)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.{Path(scheme_name).stem}.onnx")


class _Steps:
    """Progress display: one line per stage with its time, bars for long loops."""

    def __init__(self, show: bool, console: Console | None):
        self.show = show
        self.console = console or Console(stderr=True)
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        status = self.console.status(f"{name} ...") if self.show else contextlib.nullcontext()
        with status:
            yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        if self.show:
            self.console.print(f"[green]✓[/green] {name} [dim]{self.timings[name]:.1f}s[/dim]")

    @contextlib.contextmanager
    def bar(self, label: str, total: int):
        if not self.show:
            yield lambda done, _total: None
            return
        columns = (TextColumn("  " + label), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(label, total=total)
            yield lambda done, _total: progress.update(task, completed=done)


def build_passes(scheme: Scheme, ctx: CompileContext):
    from qcompiler.passes import PASS_TABLE

    instances = [PASS_TABLE[name].from_dict(ctx, scheme.pass_options(name)) for name in scheme.passes]
    order = [STAGES.index(p.stage) for p in instances]
    if order != sorted(order):
        raise SchemeError(f"scheme {scheme.source}: passes must run canonical, then transform, then final ones")
    return instances


def compile_model(
    model_path: str | os.PathLike,
    scheme: str | Scheme = "int8",
    output: str | os.PathLike | None = None,
    report_path: str | os.PathLike | None = None,
    calib: str | os.PathLike | None = None,
    exclude: list[str] | tuple[str, ...] = (),
    target: str = "ort",
    verify: bool = True,
    verify_samples: int = 8,
    prune_ffn: float | None = None,
    recover: str = "calibrated",
    recover_steps: int | None = None,
    progress: bool = False,
    console: Console | None = None,
    memory_budget: int | None = None,
    min_cosine: float | None = None,
    calib_feeds: list[dict[str, np.ndarray]] | None = None,
    calib_label: str = "given samples",
    calib_augment: int | None = None,
    recovery_holdout: float | None = None,
) -> dict[str, Any]:
    """Compile one model; returns the report dict (also written to report_path as JSON + .md).

    calib_feeds: calibration samples already made ({input: array} each, e.g. by qcompiler.folder
    following an encoder-decoder chain), instead of a --calib file; calib_label names them.

    memory_budget: models whose weights are bigger (bytes; default DEFAULT_MEMORY_BUDGET) are
    compiled streaming (see the module docstring); 0 streams every model.
    min_cosine: quality gate (qcompiler.quality_gate): QualityGateError, nothing written, when the
    verified cosine is below it.
    calib_augment: unlabeled variants per calibration sample behind recovery's Gram matrices
    (qcompiler.qat.augment; default CompileOptions.calib_augment). recovery_holdout: share of the given
    calibration samples held out from recovery to check it against plain rounding (0: none).
    """
    t0 = time.perf_counter()
    steps = _Steps(progress, console)
    if target not in TARGETS:
        raise UsageError(f"unknown target '{target}' ({', '.join(TARGETS)})")
    if min_cosine is not None and not verify:
        raise UsageError("--min-cosine needs verification: drop --no-verify")
    model_path = Path(model_path)
    if not model_path.exists():
        raise UsageError(f"input model not found: {model_path}")
    scheme_obj = scheme if isinstance(scheme, Scheme) else load_scheme(str(scheme))
    out_path = Path(output) if output else default_output_path(model_path, scheme_obj.name)
    model_io.check_output_path(model_path, out_path)
    if report_path is not None:
        model_io.check_output_path(model_path, report_path)

    model_io.clean_stale_temporaries(out_path.parent if str(out_path.parent) else Path("."))
    with steps.stage("load"):
        model = model_io.load_model(model_path)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    streaming = not _fits_in_memory(model, budget)
    if streaming and min_cosine is not None:
        raise UsageError("--min-cosine needs verification, which a streaming compile (weights over the memory "
                         "budget) skips: raise --memory-budget")
    external_out = streaming or model_io.has_external_data(model)
    options = CompileOptions(exclude=list(exclude), target=target, calib_path=str(calib) if calib else None,
                             verify=verify, model_config=read_config(model_path))
    if calib_augment is not None:
        options.calib_augment = int(calib_augment)
    if recovery_holdout is not None:
        if not 0 <= recovery_holdout < 1:
            raise UsageError(f"recovery_holdout must be in [0, 1), got {recovery_holdout}")
        options.recovery_holdout = float(recovery_holdout)
    ctx = CompileContext(model=model, scheme=scheme_obj, options=options)
    passes = build_passes(scheme_obj, ctx)
    if prune_ffn is not None:
        if prune_ffn < 0:
            raise UsageError(f"--prune-ffn must be >= 0, got {prune_ffn}")
        from qcompiler.passes.prune_ffn import PruneFFN, PruneFFNOptions

        passes = [p for p in passes if p.name != PruneFFN.name]
        first = next((i for i, p in enumerate(passes) if p.stage != "canonical"), len(passes))
        passes.insert(first, PruneFFN(ctx, PruneFFNOptions(threshold=float(prune_ffn))))
    if recover != "calibrated" or recover_steps is not None:   # training-aware recovery (qcompiler.qat)
        require_extra("torch", "train", "--recover distill")
        from qcompiler.qat.recover import with_recovery

        passes = with_recovery(passes, ctx, recover, recover_steps, steps.console, progress)
    notes: list[str] = []
    if calib_feeds is not None:
        calib_feeds, calib = list(calib_feeds) or None, calib_label
    else:
        calib_feeds = calibration.load_calibration(calib, model) if calib else None
    if calib_feeds:
        check_index_ranges(model, calib_feeds)
    spill = model_io.Spill(out_path, model) if streaming else None
    calib_dir = model_io.temporary_name(out_path, ".calib") if streaming else None   # Gram matrices on disk
    try:
        rep = _run(model, ctx, passes, scheme_obj, steps, options, calib, calib_feeds, exclude, verify,
                   verify_samples, notes, spill, streaming, budget, out_path, external_out, calib_dir, min_cosine)
    finally:
        if spill is not None:
            spill.close()
        if calib_dir is not None:
            shutil.rmtree(calib_dir, ignore_errors=True)
    rep.update(_build_report(ctx, model_path, out_path, rep.pop("verification"), notes, steps.timings,
                             time.perf_counter() - t0))
    if report_path is not None:
        report_mod.write_json(rep, report_path)
        md = Path(report_path).with_suffix(".md")
        md.write_text(report_mod.to_markdown(rep))
        png = Path(report_path).with_suffix(".png")
        if report_mod.plot_per_layer(rep, png):
            rep["plot"] = str(png)
            report_mod.write_json(rep, report_path)
    return rep


def _run(model, ctx, passes, scheme_obj, steps, options, calib, calib_feeds, exclude, verify, verify_samples,
         notes, spill, streaming, budget, out_path, external_out, calib_dir, min_cosine=None) -> dict[str, Any]:
    """The stages from canonicalize to save; returns {"verification": ...}."""
    if spill is not None:
        def progress(label, done, total):
            spill.flush(model)
            calibration.release_gram_pages(ctx.stats)    # a Gram read for the last weight

        ctx.progress = progress
        notes.append(f"streaming compile: weights ({model_io._estimated_size(model) / 1e9:.2f} GB) exceed the "
                     f"memory budget ({budget / 1e9:.2f} GB); each packed weight was written out as it was made")

    held_out = None   # the user's samples verification runs on, never calibrated on
    if calib_feeds and verify and not streaming:
        calib_feeds, held_out, held_text, _ = verify_mod.split_held_out(calib_feeds, verify_samples)
    with steps.stage("canonicalize"):
        for p in passes:
            if p.stage == "canonical":
                p(model)
                if spill is not None:
                    spill.flush(model)
    with steps.stage("analyze + plan"):
        check_compiled_nodes(model)
        ctx.roles = analyze(model)
        ctx.plan = make_plan(ctx.roles, scheme_obj, list(exclude))
        check_activation_types(ctx)
    fed = runtime_weights(model)
    if fed:
        notes.append(f"{len(fed)} MatMul/Gemm weight(s) are graph inputs, fed at run time (an initializer there is "
                     f"only a default): left alone ({', '.join(fed[:4])}{' ...' if len(fed) > 4 else ''})")
    compiled = _already_compiled(model)
    if compiled:
        notes.append(f"already compiled, left as they are: {compiled}")
        ctx.compiled_at_load = compiled_weights(model)
    if not ctx.roles.linears and not ctx.roles.embeddings:
        if compiled:
            raise UsageError(f"nothing left to quantize: the model is already compiled ({compiled}), and no FP32 "
                             f"MatMul/Gemm weight or embedding table remains; no output written")
        notes.append("no MatMul/Gemm with constant weights and no embedding table: compiled to a copy")
    planned_before = sum(wp.format != KEEP or bool(wp.asked) for wp in ctx.plan.values())

    transform = [p for p in passes if p.stage == "transform"]
    for p in transform:          # refusals that need no statistics come before calibration's cost
        getattr(p, "precheck", lambda model: None)(model)
    needs_stats = any(getattr(p, "needs_stats", False) for p in transform) and ctx.roles.linears
    needs_gram = any(getattr(p, "needs_gram", False) for p in transform)
    reference_proto = model_io.inline_proto(model) if verify and not streaming else None
    if calib_feeds and not needs_stats:
        notes.append("calibration data checked but not used: no pass of this scheme needs activation statistics")
    if needs_stats and streaming and not calib_feeds:
        notes.append("calibration skipped: a streaming compile calibrates only on given data (--calib), not on "
                     "synthesized inputs; weights were quantized without activation statistics (plain rounding, "
                     "no outlier channels)")
        ctx.calibration_source = "skipped (streaming compile without --calib)"
    elif needs_stats:
        with steps.stage("calibrate"):
            feeds = calib_feeds
            if feeds is None:
                feeds = calibration.synthesize_inputs(model, samples=options.calib_samples, seed=options.seed,
                                                      config=options.model_config)
                ctx.calibration_source = f"synthesized ({len(feeds)} samples of random tokens)"
                ctx.calibration_synthesized = True
            else:
                ctx.calibration_source = f"{calib} ({len(feeds)} samples" + (
                    f"; {len(held_out)} more held out for verification)" if held_out and held_out is not feeds else ")")
            ctx.calib_feeds = feeds
            taps = sorted({lin.node.inputs[0].name for lin in ctx.roles.linears if ctx.plan[lin.name].format != KEEP})
            for p in transform:
                taps += [t for t in getattr(p, "extra_taps", lambda: [])() if t not in taps]
            if streaming:
                _calibrate_in_pieces(model, ctx, feeds, taps, needs_gram, budget, calib_dir, steps, notes, spill)
            else:
                gram_for = _grams_within_budget(model, taps, budget // 4, notes) if needs_gram else set()
                fit, held = _recovery_split(feeds, options.recovery_holdout) \
                    if gram_for and not ctx.calibration_synthesized else (feeds, [])
                if held:
                    ctx.calibration_source += (f"; recovery fitted on {len(fit)}, checked on the other {len(held)} "
                                               f"(held-out split)")
                if gram_for and options.calib_augment:
                    from qcompiler.qat.augment import augment   # numpy only; shared with distillation

                    variants = augment(fit, options.calib_augment, options.seed)
                    if variants:
                        fit = fit + variants
                        ctx.calibration_source += (f"; Gram statistics also on {len(variants)} unlabeled variants "
                                                   f"(token replacement, truncation, concatenation)")
                with steps.bar("calibrating", len(fit) + len(held)) as bar, _input_model_errors():
                    ctx.stats = calibration.collect_stats(model, fit, taps, gram_for=gram_for, seed=options.seed,
                                                          progress=bar)
                    if held:
                        ctx.held_stats = calibration.collect_stats(model, held, sorted(gram_for), gram_for=gram_for,
                                                                   seed=options.seed)
            _note_uncalibrated(model, ctx, taps, notes)

    with steps.stage("transform + pack"):
        for p in transform:
            p(model)
            if spill is not None:
                spill.flush(model)
    with steps.stage("cleanup"):
        for p in passes:
            if p.stage == "final":
                p(model)

    _mark_unhandled(ctx, model, notes)
    _note_plain_fallbacks(ctx, notes)
    if planned_before and not any(wp.format != KEEP for wp in ctx.plan.values()):
        reasons = sorted({wp.reason for wp in ctx.plan.values() if wp.reason})
        done = f" (already compiled, left as they are: {compiled})" if compiled else ""
        raise UsageError(f"nothing was quantized{done}: the scheme planned {planned_before} weight(s) and every one "
                         f"stayed FP32 ({'; '.join(reasons)[:400] or 'no pass rewrote them'}); no output written")
    verification = None
    if verify and reference_proto is not None:
        with steps.stage("verify"):
            if held_out is not None:
                vfeeds, vtext = held_out, held_text
            else:
                vfeeds = calibration.synthesize_inputs(model, samples=verify_samples, seed=options.seed + 1,
                                                       config=options.model_config)
                vtext = f"{len(vfeeds)} samples synthesized from the model's signature (no --calib data)"
                notes.append("verified on synthesized inputs (random tokens), not on your data: the figures say "
                             "little about accuracy on real inputs; give --calib data to verify on a held-out part of it")
            layer_names = [lin.output.name for lin in ctx.roles.linears]
            with steps.bar("verifying", len(vfeeds)) as bar:
                try:
                    verification = verify_mod.verify(reference_proto, model, vfeeds, layer_names, progress=bar,
                                                     inputs=vtext, synthesized=held_out is None)
                except Exception:
                    with _input_model_errors():  # the input itself does not load: the user's model, not our bug
                        verify_mod.make_session(reference_proto)
                    raise
    elif verify:
        notes.append("verification skipped: model too large to hold a reference copy in memory")

    if verification and str(verification.get("runtime", "")).startswith("fallback"):
        notes.append(f"verified through the ai.qcompiler ops' ONNX function fallback, not the native library "
                     f"({verification['runtime'].removeprefix('fallback: ')}): deployed with the library, the "
                     f"kernels' int8 activations (accuracy_level 4) may differ slightly")
    gate = check_gate(verification, min_cosine)    # raises before anything is written
    if gate:
        notes.append(gate)
    with steps.stage("save"):
        model_io.save_model(model, out_path, external=external_out or None)
        checker = verify_mod.check_model(out_path)
        if checker:
            notes.append(f"onnx.checker full_check: {checker}")
    return {"verification": verification}


MIN_HOLDOUT_SAMPLES = 16   # given samples below which none are held out from recovery (too few to fit on)


def _recovery_split(feeds: list, share: float) -> tuple[list, list]:
    """(fit, held-out) samples for recovery: every round(1 / share)-th sample held out (spread over the
    data, not its tail), none when share is 0 or the samples are fewer than MIN_HOLDOUT_SAMPLES."""
    if share <= 0 or len(feeds) < MIN_HOLDOUT_SAMPLES:
        return feeds, []
    step = max(2, round(1 / share))
    held = set(range(step - 1, len(feeds), step))
    return [f for i, f in enumerate(feeds) if i not in held], [f for i, f in enumerate(feeds) if i in held]


def held_out_summary(pass_reports: dict) -> dict | None:
    """How recovery's fit-split error carries over to the held-out split, over every linear checked:
    mean output errors (relative), their ratio, and the linears that fell back to plain rounding."""
    entries = [e for details in pass_reports.values() if isinstance(details, dict)
               for e in details.get("linears", []) if isinstance(e, dict) and e.get("held_out") and not e.get("shared")]
    if not entries:
        return None
    fit = float(np.mean([e["held_out"]["fit_output_rel_error"] for e in entries]))
    held = float(np.mean([e["held_out"]["held_output_rel_error"] for e in entries]))
    plain = float(np.mean([e["held_out"]["plain_held_output_rel_error"] for e in entries]))
    worse = [e["weight"] for e in entries if e["held_out"]["worse_than_plain"]]
    return {"linears": len(entries), "fit_output_rel_error": round(fit, 6), "held_output_rel_error": round(held, 6),
            "plain_held_output_rel_error": round(plain, 6), "carry_over": round(held / fit, 3) if fit > 0 else None,
            "fell_back_to_plain": len(worse), "fell_back": worse[:20]}


def _calibrate_in_pieces(model, ctx, feeds, taps, needs_gram, budget, calib_dir, steps, notes, spill) -> None:
    """Streaming calibration: at most STREAMING_CALIB_SAMPLES samples (evenly spaced), the graph run
    in pieces of at most an eighth of the budget of weights, Grams of every tap on disk, and a
    reservoir of rows within a sixteenth of the budget (see calibration.collect_stats_in_pieces)."""
    if len(feeds) > STREAMING_CALIB_SAMPLES:
        keep = np.linspace(0, len(feeds) - 1, STREAMING_CALIB_SAMPLES).round().astype(int)
        feeds = [feeds[i] for i in keep]
        ctx.calibration_source += f", {len(feeds)} of them used (evenly spaced)"
        ctx.calib_feeds = feeds
    channels = sum(calibration.tap_channels(model, taps).values())
    max_rows = int(min(2048, (budget // 16) // max(4 * channels, 1)))
    piece_bytes = max(budget // 8, CALIB_PIECE_MIN_BYTES)
    gram_for = set(taps) if needs_gram else set()
    try:
        n_pieces = len(calibration.plan_pieces(model, piece_bytes, gram_for))
        with steps.bar("calibrating (pieces)", n_pieces) as bar, _input_model_errors():
            ctx.stats, info = calibration.collect_stats_in_pieces(
                model, feeds, taps, piece_bytes, calib_dir, max_rows=max_rows, gram_for=gram_for,
                seed=ctx.options.seed, progress=bar, release=lambda: model_io.release_mapped_pages(spill.sources))
    except calibration.PiecesUnsupported as exc:
        notes.append(f"calibration skipped: a streaming compile runs the model in pieces, and this one cannot be "
                     f"cut ({exc}); weights were quantized without activation statistics")
        ctx.calibration_source = "skipped (streaming compile, graph not cut into pieces)"
        ctx.stats = {}
        return
    notes.append(f"calibrated in {info['pieces']} pieces (at most {info['largest_piece_bytes'] / 1e6:.1f} MB of weights and "
                 f"Gram matrices at a time) on {len(feeds)} samples; {max_rows} reservoir rows per linear input; "
                 f"Gram matrices ({info['gram_files_bytes'] / 1e6:.1f} MB) kept on disk until used")


def _note_uncalibrated(model: ir.Model, ctx: CompileContext, taps: list[str], notes: list[str]) -> None:
    """Say which linear inputs got no statistics: inside a Loop/Scan body (one value per iteration,
    not tapped) or in an If branch that no calibration sample took. Their weights get plain rounding."""
    missing = [t for t in taps if t not in ctx.stats]
    if not missing:
        return
    where = {}
    for graph in model.graphs():
        for v in [*graph.inputs, *(o for n in graph for o in n.outputs)]:
            if v.name in missing:
                where[v.name] = graph
    bodies = _loop_bodies(model.graph)
    in_loops = [t for t in missing if t in where and id(where[t]) in bodies]
    if in_loops:
        notes.append(f"{len(in_loops)} linear input(s) inside Loop/Scan bodies were not calibrated (a body value "
                     f"exists once per iteration; onnxruntime cannot output it): plain rounding for their weights")
    others = len(missing) - len(in_loops)
    if others:
        notes.append(f"{others} linear input(s) got no calibration statistics (an If branch no calibration sample "
                     f"took, e.g. use_cache_branch always one way): plain rounding for their weights")


def _loop_bodies(main: ir.Graph) -> set[int]:
    """ids of the graphs that run once per iteration: Loop/Scan bodies and everything inside them."""
    bodies: set[int] = set()

    def mark(graph: ir.Graph) -> None:
        bodies.add(id(graph))
        for node in graph:
            for attr in node.attributes.values():
                for sub in ([attr.value] if attr.type == ir.AttributeType.GRAPH else
                            list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []):
                    mark(sub)

    for node in ir.traversal.RecursiveGraphIterator(main):
        if node.op_type in ("Loop", "Scan") and id(node.graph) not in bodies:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    mark(attr.value)
    return bodies


def _grams_within_budget(model: ir.Model, taps: list[str], budget: int, notes: list[str]) -> set[str]:
    """The taps whose Gram matrices (C x C float64 each) fit in `budget` bytes together, in order.

    Recovery needs one per linear input; a model with many wide layers would otherwise hold
    them all at once (36 inputs of 4096 channels: 4.8 GB). Linears past the budget get plain
    rounding, and the report says how many."""
    channels = calibration.tap_channels(model, taps)
    chosen, used = set(), 0
    for tap in taps:
        need = 8 * channels.get(tap, 0) ** 2
        if used + need > budget:
            continue
        chosen.add(tap)
        used += need
    skipped = len(taps) - len(chosen)
    if skipped:
        notes.append(f"recovery statistics kept for {len(chosen)} of {len(taps)} linear inputs: the Gram matrices of "
                     f"all would exceed {budget / 1e9:.2f} GB (a quarter of the memory budget); the others use plain rounding")
    return chosen


@contextlib.contextmanager
def _input_model_errors():
    """onnxruntime refusing the FP32 input (an opset it lacks, types its kernels do not take) is a
    problem of the input model: a ModelLoadError (exit 2), not an internal error."""
    try:
        yield
    except QCompilerError:
        raise
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise ModelLoadError(f"onnxruntime cannot run the input model: {ort_message(exc)}") from None


def _note_plain_fallbacks(ctx: CompileContext, notes: list[str]) -> None:
    """Linears that asked for recovery but were rounded plainly (no or too few statistics): say so."""
    reasons: dict[str, int] = {}
    for details in ctx.pass_reports.values():
        for entry in details.get("linears", []) if isinstance(details, dict) else []:
            method = str(entry.get("method", ""))
            if method.startswith("plain (") and not entry.get("shared"):
                reasons[method[len("plain ("):-1]] = reasons.get(method[len("plain ("):-1], 0) + 1
    for why, count in reasons.items():
        notes.append(f"{count} weight(s) asked for calibrated recovery but were rounded plainly: {why}")


def _already_compiled(model: ir.Model) -> str:
    """'TernaryMatMul x12, PackedGather x1': the compiled ops a file fed back holds; '' for none."""
    return ", ".join(f"{op} x{n}" for op, n in sorted(compiled_ops(model).items()))


def _pass_skips(ctx: CompileContext) -> dict[str, str]:
    """{weight: why} for the weights a pass looked at and left alone (its report's skipped / left_alone)."""
    why: dict[str, str] = {}
    for details in ctx.pass_reports.values():
        if not isinstance(details, dict):
            continue
        for entry in [*details.get("skipped", []), *details.get("left_alone", [])]:
            name = entry.get("weight") or entry.get("table") if isinstance(entry, dict) else None
            if name and entry.get("reason"):
                why.setdefault(name, str(entry["reason"]))
    return why


def _mark_unhandled(ctx: CompileContext, model: ir.Model, notes: list[str]) -> None:
    """A weight planned for a format that no pass of the scheme wrote stays FP32: say so, with the
    pass's own reason when one looked at it and left it alone."""
    float_types = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    unhandled: dict[str, int] = {}
    skipped: dict[str, int] = {}
    why = _pass_skips(ctx)
    for wp in ctx.plan.values():
        init = model.graph.initializers.get(wp.name)
        if wp.format != KEEP and init is not None and init.const_value is not None \
                and init.const_value.dtype in float_types and len(list(init.uses())) > 0:
            if wp.name in why:
                skipped[wp.format] = skipped.get(wp.format, 0) + 1
                wp.reason = f"left FP32: {why[wp.name]}"
            else:
                unhandled[wp.format] = unhandled.get(wp.format, 0) + 1
                wp.reason = f"format {wp.format} not handled by any pass of the scheme"
            wp.format = KEEP
    for fmt, count in unhandled.items():
        notes.append(f"{count} weight(s) planned as {fmt} were left FP32: no pass of the scheme handles {fmt}")
    for fmt, count in skipped.items():
        notes.append(f"{count} weight(s) planned as {fmt} were left FP32 by the pass (reasons in the weights' entries)")


def _fits_in_memory(model: ir.Model, budget: int = DEFAULT_MEMORY_BUDGET) -> bool:
    return model_io._estimated_size(model) < budget


def _build_report(ctx: CompileContext, model_path: Path, out_path: Path, verification, notes, timings, seconds) -> dict:
    roles: dict[str, dict] = {}
    for wp in ctx.plan.values():
        r = roles.setdefault(wp.role, {"quantized": 0, "kept": 0, "formats": set()})
        if wp.format == KEEP:
            r["kept"] += 1
        else:
            r["quantized"] += 1
        r["formats"].add(wp.format if wp.format != KEEP else "fp32")
    for r in roles.values():
        r["formats"] = sorted(r["formats"])
    excluded = [f"{wp.name}: {wp.reason}" for wp in ctx.plan.values() if wp.reason]
    held = held_out_summary(ctx.pass_reports)
    if held:
        notes.append(f"recovery overfitting check: {report_mod.held_out_text(held)}")
    per_layer = (verification or {}).get("per_layer_rel_l2") or {}
    outputs = {lin.name: lin.output.name for lin in (ctx.roles.linears if ctx.roles else [])}
    errors = {w: per_layer[o] for w, o in outputs.items() if o in per_layer}
    return {
        "tool": "qcompiler",
        "input": str(model_path),
        "output": str(out_path),
        "scheme": ctx.scheme.name,
        "scheme_source": ctx.scheme.source,
        "target": ctx.options.target,
        "size_before": model_io.file_size(model_path),
        "size_after": model_io.file_size(out_path),
        "calibration": ctx.calibration_source,
        "roles": roles,
        "weights": [
            {"name": wp.name, "role": wp.role, "layer": wp.layer, "format": wp.format,
             **({"reason": wp.reason} if wp.reason else {}), **({"rel_l2": errors[wp.name]} if wp.name in errors else {})}
            for wp in ctx.plan.values()
        ],
        "excluded": excluded,
        "passes": ctx.pass_reports,
        "verification": verification,
        "recovery_held_out": held,
        "notes": notes,
        "seconds": timings,
        "seconds_total": seconds,
    }


__all__ = ["compile_model", "default_output_path", "QCompilerError"]
