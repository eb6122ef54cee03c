"""Plan: the scheme (data) decides each weight's format; --exclude keeps some in FP32.

The plan is keyed by initializer name, so a weight shared by several MatMuls
(ALBERT-style reuse, a tied LM head) is quantized once and reused.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import onnx_ir as ir

from qcompiler.analyze import Embedding, Linear, RoleMap
from qcompiler.errors import UsageError
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
    asked: str = ""        # the scheme's format when the plan itself could not honour it (not --exclude)


def check_exclude(patterns: list[str], num_layers: int) -> None:
    """Refuse patterns that can never match: empty, `layer:` without an integer, a layer out of range."""
    for pattern in patterns:
        if not pattern.strip():
            raise UsageError("--exclude '' is empty: give a role, layer:N or a name glob")
        if pattern.startswith("layer:"):
            text = pattern.split(":", 1)[1]
            try:
                wanted = int(text)
            except ValueError:
                raise UsageError(f"--exclude {pattern}: layer:N needs an integer N, got {text!r}") from None
            if not -num_layers <= wanted < num_layers:
                raise UsageError(f"--exclude {pattern}: the model has {num_layers} layers "
                                 f"(valid: layer:0 .. layer:{num_layers - 1}, or -1 .. -{num_layers} from the end)"
                                 if num_layers else f"--exclude {pattern}: no layers were found in this model")


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
        if pattern.startswith("layer:"):
            wanted = int(pattern.split(":", 1)[1])
            if layer is not None and wanted % max(num_layers, 1) == layer:
                return pattern
            continue
        if fnmatch.fnmatchcase(item.name, pattern) or (node_name and fnmatch.fnmatchcase(node_name, pattern)):
            return pattern
    return ""


def make_plan(roles: RoleMap, scheme: Scheme, exclude: list[str] | None = None,
              strict: bool = True) -> dict[str, WeightPlan]:
    """Each weight's format from the scheme; UsageError for an --exclude pattern that matches nothing
    (strict=False: a folder compile checks the patterns over all its files, not per file)."""
    exclude = list(exclude or [])
    check_exclude(exclude, roles.num_layers)
    hits: set[str] = set()
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
            hits.add(hit)
        elif fmt == "int8" and lin.node.inputs[0].dtype not in (None, ir.DataType.FLOAT):
            # DynamicQuantizeLinear / QuantizeLinear of the int8 form take float32 activations only
            plan[lin.name] = WeightPlan(lin.name, lin.role, lin.layer, KEEP, settings, "int8 takes float32 activations, "
                                        f"this linear's are {lin.node.inputs[0].dtype.name.lower()}", asked=fmt)
            continue
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
            hits.add(hit)
        plan[emb.name] = WeightPlan(emb.name, "embedding", None, fmt, settings, reason)
    dead = [p for p in exclude if p not in hits]
    if dead and strict:
        present = sorted({lin.role for lin in roles.linears} | ({"embedding"} if roles.embeddings else set()))
        raise UsageError(f"--exclude {dead[0]} matches no weight of this model (its roles: {', '.join(present) or 'none'}; "
                         f"layers 0..{max(roles.num_layers - 1, 0)}; or a glob on an initializer or node name)")
    return plan
