"""Scheme files are checked against the schema when they load: every mistake is a SchemeError
(exit 2) naming the valid choices, before any model is read."""

from __future__ import annotations

import pytest

from qcompiler.cli import main
from qcompiler.errors import SchemeError
from qcompiler.scheme_schema import EMBEDDING_FORMATS, WEIGHT_FORMATS
from qcompiler.schemes import builtin_scheme_names, load_scheme

INT4 = 'passes = ["canonicalize", "quantize_int4", "cleanup"]\n'


def _load(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_scheme(str(path))


@pytest.mark.parametrize("name", builtin_scheme_names())
def test_builtin_schemes_pass_the_schema(name):
    scheme = load_scheme(name)
    assert scheme.passes and scheme.runs


@pytest.mark.parametrize("text, expected", [
    (INT4 + '[weights]\nformat = "int3"\n', "format 'int3' is not a format (valid: keep, int8, int4"),
    (INT4 + '[weights]\nformat = "int4"\nblocksize = 32\n', "unknown key 'blocksize' for format 'int4' (valid: format, block_size"),
    (INT4 + '[weights]\nformt = "int4"\n', "unknown key 'formt'"),
    (INT4 + '[weights]\nformat = "int4"\nblock_size = 48\n', "block_size = 48 is invalid for format 'int4': must be one of 16, 32"),
    (INT4 + '[weights]\nformat = "int4"\nsymmetric = "yes"\n', "must be true or false"),
    ('passes = ["canonicalize", "replace_matmul", "cleanup"]\n[weights]\nformat = "bcq"\nbits = 7\n', "must be one of 1, 2, 3, 4"),
    ('passes = ["canonicalize", "replace_matmul", "cleanup"]\n[weights]\nformat = "ternary"\naccuracy_level = 2\n', "one of 0, 4"),
    ('passes = ["canonicalize", "cleanup"]\n[weights]\nformat = "int4"\n', "written by the pass 'quantize_int4'"),
    ('passes = ["canonicalize", "fold_norms"]\n', "unknown pass 'fold_norms' (valid: canonicalize, fold_layernorm"),
    ('passes = "insert_qdq"\n', "'passes' must be a list of pass names"),
    (INT4 + '[weights]\nformat = "int4"\n[roles.ffn_dwn]\nformat = "keep"\n', "unknown role 'ffn_dwn' (valid:"),
    (INT4 + '[embedings]\nformat = "int4"\n', "unknown key 'embedings'"),
    ('passes = ["canonicalize", "quantize_embeddings", "cleanup"]\n[embeddings]\nformat = "packed"\nrow_bits = [3]\n', "row_bits"),
    ('passes = ["canonicalize", "insert_qdq", "cleanup"]\n[weights]\nformat = "int8"\n[options.insert_qdq]\nactivation = "x"\n',
     "unknown option 'activation' (valid: activations"),
])
def test_mistakes_are_one_clear_error(tmp_path, text, expected):
    with pytest.raises(SchemeError) as info:
        _load(tmp_path, text)
    assert expected in str(info.value)


def test_a_scheme_written_from_the_readme_needs_no_pass_list(tmp_path):
    scheme = _load(tmp_path, '[weights]\nformat = "int4"\n[roles.ffn_down]\nformat = "int8"\n[embeddings]\nformat = "int8"\n')
    assert scheme.passes == ["canonicalize", "fold_layernorm", "quantize_embeddings", "insert_qdq", "quantize_int4",
                             "merge_linears", "cleanup"]


def test_a_role_rule_with_another_format_does_not_inherit_the_default_keys(tmp_path):
    scheme = _load(tmp_path, '[weights]\nformat = "int4"\nblock_size = 64\n[roles.ffn_down]\nformat = "ternary"\n'
                             '[roles.ffn_up]\nformat = "int4"\nsymmetric = true\n')
    assert scheme.weight_settings("ffn_down") == {"format": "ternary"}
    assert scheme.weight_settings("ffn_up") == {"format": "int4", "block_size": 64, "symmetric": True}


def test_every_format_row_names_a_real_pass():
    from qcompiler.passes import PASS_TABLE

    for row in [*WEIGHT_FORMATS.values(), *EMBEDDING_FORMATS.values()]:
        assert row.pass_name is None or row.pass_name in PASS_TABLE


def test_cli_exits_2_on_a_bad_scheme_and_writes_nothing(tiny_bert, tmp_path, capsys):
    scheme = tmp_path / "bad.toml"
    scheme.write_text(INT4 + '[weights]\nformat = "int3"\n')
    code = main([str(tiny_bert), "--scheme", str(scheme), "-o", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "int3" in err
    assert not (tmp_path / "out.onnx").exists()
