"""Schemes are data: a TOML file names the passes and the format of each weight role.

A scheme file looks like::

    name = "int8"
    summary = "one line shown by --list-schemes"
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

    def weight_settings(self, role: str) -> dict[str, Any]:
        """Settings of one weight: the defaults overlaid with its role's rules."""
        settings = dict(self.weights)
        settings.update(self.roles.get(role, {}))
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

    known_keys = {"name", "summary", "passes", "weights", "roles", "embeddings", "options"}
    unknown = set(data) - known_keys
    if unknown:
        raise SchemeError(f"scheme {source}: unknown keys {sorted(unknown)}")
    passes = data.get("passes")
    if not isinstance(passes, list) or not all(isinstance(p, str) for p in passes):
        raise SchemeError(f"scheme {source}: 'passes' must be a list of pass names")
    for p in passes:
        if p not in PASS_TABLE:
            raise SchemeError(f"scheme {source}: unknown pass '{p}' (known: {', '.join(PASS_TABLE)})")
    roles = data.get("roles", {})
    for role in roles:
        if role not in ROLES:
            raise SchemeError(f"scheme {source}: unknown role '{role}' (known: {', '.join(ROLES)})")
    options = data.get("options", {})
    for p in options:
        if p not in PASS_TABLE:
            raise SchemeError(f"scheme {source}: options for unknown pass '{p}'")
    return Scheme(
        name=str(data.get("name", Path(source).stem)),
        summary=str(data.get("summary", "")),
        passes=list(passes),
        weights=dict(data.get("weights", {})),
        roles={k: dict(v) for k, v in roles.items()},
        embeddings=dict(data.get("embeddings", {})),
        options={k: dict(v) for k, v in options.items()},
        source=source,
    )
