"""The scheme file's schema: every format is one row of one table (its pass, its keys, their values).

`check_scheme` runs when a scheme loads, before any model is read: an unknown section, key,
format or value is a SchemeError naming the valid ones, so a typo (`formt`, `format = "int3"`,
`blocksize`) never compiles a model that comes out unquantized. The passes still check what only
a model can tell (e.g. a group size against K).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from qcompiler.errors import SchemeError

__all__ = ["WEIGHT_FORMATS", "EMBEDDING_FORMATS", "check_scheme", "FormatRow"]


def _choice(*values) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        return "" if v in values and type(v) is type(values[0]) else f"one of {', '.join(map(repr, values))}"
    return check


def _int(lo: int, hi: int) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        return "" if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi else f"an integer in [{lo}, {hi}]"
    return check


def _bool(v: Any) -> str:
    return "" if isinstance(v, bool) else "true or false"


def _str(v: Any) -> str:
    return "" if isinstance(v, str) and v else "a non-empty string"


def _list_of(item: Callable[[Any], str], what: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        ok = isinstance(v, list) and v and all(not item(x) for x in v)
        return "" if ok else f"a non-empty list of {what}"
    return check


def _fractions(v: Any) -> str:
    ok = isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in v)
    return "" if ok and sum(v) > 0 else "a non-empty list of non-negative numbers"


_RECOVERY = _choice("none", "gptq")
_ACCURACY = _choice(0, 4)
_SCALE = _choice("float16", "float32")
_GROUP = _int(1, 1 << 20)
_OUTLIERS = _int(0, 64)
_SEED = _int(0, 2**31 - 1)

# Keys shared by the ai.qcompiler MatMul formats (replace_matmul).
_PACKED_COMMON = {"group_size": _GROUP, "accuracy_level": _ACCURACY, "recovery": _RECOVERY,
                  "n_outliers": _OUTLIERS, "scale_dtype": _SCALE}


@dataclasses.dataclass(frozen=True)
class FormatRow:
    """One format: the pass that writes it, its bits per weight, and its keys with their checks."""

    pass_name: str | None
    summary: str
    keys: dict[str, Callable[[Any], str]]


WEIGHT_FORMATS: dict[str, FormatRow] = {
    "keep": FormatRow(None, "left in FP32", {}),
    "int8": FormatRow("insert_qdq", "int8 per output channel, int8 activations", {}),
    "int4": FormatRow("quantize_int4", "4-bit blocks (MatMulNBits / int4 DequantizeLinear)",
                      {"block_size": _choice(16, 32, 64, 128, 256), "symmetric": _bool, "recovery": _RECOVERY,
                       "n_outliers": _OUTLIERS, "n_outliers_native": _OUTLIERS}),
    "ternary": FormatRow("replace_matmul", "TWN ternary per output channel (TernaryMatMul)",
                         {**_PACKED_COMMON, "ternary_method": _choice("twn", "optimal")}),
    "bcq": FormatRow("replace_matmul", "binary codes sum alpha_i b_i (BinaryCodeMatMul)",
                     {**_PACKED_COMMON, "bits": _choice(1, 2, 3, 4), "iterations": _int(0, 1000)}),
    "kmeans": FormatRow("replace_matmul", "per-row k-means codebook (CodebookMatMul)",
                        {**_PACKED_COMMON, "bits": _choice(2, 3, 4), "iterations": _int(0, 1000), "seed": _SEED,
                         "weighted": _bool}),
}

EMBEDDING_FORMATS: dict[str, FormatRow] = {
    "keep": FormatRow(None, "left in FP32", {}),
    "int8": FormatRow("quantize_embeddings", "int8 rows", {}),
    "int4": FormatRow("quantize_embeddings", "int4 rows in blocks", {"block_size": _GROUP}),
    "packed": FormatRow("quantize_embeddings", "PackedGather rows of several widths by frequency",
                        {"row_bits": _list_of(_choice(2, 4, 8), "2, 4 or 8"), "row_fractions": _fractions,
                         "frequency": _str, "group_size": _GROUP}),
    "ternary": FormatRow("quantize_embeddings", "PackedGather ternary rows",
                         {"row_bits": _list_of(_choice(2), "2"), "group_size": _GROUP, "frequency": _str}),
}

_TOP_KEYS = {"name": _str, "summary": _str, "runs": _str}


def _check_format(where: str, section: Any, table: dict[str, FormatRow], passes: list[str], source: str) -> None:
    if not isinstance(section, dict):
        raise SchemeError(f"scheme {source}: [{where}] must be a table of settings")
    fmt = section.get("format", "keep")
    if fmt not in table:
        raise SchemeError(f"scheme {source}: [{where}] format {fmt!r} is not a format (valid: {', '.join(table)})")
    row = table[fmt]
    for key, value in section.items():
        if key == "format":
            continue
        if key not in row.keys:
            valid = ", ".join(["format", *row.keys]) or "format"
            raise SchemeError(f"scheme {source}: [{where}] unknown key {key!r} for format {fmt!r} (valid: {valid})")
        need = row.keys[key](value)
        if need:
            raise SchemeError(f"scheme {source}: [{where}] {key} = {value!r} is invalid for format {fmt!r}: must be {need}")
    if row.pass_name and row.pass_name not in passes:
        raise SchemeError(f"scheme {source}: [{where}] format {fmt!r} is written by the pass {row.pass_name!r}, "
                          f"which the scheme's passes list does not run")


def default_passes(data: dict[str, Any], pass_order: list[str]) -> list[str]:
    """The passes a scheme without a `passes` list runs: canonicalize, fold_layernorm, the passes
    its formats need (in pipeline order; merge_linears after replace_matmul / quantize_int4), cleanup."""
    sections = [data.get("weights", {}), *data.get("roles", {}).values()]
    needed = {WEIGHT_FORMATS[s["format"]].pass_name for s in sections
              if isinstance(s, dict) and s.get("format") in WEIGHT_FORMATS}
    emb = data.get("embeddings", {})
    if isinstance(emb, dict) and emb.get("format") in EMBEDDING_FORMATS:
        needed.add(EMBEDDING_FORMATS[emb["format"]].pass_name)
    needed |= {"canonicalize", "fold_layernorm", "cleanup"}
    if needed & {"replace_matmul", "quantize_int4"}:
        needed.add("merge_linears")     # their ops reading one activation become one op
    return [p for p in pass_order if p in needed]


def check_scheme(data: dict[str, Any], source: str, pass_options: dict[str, set[str]], roles: tuple[str, ...]) -> None:
    """Raise SchemeError on anything in `data` (a parsed scheme file) that is not in the schema.

    `data["passes"]` is filled in with `default_passes` when the file has none."""
    sections = {"passes", "weights", "roles", "embeddings", "options", *_TOP_KEYS}
    for key in data:
        if key not in sections:
            raise SchemeError(f"scheme {source}: unknown key {key!r} (valid: {', '.join(sorted(sections))})")
    for key, check in _TOP_KEYS.items():
        if key in data and check(data[key]):
            raise SchemeError(f"scheme {source}: {key} must be {check(data[key])}")
    if "passes" not in data:
        data["passes"] = default_passes(data, list(pass_options))
    passes = data.get("passes")
    if not isinstance(passes, list) or not passes or not all(isinstance(p, str) for p in passes):
        raise SchemeError(f"scheme {source}: 'passes' must be a list of pass names, e.g. "
                          f"passes = [\"canonicalize\", \"insert_qdq\", \"cleanup\"] (valid: {', '.join(pass_options)})")
    for p in passes:
        if p not in pass_options:
            raise SchemeError(f"scheme {source}: unknown pass {p!r} (valid: {', '.join(pass_options)})")
    _check_format("weights", data.get("weights", {}), WEIGHT_FORMATS, passes, source)
    role_rules = data.get("roles", {})
    if not isinstance(role_rules, dict):
        raise SchemeError(f"scheme {source}: [roles] must hold one table per role, e.g. [roles.ffn_down]")
    for role, rule in role_rules.items():
        if role not in roles:
            raise SchemeError(f"scheme {source}: unknown role {role!r} (valid: {', '.join(roles)})")
        merged = dict(data.get("weights", {}))
        if isinstance(rule, dict) and "format" in rule and rule["format"] != merged.get("format"):
            merged = {}     # a rule that changes the format does not inherit the other format's keys
        merged.update(rule if isinstance(rule, dict) else {"": rule})
        _check_format(f"roles.{role}", merged, WEIGHT_FORMATS, passes, source)
    _check_format("embeddings", data.get("embeddings", {}), EMBEDDING_FORMATS, passes, source)
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise SchemeError(f"scheme {source}: [options] must hold one table per pass, e.g. [options.insert_qdq]")
    for p, values in options.items():
        if p not in pass_options:
            raise SchemeError(f"scheme {source}: options for unknown pass {p!r} (valid: {', '.join(pass_options)})")
        if not isinstance(values, dict):
            raise SchemeError(f"scheme {source}: [options.{p}] must be a table of option = value")
        unknown = sorted(set(values) - pass_options[p])
        if unknown:
            raise SchemeError(f"scheme {source}: [options.{p}] unknown option {unknown[0]!r} "
                              f"(valid: {', '.join(sorted(pass_options[p])) or 'none'})")
