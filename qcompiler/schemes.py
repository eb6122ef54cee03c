"""Schemes are data: a TOML file names the passes and the format of each weight role.

A scheme file looks like::

    name = "int8"
    summary = "one line shown by --list-schemes"
    runs = "where the output runs, shown by --list-schemes"   # optional
    passes = ["canonicalize", "fold_layernorm", "quantize_embeddings", "insert_qdq", "cleanup"]

    [weights]            # default settings for every MatMul/Gemm weight
    format = "int8"
    [roles.lm_head]      # per-role overrides (roles: see qcompiler.analyze.ROLES)
    format = "int8"
    [embeddings]         # settings for Gather tables
    format = "int8"
    [options.insert_qdq] # options of one pass (its dataclass fields)
    activations = "dynamic"

Built-in schemes live in qcompiler/schemes/*.toml; `--scheme path/to/my.toml` loads any file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from qcompiler.errors import SchemeError
from qcompiler.scheme_schema import check_scheme

BUILTIN_DIR = "schemes"


@dataclasses.dataclass
class Scheme:
    name: str
    summary: str
    passes: list[str]
    weights: dict[str, Any]
    roles: dict[str, dict[str, Any]]
    embeddings: dict[str, Any]
    options: dict[str, dict[str, Any]]
    source: str
    runs: str = ""          # where the compiled model runs (shown by --list-schemes)

    def weight_settings(self, role: str) -> dict[str, Any]:
        """Settings of one weight: the defaults overlaid with its role's rules.

        A role rule that names another format starts afresh: it does not inherit the default
        format's keys (an int4 block_size means nothing to a ternary rule).
        """
        rule = self.roles.get(role, {})
        settings = {} if "format" in rule and rule["format"] != self.weights.get("format") else dict(self.weights)
        settings.update(rule)
        return settings

    def pass_options(self, pass_name: str) -> dict[str, Any]:
        return dict(self.options.get(pass_name, {}))


def builtin_scheme_names() -> list[str]:
    folder = resources.files("qcompiler") / BUILTIN_DIR
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scheme(name_or_path: str) -> Scheme:
    """A built-in scheme by name, or a TOML file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.exists():
        if not path.is_file():
            raise SchemeError(f"scheme file not found: {name_or_path}")
        text = path.read_text()
        source = str(path)
    else:
        folder = resources.files("qcompiler") / BUILTIN_DIR
        entry = folder / f"{name_or_path}.toml"
        if not entry.is_file():
            known = ", ".join(builtin_scheme_names())
            raise SchemeError(f"unknown scheme '{name_or_path}' (known: {known}; or give a .toml file)")
        text = entry.read_text()
        source = f"builtin:{name_or_path}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SchemeError(f"invalid scheme file {source}: {exc}") from None
    return _validate(data, source)


def _validate(data: dict[str, Any], source: str) -> Scheme:
    from qcompiler.analyze import ROLES
    from qcompiler.passes import PASS_TABLE

    pass_options = {name: {f.name for f in dataclasses.fields(cls.Options)} for name, cls in PASS_TABLE.items()}
    options = data.get("options")
    # [options.recover] belongs to --recover distill (not a listed pass): its keys are checked when it runs
    recover = options.pop("recover", None) if isinstance(options, dict) else None
    check_scheme(data, source, pass_options, tuple(ROLES))
    if recover is not None:
        data["options"]["recover"] = recover
    roles = data.get("roles", {})
    options = data.get("options", {})
    passes = data["passes"]
    return Scheme(
        name=str(data.get("name", Path(source).stem)),
        summary=str(data.get("summary", "")),
        passes=list(passes),
        weights=dict(data.get("weights", {})),
        roles={k: dict(v) for k, v in roles.items()},
        embeddings=dict(data.get("embeddings", {})),
        options={k: dict(v) for k, v in options.items()},
        source=source,
        runs=str(data.get("runs", "")),
    )
