"""Report: the compile's figures as JSON and Markdown, a per-layer error plot, a terminal summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def write_json(report: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)


def to_markdown(report: dict) -> str:
    lines = [f"# qcompile report: {Path(report['input']).name} -> scheme `{report['scheme']}`", ""]
    ver = report.get("verification") or {}
    if ver.get("synthesized"):
        lines += [f"> **Warning: verified on synthesized inputs, not on your data.** {ver.get('inputs', '')}. "
                  "The error figures below say little about accuracy on real inputs: give `--calib` data.", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines.append(f"| input | `{report['input']}` |")
    lines.append(f"| output | `{report.get('output')}` |")
    lines.append(f"| size before | {_mb(report['size_before'])} |")
    lines.append(f"| size after | {_mb(report.get('size_after'))} |")
    lines.append(f"| calibration | {report.get('calibration') or '-'} |")
    if (report.get("passes") or {}).get("recover"):
        lines.append(f"| recovery | {recovery_text(report['passes']['recover'])} |")
    if report.get("recovery_held_out"):
        lines.append(f"| recovery on held-out samples | {held_out_text(report['recovery_held_out'])} |")
    lines.append(f"| time | {report['seconds_total']:.1f} s |")
    if ver.get("inputs"):
        lines.append(f"| verified on | {ver['inputs']} |")
    for name, o in (ver.get("outputs") or {}).items():
        if "cosine_mean" in o:
            lines.append(f"| `{name}` cosine mean / min | {o['cosine_mean']:.5f} / {o['cosine_min']:.5f} |")
        if "pooled_cosine_mean" in o:
            lines.append(f"| `{name}` mean-pooled cosine mean / min | {o['pooled_cosine_mean']:.5f} / "
                         f"{o['pooled_cosine_min']:.5f} |")
        lines.append(f"| `{name}` relative L2 | {o['rel_l2']:.5f} |")
    if ver.get("worst_layer"):
        w = ver["worst_layer"]
        lines.append(f"| worst layer | `{w['value']}` rel L2 {w['rel_l2']:.5f} |")
    lines += ["", "## Weights by role", "", "| role | quantized | kept | formats |", "|---|---|---|---|"]
    for role, r in sorted(report.get("roles", {}).items()):
        lines.append(f"| {role} | {r['quantized']} | {r['kept']} | {', '.join(sorted(r['formats']))} |")
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    precision = ((report.get("passes") or {}).get("quantize_embeddings") or {}).get("precision")
    if precision:
        lines += ["", "## Embedding tables: precision", ""] + [f"- `{d['table']}`: {d['why']}" for d in precision]
    lines += ["", "## Passes", ""]
    for name, details in report.get("passes", {}).items():
        lines.append(f"- **{name}**: " + ", ".join(f"{k}: {_short(v)}" for k, v in details.items()))
    return "\n".join(lines) + "\n"


def recovery_text(rec: dict) -> str:
    """One line for `--recover distill`: which model was kept and the held-out figures behind it."""
    text = f"{rec.get('chosen')} kept (held-out cosine calibrated {rec.get('heldout_cosine_calibrated')}"
    if "heldout_cosine_distilled" in rec:
        text += f", distilled {rec['heldout_cosine_distilled']} after {rec.get('steps')} steps in {rec.get('seconds')} s"
    return text + ")"


def held_out_text(h: dict) -> str:
    """One line for calibrated recovery checked on a held-out split (pipeline.held_out_summary)."""
    carry = f" ({h['carry_over']:.2f}x)" if h.get("carry_over") is not None else ""
    text = (f"output error {h['fit_output_rel_error']:.4f} on the fit split -> {h['held_output_rel_error']:.4f} on "
            f"the held-out split{carry}, plain rounding {h['plain_held_output_rel_error']:.4f} there, over "
            f"{h['linears']} linears")
    if h.get("fell_back_to_plain"):
        text += f"; {h['fell_back_to_plain']} fell back to plain rounding (recovery was worse on the held-out split)"
    return text


def _short(value) -> str:
    if isinstance(value, list):
        return f"{len(value)} entries"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in list(value.items())[:6]) + "}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_per_layer(report: dict, path: str | os.PathLike) -> bool:
    """A PNG of the relative error of every linear's output; False when there is nothing to plot."""
    per_layer = (report.get("verification") or {}).get("per_layer_rel_l2") or {}
    if not per_layer:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_layer)
    values = [per_layer[n] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
    ax.bar(range(len(names)), values, color="#3b75af")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n[-28:] for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("relative L2 error of layer output")
    ax.set_title(f"{Path(report['input']).name}: scheme {report['scheme']}")
    fig.tight_layout()
    tmp = Path(path).with_name("." + Path(path).name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def print_summary(report: dict, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    table = Table(title=f"qcompile: {Path(report['input']).name} -> {report['scheme']}", show_lines=False)
    table.add_column("role")
    table.add_column("quantized", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("format")
    for role, r in sorted(report.get("roles", {}).items()):
        table.add_row(role, str(r["quantized"]), str(r["kept"]), ", ".join(sorted(r["formats"])))
    console.print(table)
    ver = report.get("verification") or {}
    bits = [f"size {_mb(report['size_before'])} -> {_mb(report.get('size_after'))}"]
    for name, o in (ver.get("outputs") or {}).items():
        if "cosine_mean" in o:
            bits.append(f"{name}: cosine {o['cosine_mean']:.4f} (min {o['cosine_min']:.4f})")
        if "pooled_cosine_mean" in o:
            bits.append(f"{name} mean-pooled: cosine {o['pooled_cosine_mean']:.4f} (min {o['pooled_cosine_min']:.4f})")
    if ver.get("worst_layer"):
        bits.append(f"worst layer {ver['worst_layer']['value']} rel L2 {ver['worst_layer']['rel_l2']:.4f}")
    if (report.get("passes") or {}).get("recover"):
        bits.append(f"recovery: {recovery_text(report['passes']['recover'])}")
    bits.append(f"{report['seconds_total']:.1f} s")
    console.print("  ".join(bits), soft_wrap=True)
    if ver.get("synthesized"):
        console.print(f"[bold red]verified on SYNTHESIZED inputs, not on your data[/bold red] ({ver.get('inputs')}): "
                      "give --calib data for figures that mean something", soft_wrap=True)
    for note in report.get("notes", []):
        if not (ver.get("synthesized") and note.startswith("verified on synthesized")):   # said in red above
            console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
