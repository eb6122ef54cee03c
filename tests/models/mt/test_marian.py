"""The transformers Marian path on a tiny model trained here in seconds (the num2words pairs as its
corpus, step-bounded so its weights do not depend on the machine's load): tokenizer.json gives
MarianTokenizer's ids, the Optimum export decodes the same with our runner (split and merged
decoder), Optimum's generate and CTranslate2, and `qcompile bench --task mt` takes the folder."""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("optimum.onnxruntime")

from models.mt import train_marian  # noqa: E402
from models.mt.data import make_splits  # noqa: E402
from models.mt.gettext_corpus import write_tsv  # noqa: E402

pytestmark = pytest.mark.slow

TINY = dataclasses.replace(train_marian.TINY, max_steps=150, train_pairs=None, test_pairs=None,
                           vocab_size=300)


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    """(checkpoint folder, Optimum export folder) of the tiny model."""
    from models.mt.export_marian import export

    root = tmp_path_factory.mktemp("marian")
    corpus = root / "corpus-toy"
    corpus.mkdir()
    train, test = make_splits(3000, 24)
    train += [("Open %s now", "Ouvrir %s maintenant"), ("Copy %1$s to %2$s", "Copier %1$s vers %2$s")] * 20
    write_tsv(train, corpus / "train.tsv")
    write_tsv(test, corpus / "test.tsv")
    ckpt = train_marian.build(TINY, cache=root, corpus=corpus, log=lambda *_: None)
    return ckpt, export(ckpt, root / "onnx")


def test_checkpoint_is_an_opus_mt_style_marian(marian):
    from transformers import MarianMTModel

    ckpt, _ = marian
    model = MarianMTModel.from_pretrained(str(ckpt))
    cfg = model.config
    assert not cfg.normalize_before if hasattr(cfg, "normalize_before") else True  # post-LN (Marian has no pre-LN)
    assert cfg.static_position_embeddings if hasattr(cfg, "static_position_embeddings") else True
    assert model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()  # tied
    assert model.model.encoder.embed_tokens.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert float(model.model.shared.weight[cfg.pad_token_id].detach().abs().max()) == 0.0  # zero start embedding
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["steps"] == TINY.max_steps and meta["torch_greedy_bleu"] >= 0


def test_tokenizer_json_gives_marian_tokenizers_ids(marian):
    from tokenizers import Tokenizer

    from models.mt.gettext_corpus import read_tsv
    from models.mt.marian_tokenizer import load_tokenizer

    ckpt, onnx_dir = marian
    fast, slow = Tokenizer.from_file(str(onnx_dir / "tokenizer.json")), load_tokenizer(ckpt)
    texts = [t for pair in read_tsv(ckpt / "train.tsv")[:400] + read_tsv(ckpt / "test.tsv") for t in pair]
    texts += ["Open %s now", "Copy %1$s to %2$s, then %d more", "  spaces   everywhere ", "Ünïcödé ½ ﬁ"]
    for t in texts:
        assert fast.encode(t).ids == slow(t)["input_ids"], t
        assert fast.decode(fast.encode(t).ids, skip_special_tokens=True) == slow.decode(slow(t)["input_ids"], skip_special_tokens=True)


def test_three_decoders_agree(marian):
    """Our runner = Optimum's generate exactly (same files, same search); CTranslate2 float32 (its own
    kernels) on at least 90% of sentences: near-ties of a tiny model may flip on float rounding."""
    from models.mt.bench_marian import agreement

    ckpt, _ = marian
    ckpt.with_name(ckpt.name + ".onnx").symlink_to(marian[1])  # export_dir finds the fixture's export
    result = agreement(ckpt, sentences=12, threads_list=(1, 2), beams=(1, 4), max_len=24)["agreement"]
    for key, row in result.items():
        assert row["ours=optimum"] == 1.0 and row["ours=ours_merged"] == 1.0, (key, row)
        assert row["ours=ct2_float32"] >= 0.9, (key, row)


def test_bench_mt_takes_the_optimum_folder(marian, tmp_path):
    from qcompiler.cli import main

    _, onnx_dir = marian
    out = tmp_path / "bench"
    assert main(["bench", str(onnx_dir), "--task", "mt", "--schemes", "int8", "--sentences", "4", "--beam", "1,4",
                 "--no-baselines", "--out", str(out)]) == 0
    result = json.loads((out / "mt.bench.json").read_text())
    rows = {v["name"]: v for v in result["variants"]}
    assert list(rows) == ["fp32", "qcompiler int8"] and result["beams"] == [1, 4]
    for v in rows.values():
        assert not v["error"], v["error"]
        assert set(v["metrics"]["by_beam"]) == {"1", "4"} and v["size"] > 0
    assert rows["qcompiler int8"]["size"] < 0.7 * rows["fp32"]["size"]  # the tiny model is mostly its embedding table
    assert (out / "int8" / "decoder_with_past_model.onnx").is_file() and not (out / "int8" / "decoder_model_merged.onnx").exists()
    assert "Beam 4" in (out / "mt.bench.md").read_text()


def test_bench_mt_bad_beam_is_one_line_exit_2(marian, tmp_path, capsys):
    from qcompiler.cli import main

    assert main(["bench", str(marian[1]), "--task", "mt", "--beam", "0", "--out", str(tmp_path)]) == 2
    assert "--beam" in capsys.readouterr().err


def test_qat_checkpoint_packs_on_the_grid(marian, tmp_path):
    """QAT trains every layer linear in the scheme's format (the tied table stays FP32) and the
    compiler packs the trained weights as they are: every linear of the export is found on the
    ternary grid (method "on-grid (lossless)"), none re-rounded."""
    from models.mt.export_marian import export
    from models.mt.qat_marian import qat_dir
    from qcompiler.pipeline import compile_model

    ckpt, _ = marian
    trained = qat_dir(ckpt, "ternary", steps=5, threads=1, log=lambda *_: None)
    record = json.loads((trained / "qat.json").read_text())
    assert set(record["modules"].values()) == {"ternary"} and record["training"]["steps"] == 5
    assert all(".layers." in name for name in record["modules"])   # not the tied lm_head
    onnx_dir = export(trained, tmp_path / "onnx")
    rep = compile_model(str(onnx_dir / "encoder_model.onnx"), scheme="ternary", output=str(tmp_path / "enc.onnx"),
                        verify=False, progress=False)
    linears = rep["passes"]["replace_matmul"]["linears"]
    assert len(linears) == 6 * TINY.encoder_layers
    assert {entry["method"] for entry in linears} == {"on-grid (lossless)"}


def test_profile_splits_the_time_of_both_engines(marian, tmp_path):
    """The profile's parts (encoder, first step, later steps, Python) add up to the measured total,
    one later step per greedy output token after the first, and CTranslate2 is timed beside ours;
    --ops gives the later-step decoder's op shares (summing to 1, linears among them)."""
    from models.mt import profile_marian
    from models.mt.bench_marian import ct2_dir

    ckpt, onnx_dir = marian
    sentences = [line.split("\t")[0] for line in (onnx_dir / "test.tsv").read_text().splitlines()[:6]]
    result = profile_marian.profile(onnx_dir, sentences, beams=(1, 4), ct2=ct2_dir(ckpt, "int8"), max_len=24)
    for key in ("beam1", "beam4"):
        row = result[key]
        parts = row["encoder_ms"] + row["first_step_ms"] + row["later_steps_per_sentence"] * (
            row["later_step_us"] + row["python_us_per_step"]) / 1e3
        assert abs(parts - row["ms_per_sentence"]) < 1e-6 * max(1.0, row["ms_per_sentence"]), row
        assert row["later_step_us"] > 0 and row["ct2"]["ms_per_sentence"] > 0
    assert result["beam1"]["later_steps_per_sentence"] == result["beam1"]["tokens_per_sentence"] - 1
    ops = profile_marian.op_profile(onnx_dir, sentences[:2], beam=4, max_len=24)
    assert abs(sum(v["share"] for v in ops["by_op"].values()) - 1) < 1e-9 and ops["linear_share"] > 0
    assert "MatMul" in ops["by_op"] and ops["nodes_per_run"] > 20
    out = tmp_path / "p.json"
    profile_marian.main([str(onnx_dir), "--sentences", "2", "--beams", "1", "--json", str(out)])
    assert json.loads(out.read_text())["split"]["beam1"]["ms_per_sentence"] > 0
