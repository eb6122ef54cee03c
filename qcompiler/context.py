"""The state one compilation carries from pass to pass."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import onnx_ir as ir

from qcompiler.analyze import RoleMap
from qcompiler.plan import WeightPlan
from qcompiler.schemes import Scheme


# What the output may use: "ort" stock onnxruntime (com.microsoft contrib ops: int4 as MatMulNBits),
# "qcompiler" onnxruntime with this project's op library (int4 as ai.qcompiler Int4MatMul),
# "portable" standard ONNX only (int4 as blockwise DequantizeLinear). The ai.qcompiler formats
# (ternary, binary codes, codebooks) are the same ops under every target: they carry ONNX
# function bodies that run anywhere.
TARGETS = ("ort", "qcompiler", "portable")


@dataclasses.dataclass
class CompileOptions:
    """What the user asked for beyond the scheme (CLI flags / compile() keywords)."""

    exclude: list[str] = dataclasses.field(default_factory=list)
    target: str = "ort"              # one of TARGETS
    calib_path: str | None = None
    calib_samples: int = 64           # synthesized samples when no calibration data is given
    verify: bool = True
    seed: int = 0
    calib_augment: int = 0            # unlabeled variants per calibration sample for Gram matrices (qcompiler.qat.augment); off: 2 broke the compat bar on gpt2 int4 (0.130 vs MatMulNBits 0.085)
    recovery_holdout: float = 0.125   # share of given calibration samples held out to check recovery against plain
    model_config: dict = dataclasses.field(default_factory=dict)   # config.json beside the model, if any


@dataclasses.dataclass
class CompileContext:
    model: ir.Model
    scheme: Scheme
    options: CompileOptions
    roles: RoleMap | None = None
    plan: dict[str, WeightPlan] = dataclasses.field(default_factory=dict)
    # Activation statistics keyed by value name (see qcompiler.calibration.ActivationStats).
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    calibration_source: str = ""
    calibration_synthesized: bool = False
    # Gram statistics of the held-out split of the given calibration samples (recovery is checked on
    # them, never fitted on them); empty when no split was held out.
    held_stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The calibration feeds (list of {input name: array}), for passes that read inputs directly
    # (e.g. token frequencies for mixed-precision embedding rows).
    calib_feeds: list[dict[str, Any]] | None = None
    # Weight initializers of compiled ops the input file already held (a file fed back): left as they
    # are, never repacked (merge_linears skips their ops).
    compiled_at_load: set[str] = dataclasses.field(default_factory=set)
    # Per-pass details for the report: {pass name: {...}}.
    pass_reports: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    progress: Callable[[str, int, int], None] = lambda label, done, total: None

    def note(self, pass_name: str, key: str, value: Any) -> None:
        self.pass_reports.setdefault(pass_name, {})[key] = value

    def append(self, pass_name: str, key: str, value: Any) -> None:
        self.pass_reports.setdefault(pass_name, {}).setdefault(key, []).append(value)

    def planned(self, *formats: str) -> list[WeightPlan]:
        return [p for p in self.plan.values() if p.format in formats]
