"""Plan: the scheme (data) decides each weight's format; --exclude keeps some in FP32.

The plan is keyed by initializer name, so a weight shared by several MatMuls
(ALBERT-style reuse, a tied LM head) is quantized once and reused.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

from qcompiler.analyze import Embedding, Linear, RoleMap
from qcompiler.schemes import Scheme

KEEP = "keep"  # format of a weight left as it is


@dataclasses.dataclass
class WeightPlan:
    name: str
    role: str
    layer: int | None
    format: str
    settings: dict[str, Any]
    reason: str = ""


def _excluded(item: Linear | Embedding, patterns: list[str], num_layers: int) -> str:
    """The pattern that excludes this weight, or ''.

    A pattern is a role name, `layer:N` (negative counts from the end), or a glob
    on the weight's initializer name or its node's name.
    """
    node_name = item.node.name or ""
    layer = getattr(item, "layer", None)
    for pattern in patterns:
        if pattern == item.role:
            return pattern
        if pattern.startswith("layer:") and layer is not None:
            try:
                wanted = int(pattern.split(":", 1)[1])
            except ValueError:
                continue
            if wanted % max(num_layers, 1) == layer:
                return pattern
        if fnmatch.fnmatchcase(item.name, pattern) or (node_name and fnmatch.fnmatchcase(node_name, pattern)):
            return pattern
    return ""


def make_plan(roles: RoleMap, scheme: Scheme, exclude: list[str] | None = None) -> dict[str, WeightPlan]:
    exclude = list(exclude or [])
    plan: dict[str, WeightPlan] = {}
    for lin in roles.linears:
        if lin.name in plan:
            continue
        settings = scheme.weight_settings(lin.role)
        fmt = str(settings.pop("format", KEEP))
        reason = ""
        hit = _excluded(lin, exclude, roles.num_layers)
        if hit:
            fmt, reason = KEEP, f"excluded by --exclude {hit}"
        plan[lin.name] = WeightPlan(lin.name, lin.role, lin.layer, fmt, settings, reason)
    for emb in roles.embeddings:
        if emb.name in plan:  # tied with an LM head: the table's format wins
            plan[emb.name].role = "embedding"
        settings = dict(scheme.embeddings)
        fmt = str(settings.pop("format", KEEP))
        reason = ""
        hit = _excluded(emb, exclude, roles.num_layers)
        if hit:
            fmt, reason = KEEP, f"excluded by --exclude {hit}"
        plan[emb.name] = WeightPlan(emb.name, "embedding", None, fmt, settings, reason)
    return plan
