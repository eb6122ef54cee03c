"""Helpers for pass tests: a compile context around a model, roles and plan filled in."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from qcompiler.analyze import analyze
from qcompiler.context import CompileContext, CompileOptions
from qcompiler.plan import make_plan
from qcompiler.schemes import Scheme


def _make_ctx(model: ir.Model, scheme: Scheme | None = None, *, plan: bool = True, **options) -> CompileContext:
    """A CompileContext for `model`; with `plan`, roles from analyze() and the scheme's plan."""
    if scheme is None:
        scheme = Scheme(name="test", summary="test scheme", passes=[], weights={"format": "keep"}, roles={},
                        embeddings={}, options={}, source="<test>")
    ctx = CompileContext(model=model, scheme=scheme, options=CompileOptions(**options))
    if plan:
        ctx.roles = analyze(model)
        ctx.plan = make_plan(ctx.roles, scheme, ctx.options.exclude)
    return ctx


@pytest.fixture()
def make_ctx():
    """The `_make_ctx` function, as a fixture (conftest modules are not importable by name)."""
    return _make_ctx
