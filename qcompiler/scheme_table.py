"""`qcompile --list-schemes`: each built-in scheme with its measured size, accuracy and speed.

The figures are not typed by hand: `record_bench` writes them from a bench run into
qcompiler/schemes/measured.json (the demo does, on all-MiniLM-L6-v2), and `scheme_table` prints
them beside each scheme's summary and where it runs. Bits per weight are the file's bits over the
FP32 model's parameters (4 bytes each), so scales, zero points and FP32 norms are counted.
"""

from __future__ import annotations

import datetime
import json
import os
from importlib import resources
from pathlib import Path

from qcompiler.machine import cpu_model

__all__ = ["scheme_table", "record_bench", "measured_path", "cpu_model"]

MEASURED_FILE = "measured.json"


def measured_path() -> Path:
    return Path(str(resources.files("qcompiler") / "schemes" / MEASURED_FILE))


def record_bench(result: dict, path: str | os.PathLike | None = None, model_name: str | None = None,
                 accuracy: str = "", command: str = "") -> Path:
    """Write the per-scheme figures of one `run_bench` result (task embeddings) to measured.json.

    accuracy says what the cosine is measured on (e.g. "calibrated on source A, mean over B, C, D").
    """
    variants = {v["name"]: v for v in result["variants"]}
    fp32 = variants.get("fp32")
    ort8 = variants.get("ort quantize_dynamic int8")
    if not fp32 or not fp32.get("size"):
        raise ValueError("the bench result has no FP32 row to measure against")
    rows = {}
    for name, v in variants.items():
        if v.get("kind") != "qcompiler" or v.get("error") or not v.get("size"):
            continue
        m = v.get("metrics", {})
        lat, ort_lat = v.get("latency_ms"), (ort8 or {}).get("latency_ms")
        rows[name.removeprefix("qcompiler ")] = {
            "size_mb": round(v["size"] / 1e6, 2),
            "bits_per_weight": round(32.0 * v["size"] / fp32["size"], 2),
            "cosine_mean": round(m["cosine_mean"], 4) if "cosine_mean" in m else None,
            "cosine_worst_source": round(m["cosine_worst_source"], 4) if "cosine_worst_source" in m else None,
            "speed_vs_ort_int8": round(ort_lat / lat, 2) if lat and ort_lat else None,
            "speed_vs_fp32": round(fp32["latency_ms"] / lat, 2) if lat and fp32.get("latency_ms") else None,
        }
    data = {
        "model": model_name or Path(result["model"]).name,
        "fp32_size_mb": round(fp32["size"] / 1e6, 2),
        "accuracy": accuracy or f"mean-pooled cosine vs FP32 on {result['samples']} samples",
        "speed": "batch-1 latency, one thread, median of interleaved rounds",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "command": command,
        "schemes": rows,
    }
    target = Path(path) if path else measured_path()
    tmp = target.with_name("." + target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, target)
    return target


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def scheme_table(path: str | os.PathLike | None = None) -> str:
    """The text `--list-schemes` prints: one row per built-in scheme, then where the figures come from."""
    from qcompiler.schemes import builtin_scheme_names, load_scheme

    target = Path(path) if path else measured_path()
    measured = json.loads(target.read_text()) if target.is_file() else {"schemes": {}}
    rows = measured.get("schemes", {})
    lines = [f"{'scheme':<9} {'bits/w':>6} {'size MB':>8} {'cosine':>7} {'vs ORT int8':>11}  runs on / what it writes"]
    for name in builtin_scheme_names():
        scheme = load_scheme(name)
        m = rows.get(name, {})
        lines.append(f"{name:<9} {_fmt(m.get('bits_per_weight'), '.2f'):>6} {_fmt(m.get('size_mb'), '.1f'):>8} "
                     f"{_fmt(m.get('cosine_mean'), '.4f'):>7} {_fmt(m.get('speed_vs_ort_int8'), '.2f') + ('x' if m.get('speed_vs_ort_int8') else ''):>11}  "
                     f"{scheme.runs or '-'}")
        lines.append(f"{'':<46}{scheme.summary}")
    if rows:
        lines.append("")
        lines.append(f"measured on {measured['model']} (FP32 {measured['fp32_size_mb']} MB), {measured['date']}, "
                     f"{measured['machine']}")
        lines.append(f"  cosine: {measured['accuracy']}")
        lines.append(f"  speed: {measured['speed']}" + (f"; command: {measured['command']}" if measured.get("command") else ""))
    else:
        lines.append("")
        lines.append("no measured figures yet: `make demo` records them (qcompiler/schemes/measured.json)")
    return "\n".join(lines)
