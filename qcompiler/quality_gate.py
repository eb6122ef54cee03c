"""The quality gate (--min-cosine): refuse to write a compiled model whose verified cosine is too low.

The figure gated is verification's headline figure (`primary`: the first float output's masked
mean-pooled cosine for an encoder with an attention mask, what sentence-embedding users see, else
its per-token cosine); without one, the worst float output's cosine.
"""

from __future__ import annotations

from qcompiler.errors import QualityGateError, UsageError

__all__ = ["gate_figure", "check_gate"]

_PREFERRED = ("pooled_cosine_mean", "cosine_mean")


def gate_figure(verification: dict | None) -> tuple[str, str, float] | None:
    """(output name, figure name, value) of the headline output, else of the worst one; None when
    nothing was measured."""
    primary = (verification or {}).get("primary")
    if primary and "cosine_mean" in primary:
        return primary["output"], primary.get("metric", "cosine_mean"), float(primary["cosine_mean"])
    worst = None
    for name, entry in ((verification or {}).get("outputs") or {}).items():
        key = next((k for k in _PREFERRED if k in entry), None)
        if key is not None and (worst is None or entry[key] < worst[2]):
            worst = (name, key, float(entry[key]))
    return worst


def check_gate(verification: dict | None, min_cosine: float | None) -> str:
    """'' when there is no gate; a one-line pass message; QualityGateError when below the gate."""
    if min_cosine is None:
        return ""
    if not -1.0 <= min_cosine <= 1.0:
        raise UsageError(f"--min-cosine must be in [-1, 1], got {min_cosine}")
    figure = gate_figure(verification)
    if figure is None:
        raise UsageError("--min-cosine needs verification with a float output (it was skipped or measured none)")
    name, key, value = figure
    where = "synthesized inputs" if (verification or {}).get("synthesized") else "the given data"
    if value < min_cosine:
        raise QualityGateError(f"quality gate failed: {key.replace('_', ' ')} of '{name}' is {value:.4f} < "
                               f"--min-cosine {min_cosine} (verified on {where}); nothing was written")
    return f"quality gate passed: {key.replace('_', ' ')} of '{name}' {value:.4f} >= {min_cosine}"
