"""--exclude patterns: every pattern must match a weight; layer numbers must exist."""

from __future__ import annotations

import pytest

from qcompiler.cli import main
from qcompiler.errors import UsageError
from qcompiler.model_io import load_model
from qcompiler.analyze import analyze
from qcompiler.plan import KEEP, make_plan
from qcompiler.schemes import load_scheme


@pytest.fixture()
def roles(tiny_bert):
    return analyze(load_model(tiny_bert))


def test_layer_patterns_exclude_exactly_that_layer(roles):
    plan = make_plan(roles, load_scheme("int8"), ["layer:-1"])
    last = roles.num_layers - 1
    kept = {wp.layer for wp in plan.values() if wp.format == KEEP and wp.reason}
    assert kept == {last}


@pytest.mark.parametrize("pattern, expected", [
    ("layer:99", "the model has 2 layers"),
    ("layer:-3", "the model has 2 layers"),
    ("layer:x", "needs an integer"),
    ("", "empty"),
    ("nonsense", "matches no weight of this model"),
    ("attn_qkv_typo*", "matches no weight"),
])
def test_dead_patterns_are_refused(roles, pattern, expected):
    assert roles.num_layers == 2
    with pytest.raises(UsageError) as info:
        make_plan(roles, load_scheme("int8"), [pattern])
    assert expected in str(info.value)


def test_a_folder_compile_may_check_patterns_itself(roles):
    plan = make_plan(roles, load_scheme("int8"), ["lm_head"], strict=False)
    assert all(not wp.reason for wp in plan.values())


def test_cli_exit_2_for_a_dead_exclude(tiny_bert, tmp_path, capsys):
    code = main([str(tiny_bert), "--exclude", "layer:99", "-o", str(tmp_path / "o.onnx"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "layer:99" in err and err.count("\n") == 1
    assert not (tmp_path / "o.onnx").exists()
