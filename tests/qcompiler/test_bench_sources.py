"""qcompile bench with calibration / evaluation sources: in-source and cross-source figures."""

import json

import numpy as np
import pytest

from qcompiler.bench import parse_source_specs, summarize_sources, write_samples_npz
from qcompiler.cli import main
from qcompiler.errors import UsageError


def _tokenizer(path, words):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted(set(words)))}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_summary_separates_in_source_from_the_others():
    by = {"a": {"cosine_mean": 0.99, "cosine_min": 0.9}, "b": {"cosine_mean": 0.8, "cosine_min": 0.5},
          "c": {"cosine_mean": 0.9, "cosine_min": 0.7}}
    m = summarize_sources(by, "a")
    assert m["in_source_mean"] == 0.99
    assert m["cosine_mean"] == pytest.approx(0.85) and m["cosine_min"] == 0.5
    assert m["worst_source"] == "b" and m["cross_sources"] == ["b", "c"]
    assert "in_source_mean" not in summarize_sources(by, None)
    assert summarize_sources(by, None)["cosine_mean"] == pytest.approx((0.99 + 0.8 + 0.9) / 3)


def test_source_specs(tmp_path):
    f = tmp_path / "docs.calib.txt"
    f.write_text("a b c\n")
    assert parse_source_specs([str(f), f"other={f}"], "--x") == {"docs": str(f), "other": str(f)}
    with pytest.raises(UsageError):
        parse_source_specs([f"docs={f}", str(f)], "--x")
    with pytest.raises(UsageError):
        parse_source_specs([str(tmp_path / "missing.txt")], "--x")


def test_padded_npz_masks_the_padding(tmp_path):
    feeds = [{"input_ids": np.array([[5, 6, 7]]), "attention_mask": np.ones((1, 3), np.int64)},
             {"input_ids": np.array([[8]]), "attention_mask": np.ones((1, 1), np.int64)}]
    data = np.load(write_samples_npz(tmp_path / "c.npz", feeds))
    assert data["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert data["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.slow
def test_bench_cross_source_on_text(tiny_bert, tmp_path, capsys):
    rng = np.random.default_rng(0)
    words_a = [f"alpha{i}" for i in range(40)]
    words_b = [f"beta{i}" for i in range(40)]
    files = {}
    for name, words in (("a", words_a), ("b", words_b)):
        for part in ("calib", "eval"):
            lines = [" ".join(rng.choice(words, rng.integers(4, 12))) for _ in range(12)]
            files[name, part] = tmp_path / f"{name}.{part}.txt"
            files[name, part].write_text("\n".join(lines) + "\n")
    tok = _tokenizer(tmp_path / "tokenizer.json", words_a + words_b)
    out = tmp_path / "out"
    rc = main(["bench", str(tiny_bert), "--schemes", "int4", "--no-baselines", "--repeats", "2", "--out", str(out),
               "--tokenizer", str(tok), "--calib-samples", "8",
               "--calib-source", f"a={files['a', 'calib']}", "--calib-source", f"b={files['b', 'calib']}",
               "--eval-source", f"a={files['a', 'eval']}", "--eval-source", f"b={files['b', 'eval']}"])
    assert rc == 0
    result = json.loads((out / "tiny_bert.bench.json").read_text())
    assert result["eval_sources"] == {"a": 12, "b": 12} and result["calib_sources"] == ["a", "b"]
    rows = [v for v in result["variants"] if v["kind"] == "qcompiler"]
    assert [v["calib_source"] for v in rows] == ["a", "b"] and not any(v["error"] for v in rows)
    for v in rows:
        other = "b" if v["calib_source"] == "a" else "a"
        assert v["metrics"]["in_source_mean"] == v["by_source"][v["calib_source"]]["cosine_mean"]
        assert v["metrics"]["cosine_mean"] == v["by_source"][other]["cosine_mean"]
        assert 0.5 < v["metrics"]["cosine_mean"] <= 1.0
    md = (out / "tiny_bert.bench.md").read_text()
    assert "cross-source mean" in md and "calibrated on" in md


def test_bench_text_source_without_tokenizer_is_a_usage_error(tiny_bert, tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("one two three four\n")
    rc = main(["bench", str(tiny_bert), "--schemes", "int4", "--eval-source", str(f), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "--tokenizer" in capsys.readouterr().err
