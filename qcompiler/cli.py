"""The `qcompile` command line: compile a model (default command), list schemes, bench.

    qcompile model.onnx --scheme int4
    qcompile model.onnx --scheme int8 --calib calib.npz -o out.onnx --report out.json
    qcompile --list-schemes

User mistakes end in one line on stderr and exit code 2; a failed quality gate (--min-cosine) in
exit code 3; internal errors in exit code 1 (set QCOMPILE_DEBUG=1 to see the traceback).
"""

from __future__ import annotations

import os
import sys
import traceback

import click
from rich.console import Console

from qcompiler.context import TARGETS
from qcompiler.errors import QCompilerError

_console = Console(stderr=True)


class _DefaultCommandGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to `compile`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--list-schemes", "--list-passes",
                                                                      "--version"):
            args = ["compile", *args]
        return super().parse_args(ctx, args)


def _list_schemes() -> None:
    from qcompiler.scheme_table import scheme_table

    click.echo(scheme_table())


def _list_passes() -> None:
    from qcompiler.passes import PASS_TABLE

    for name, cls in PASS_TABLE.items():
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        line = doc[0].removeprefix(f"{name}: ") if doc else ""
        click.echo(f"{name:<20} {cls.stage:<10} {line}")


@click.group(cls=_DefaultCommandGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--list-schemes", is_flag=True, help="List the built-in schemes: bits per weight, measured accuracy and speed.")
@click.option("--list-passes", is_flag=True, help="List the pass names a scheme file's `passes` may use, in order.")
@click.version_option(package_name="qcompiler")
@click.pass_context
def cli(ctx: click.Context, list_schemes: bool, list_passes: bool) -> None:
    """qcompile: compile FP32 transformer ONNX models into small, fast low-bit ONNX models."""
    if list_schemes:
        _list_schemes()
        ctx.exit(0)
    if list_passes:
        _list_passes()
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _parse_size(text: str) -> int:
    """'512M', '2G', '1.5G', '1000000' -> bytes; anything else is a usage error."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B")
    number, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = float(number)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 512M, 2G)", param_hint="--memory-budget") from None
    if value < 0:
        raise click.BadParameter(f"{text!r} is negative", param_hint="--memory-budget")
    return int(value * units[unit])


@cli.command("compile")
@click.argument("model", type=click.Path())
@click.option("--scheme", "-s", default="int8", show_default=True, help="Built-in scheme name or a .toml file.")
@click.option("--output", "-o", type=click.Path(), help="Output path (default: MODEL.<scheme>.onnx, or FOLDER.<scheme>/, beside it).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON (+ .md, + .png).")
@click.option("--calib", type=click.Path(dir_okay=False), help="Calibration inputs: .npz with one array per model input, first axis = samples.")
@click.option("--calib-text", type=click.Path(dir_okay=False),
              help="MODEL a folder: calibrate on these sentences (one per line) through the folder's tokenizer.json.")
@click.option("--exclude", multiple=True, help="Keep in FP32: a role (ffn_down), layer:N, or a glob on weight/node names. Repeatable.")
@click.option("--target", type=click.Choice(list(TARGETS)), default="ort", show_default=True,
              help="ort: stock onnxruntime, contrib ops allowed (int4 as MatMulNBits); qcompiler: onnxruntime with "
                   "this project's op library (int4 as Int4MatMul); portable: standard ONNX only.")
@click.option("--prune-ffn", type=float, default=None, metavar="C",
              help="Remove FFN hidden units whose calibrated max activation is below C x std of all units' maxima.")
@click.option("--recover", type=click.Choice(["calibrated", "distill"]), default="calibrated", show_default=True,
              help="distill: also train the quantized weights against the original on the calibration inputs "
                   "(torch, quantizers in the loop) and keep whichever is better on held-out samples.")
@click.option("--recover-steps", type=click.IntRange(min=0), default=None, metavar="N",
              help="Distillation steps (default 1200, at most 20 minutes); 0 = calibrated recovery.")
@click.option("--memory-budget", type=str, default=None, metavar="SIZE",
              help="Stream models whose weights exceed SIZE (e.g. 512M, 2G; default 2G): one weight in memory "
                   "at a time, written out as it is packed (no calibration or verification then).")
@click.option("--no-verify", is_flag=True, help="Skip running the compiled model beside the original.")
@click.option("--min-cosine", type=float, default=None, metavar="X",
              help="Quality gate: fail (exit 3, nothing written) when the verified cosine vs FP32 is below X.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display or summary.")
def compile_command(model, scheme, output, report_path, calib, exclude, target, prune_ffn, recover, recover_steps,
                    memory_budget, no_verify, min_cosine, quiet, calib_text) -> None:
    """Compile MODEL (an .onnx file, or an exported folder: every ONNX file in it) and print a summary."""
    from qcompiler import api
    from qcompiler.report import print_summary

    if os.path.isdir(model):
        from qcompiler import folder

        if calib or report_path or min_cosine is not None:
            raise click.UsageError("a folder calibrates with --calib-text and records itself in qcompile.json "
                                   "(--calib / --report / --min-cosine are for one file)")
        rec = folder.compile_folder(model, scheme=scheme, output=output, calib_text=calib_text, exclude=list(exclude),
                                    target=target, verify=not no_verify, progress=not quiet, console=_console,
                                    prune_ffn=prune_ffn, recover=recover, recover_steps=recover_steps,
                                    memory_budget=_parse_size(memory_budget) if memory_budget is not None else None)
        if not quiet:
            folder.print_folder_summary(rec, _console)
        click.echo(rec["output"])
        return
    if calib_text:
        raise click.UsageError("--calib-text is for a model folder (with tokenizer.json); give one file --calib data.npz")
    result = api.compile(model, scheme=scheme, output=output, report_path=report_path, calib=calib,
                         exclude=list(exclude), target=target, verify=not no_verify, min_cosine=min_cosine,
                         prune_ffn=prune_ffn, recover=recover, recover_steps=recover_steps,
                         memory_budget=_parse_size(memory_budget) if memory_budget is not None else None,
                         progress=not quiet, console=_console)
    if not quiet:
        print_summary(result.report, _console)
    click.echo(str(result.output))


@cli.command("bench")
@click.argument("model", type=click.Path())
@click.option("--schemes", default="int8,int4", show_default=True, help="Comma-separated schemes to compile and compare; NAME@TARGET compiles with --target TARGET (e.g. int4@qcompiler).")
@click.option("--task", type=click.Choice(["embeddings", "logits", "mt"]), default="embeddings", show_default=True,
              help="mt: MODEL is a translation model folder: Optimum's (encoder_model.onnx, decoder files, config.json, tokenizer) or the demo's (encoder.onnx, decoder.onnx, tokenizer.model).")
@click.option("--data", type=click.Path(dir_okay=False),
              help="Evaluation inputs: .npz (first axis = samples); for --task mt held-out pairs, source<TAB>reference per line (default: test.tsv beside the model).")
@click.option("--calib", type=click.Path(dir_okay=False), help="Calibration inputs for the schemes (.npz); mt reads calib_encoder.npz / calib_decoder.npz beside the model.")
@click.option("--out", "out_dir", default="bench-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--repeats", default=40, show_default=True, help="Interleaved latency rounds.")
@click.option("--sentences", type=click.IntRange(min=1), help="mt: translate only the first N held-out pairs.")
@click.option("--beam", default="1", show_default=True, help="mt: beam width(s), comma-separated (1 = greedy; 1,4 = both tables from one run).")
@click.option("--no-baselines", is_flag=True, help="Skip onnxruntime's own quantizers.")
@click.option("--calib-source", multiple=True, metavar="[NAME=]FILE",
              help="Calibrate on this source (.npz inputs, or text: one sentence a line); repeatable: each scheme is "
                   "compiled once per source. Cross-source figures are measured on the other --eval-source files.")
@click.option("--eval-source", multiple=True, metavar="[NAME=]FILE",
              help="Evaluate on this source (.npz or text); repeatable. The one named like a --calib-source gives the in-source figure.")
@click.option("--tokenizer", type=click.Path(), help="tokenizer.json (or its directory) for text sources.")
@click.option("--calib-samples", default=128, show_default=True, type=click.IntRange(min=1),
              help="Calibration sentences used from each --calib-source.")
@click.option("--recover", type=click.Choice(["calibrated", "distill"]), default="calibrated", show_default=True,
              help="Recovery of every scheme, as for qcompile (embeddings and logits tasks).")
@click.option("--recover-steps", type=click.IntRange(min=0), default=None, metavar="N",
              help="Distillation steps with --recover distill (default: qcompile's).")
def bench_command(model, schemes, task, data, calib, out_dir, repeats, sentences, beam, no_baselines,
                  calib_source, eval_source, tokenizer, calib_samples, recover, recover_steps) -> None:
    """Compile MODEL with each scheme and compare with FP32 and onnxruntime's quantizers."""
    from qcompiler.bench import load_samples, load_source, parse_source_specs, print_table, run_bench

    scheme_list = [s for s in schemes.split(",") if s]
    if task == "mt":
        from qcompiler import bench_mt

        if calib_source or eval_source:
            raise click.UsageError("--calib-source / --eval-source are for --task embeddings and logits")
        if recover != "calibrated" or recover_steps is not None:
            raise click.UsageError("--recover / --recover-steps are for --task embeddings and logits")
        if calib:
            raise click.UsageError("--task mt calibrates from calib_sources.txt (Optimum folders) or calib_encoder.npz / calib_decoder.npz beside the model, not --calib")
        try:
            beams = [int(b) for b in beam.split(",") if b.strip()]
        except ValueError:
            beams = []
        if not beams or min(beams) < 1:
            raise click.UsageError(f"--beam takes beam widths >= 1, comma-separated, not {beam!r}")
        result = bench_mt.run_mt_bench(bench_mt.locate(model, data), scheme_list, out_dir=out_dir, sentences=sentences,
                                       beam=beams[0], beams=beams, baselines=not no_baselines, console=_console)
        bench_mt.print_table(result)
    else:
        if calib and calib_source:
            raise click.UsageError("give --calib or --calib-source, not both")
        if data and eval_source:
            raise click.UsageError("give --data or --eval-source, not both")
        calib_sources = {name: load_source(path, model, tokenizer, limit=calib_samples)
                         for name, path in parse_source_specs(calib_source, "--calib-source").items()} or None
        eval_sources = {name: load_source(path, model, tokenizer)
                        for name, path in parse_source_specs(eval_source, "--eval-source").items()} or None
        samples = None if eval_sources else load_samples(data, model)
        result = run_bench(model, scheme_list, samples, task=task, calib=calib,
                           out_dir=out_dir, repeats=repeats, baselines=not no_baselines, console=_console,
                           calib_sources=calib_sources, eval_sources=eval_sources, recover=recover,
                           recover_steps=recover_steps)
        print_table(result)
    for kind, path in result["files"].items():
        click.echo(f"{kind}: {path}")
    ours = [v for v in result["variants"] if v.get("kind") == "qcompiler"]
    failed = [v for v in ours if v.get("error")]
    if ours and len(failed) == len(ours):
        raise QCompilerError(f"every scheme failed ({failed[0]['name']}: {failed[0]['error']})")
    if failed:
        _console.print(f"[yellow]warning[/yellow]: {len(failed)} of {len(ours)} schemes failed: "
                       + ", ".join(v["name"].removeprefix("qcompiler ") for v in failed))


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="qcompile", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        click.echo(f"qcompile: error: {exc.format_message()}", err=True)
        return 2
    except click.Abort:
        click.echo("qcompile: interrupted", err=True)
        return 130
    except QCompilerError as exc:
        click.echo(f"qcompile: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("qcompile: interrupted", err=True)
        return 130
    except Exception as exc:  # an internal error: one line, traceback on request
        if os.environ.get("QCOMPILE_DEBUG"):
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        click.echo(f"qcompile: internal error: {type(exc).__name__}: {first} (QCOMPILE_DEBUG=1 for details)", err=True)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
