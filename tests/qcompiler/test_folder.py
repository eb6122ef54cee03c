"""`qcompile DIR` on Optimum-exported folders of random tiny models (models/hf_exports.py, cached)."""

from __future__ import annotations

import importlib.util

import json
import os

import numpy as np
import onnx
import pytest

# Skipped only where Optimum is not installed (not the test extra); a broken install fails loudly.
if importlib.util.find_spec("optimum") is None:
    pytest.skip("needs optimum-onnx (pip install 'qcompiler[test]')", allow_module_level=True)
pytestmark = pytest.mark.slow

from models.hf_exports import export  # noqa: E402
from models.texts import calibration_sentences  # noqa: E402
from qcompiler.cli import main  # noqa: E402


def _listing(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_causal_folder_compiles_whole_with_a_record(tmp_path, capsys):
    src = export("gpt2")
    before = _listing(src)
    out = tmp_path / "gpt2.int8"
    assert main([str(src), "--scheme", "int8", "-o", str(out), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert _listing(src) == before                                         # the input is left alone
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "generation_config.json", "tokenizer.json", "qcompile.json"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary folder left
    record = json.loads((out / "qcompile.json").read_text())
    assert record["scheme"] == "int8" and set(record["files"]) == {"model.onnx"}
    assert "config.json" in record["copied"] and "tokenizer.json" in record["copied"]
    model = record["files"]["model.onnx"]
    assert model["size_after"] < model["size_before"]
    ver = model["verification"]
    assert ver["synthesized"] is False and "held-out" in ver["inputs"]      # the chain's own samples
    assert ver["primary"]["output"] == "logits" and ver["primary"]["cosine_mean"] > 0.98
    assert "prompts with an empty past" in model["calibration"] and model["chain"].startswith("128 samples")
    # Again into the same folder: replaced whole.
    (out / "stale.txt").write_text("x")
    assert main([str(src), "--scheme", "int8", "-o", str(out), "-q"]) == 0
    assert not (out / "stale.txt").exists()


def test_seq2seq_folder_calibrates_along_the_chain_from_text(tmp_path):
    src = export("t5")
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(calibration_sentences(40)) + "\n")
    out = tmp_path / "t5.int4"
    assert main([str(src), "--scheme", "int4", "-o", str(out), "--calib-text", str(text), "-q"]) == 0
    record = json.loads((out / "qcompile.json").read_text())
    assert set(record["files"]) == {"encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx",
                                    "decoder_model_merged.onnx"}
    assert record["calibration"].startswith("40 sentences of sentences.txt")
    files = record["files"]
    assert "FP32 encoder's outputs" in files["decoder_model.onnx"]["chain"]
    assert "FP32 decoder's past" in files["decoder_with_past_model.onnx"]["chain"]
    assert "both branches" in files["decoder_model_merged.onnx"]["chain"]
    assert "FP32 decoder's past" in files["decoder_with_past_model.onnx"]["calibration"]   # what the compile used
    for name in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"):
        assert files[name]["size_after"] < files[name]["size_before"], name
        assert files[name]["verification"]["synthesized"] is False


@pytest.mark.parametrize("args, needle", [
    (["--calib-text", "missing.txt"], "cannot read --calib-text"),
    (["--calib", "x.npz"], "a folder calibrates with --calib-text"),
])
def test_folder_usage_errors_are_one_line_exit_2(tmp_path, capsys, args, needle):
    src = export("bert")
    assert main([str(src), "-o", str(tmp_path / "out"), "-q", *[str(tmp_path / a) if a.endswith((".txt", ".npz"))
                                                              else a for a in args]]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_folder_without_tokenizer_or_onnx_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "-q"]) == 2
    assert "no .onnx file" in capsys.readouterr().err
    src = export("vit")                    # no tokenizer.json in an image model's folder
    text = tmp_path / "s.txt"
    text.write_text("a sentence\nanother one\n")
    assert main([str(src), "-o", str(tmp_path / "o"), "--calib-text", str(text), "-q"]) == 2
    assert "needs the folder's tokenizer" in capsys.readouterr().err
    assert main([str(src), "-o", str(src / "inside"), "-q"]) == 2
    assert "inside it" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Drop-in: the compiled folder loads as is in Optimum, the op library registered through session
# options, and it decodes like FP32 at least as well as onnxruntime's own quantizers do.
# ------------------------------------------------------------------------------------------------
def _session_options():
    import onnxruntime as ort

    from qcompiler import ops

    opts = ort.SessionOptions()
    ops.register(opts)
    return opts


def greedy(model, ids, steps: int = 8):
    """(generated tokens, per-step logits) of greedy decoding."""
    import torch

    ids = torch.tensor(ids)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                         min_new_tokens=steps, do_sample=False, output_scores=True, return_dict_in_generate=True)
    return out.sequences[0].tolist(), [s[0].float().numpy() for s in out.scores]


def forced_logits(model, ids, generated) -> list:
    """Each step's logits when the model is made to take `generated` (FP32's tokens): the same
    generate() loop, past cache and files as greedy decoding, but every step sees FP32's prefix."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class Force(LogitsProcessor):
        def __init__(self):
            self.raw = []

        def __call__(self, input_ids, scores):
            self.raw.append(scores[0].float().numpy().copy())
            forced = torch.full_like(scores, -float("inf"))
            forced[:, generated[len(self.raw) - 1]] = 0.0
            return forced

    force, x = Force(), torch.tensor(ids)
    model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=len(generated),
                   min_new_tokens=len(generated), do_sample=False, logits_processor=LogitsProcessorList([force]))
    return force.raw


def rel_l2(a: np.ndarray, b: np.ndarray) -> float | None:
    """Relative L2 over the entries finite in both; None where fewer than two are (a step whose
    logits a processor masked to one token, e.g. the forced EOS at the length limit)."""
    finite = np.isfinite(a) & np.isfinite(b)
    if finite.sum() < 2 or not np.linalg.norm(a[finite]):
        return None
    return float(np.linalg.norm(a[finite] - b[finite]) / np.linalg.norm(a[finite]))


# The prompt first, then 23 random ones (fixed seed): on random-weight models one prompt is a
# lottery. Greedy agreement with FP32 over these 24 (int8, 4-bit, on an AVX-512 VNNI EPYC): t5 ours
# 14 / onnxruntime quantize_dynamic 14, gpt2 18 / 17, llama 10 / 13, marian 24 / 24; int4 vs
# MatMulNBits t5 7 / 6, gpt2 6 / 3, llama 0 / 0, marian 22 / 23. The prompt on t5 meets a near
# tie inside the first decoder self-attention (scores 41332 vs 40632, a one-hot softmax; both int8
# quantizers move them by ~4%), so either quantizer can leave FP32's tokens there.
def _prompts() -> list:
    rng = np.random.default_rng(0)
    return [[[5, 17, 40, 99, 123, 7]]] + [[[int(t) for t in rng.integers(3, 250, size=int(rng.integers(3, 12)))]]
                                           for _ in range(23)]


def decoding_error(model, prompts, references) -> dict:
    """Greedy agreement with FP32 (`references`: its greedy results) and the teacher-forced logit error
    (mean relative L2 over prompts and steps), with the first differing step and its logit error on
    the first prompt."""
    errors, same, first = [], 0, None
    for ids, reference in zip(prompts, references):
        tokens, scores = reference
        generated = tokens[len(tokens) - len(scores):]
        errors += [e for e in map(rel_l2, scores, forced_logits(model, ids, generated)) if e is not None]
        result = first_difference(reference, greedy(model, ids))
        same += result["same"]
        first = first or result
    return {"same": same, "of": len(prompts), "forced_logit_rel_l2": float(np.mean(errors)),
            "first_prompt": {k: v for k, v in first.items() if k in ("same", "first_step", "logit_rel_l2")}}


def first_difference(reference, got) -> dict:
    """Two greedy results (tokens, per-step logits): the same tokens? Else the first step where they
    differ and the logit error there (relative L2)."""
    (ref_tokens, ref_scores), (tokens, scores) = reference, got
    first = next((i for i, (a, b) in enumerate(zip(ref_tokens, tokens)) if a != b), None)
    result = {"same": first is None, "tokens": tokens, "fp32_tokens": ref_tokens}
    if first is not None:
        step = first - (len(ref_tokens) - len(ref_scores))
        result.update(first_step=step, logit_rel_l2=rel_l2(ref_scores[step], scores[step]))
    return result


def _baseline_folder(tmp_path_factory, arch, scheme):
    """onnxruntime's own quantizer for the scheme on every unmerged file of the folder: quantize_dynamic
    (int8) or MatMulNBits (4-bit, block 32, FP32 embeddings). Its quantizers do not enter a merged
    decoder's If, so the baseline loads unmerged. They only take MatMul: Gemm linears (GPT-2's Conv1D)
    are first written as MatMul + Add, as the compatibility suite does, so that they quantize the
    weights qcompiler quantizes (as exported, MatMulNBits leaves gpt2's eight Gemm FP32)."""
    import shutil

    from models.compat import gemms_as_matmuls
    from qcompiler.bench import ort_matmul_nbits, ort_quantize_dynamic

    key = (arch, "ort-" + scheme)
    if key not in _COMPILED:
        quantize = ort_quantize_dynamic if scheme == "int8" else ort_matmul_nbits
        src = export(arch)
        out = tmp_path_factory.mktemp("ort") / f"{arch}.ort-{scheme}"
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("decoder_model_merged.onnx"))
        for f in out.glob("*.onnx"):
            widened = f.with_suffix(".matmuls.onnx")
            gemms_as_matmuls(src / f.name, widened)
            quantize(str(widened), str(f))
            widened.unlink()
        _COMPILED[key] = out
    return _COMPILED[key]


_QUANTIZED_LINEARS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits", "QLinearMatMul"}


def _branches(graph) -> list:
    """The graph itself, or the branches of its top-level If nodes (a merged decoder's two paths)."""
    ifs = [n for n in graph.node if n.op_type == "If"]
    return [a.g for n in ifs for a in n.attribute if a.type == onnx.AttributeProto.GRAPH] if ifs else [graph]


def _quantized_linears(graph) -> int:
    """Quantized linear ops in a graph and its subgraphs (onnxruntime's or the ai.qcompiler library's)."""
    from qcompiler.model_io import graph_protos
    from qcompiler.verify import CUSTOM_DOMAIN

    return sum(node.op_type in _QUANTIZED_LINEARS or node.domain == CUSTOM_DOMAIN
               for g in graph_protos(graph) for node in g.node)


_CASES = [("gpt2", "causal"), ("llama", "causal"), ("t5", "merged"), ("t5", "unmerged"), ("marian", "merged"),
          ("marian", "unmerged")]


@pytest.mark.parametrize("arch, kind, scheme", [(a, k, s) for a, k in _CASES for s in ("int8", "int4")])
def test_compiled_folder_drops_into_optimum(tmp_path_factory, arch, kind, scheme):
    """The compiled folder, loaded by Optimum, decodes like FP32 at least as well as onnxruntime's own
    quantizer for the scheme (quantize_dynamic for int8, MatMulNBits with FP32 embeddings for int4) on
    the same folder: over 24 prompts of 8 greedy tokens, the logits at FP32's prefix (through the past
    cache, as generation runs) within 1.5x the baseline's error (issue 15's bar; these random tiny
    models make any quantizer's logits 2-60% off). Agreement counts and the first prompt's first
    differing step are printed beside it: on random weights they are a lottery (see _prompts)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM

    src = export(arch)
    out = _compiled(tmp_path_factory, arch, scheme)
    seq2seq = kind != "causal"
    if not seq2seq:
        load = lambda path, **kw: ORTModelForCausalLM.from_pretrained(path, **kw)  # noqa: E731
    else:
        load = lambda path, **kw: ORTModelForSeq2SeqLM.from_pretrained(path, **kw)  # noqa: E731
    merged = {} if not seq2seq else {"use_merged": kind == "merged"}
    ref = load(src, **merged)
    got = load(out, session_options=_session_options(), **merged)
    # Optimum really runs the compiled files (not the source's): their sessions point into `out`.
    parts = [got] if not seq2seq else [got.encoder, got.decoder] + (
        [got.decoder_with_past] if got.decoder_with_past is not None else [])
    paths = [str(p.path) for p in parts]
    assert all(str(out) in p for p in paths), paths
    if seq2seq:
        assert ("decoder_model_merged.onnx" in paths[1]) == (kind == "merged"), paths
    # ... and each of them is quantized, not an FP32 copy (which would meet the error bar trivially),
    # in both branches of a merged decoder.
    for p in paths:
        assert all(_quantized_linears(g) for g in _branches(onnx.load(p).graph)), p
    base = load(_baseline_folder(tmp_path_factory, arch, scheme), **({"use_merged": False} if seq2seq else {}))
    prompts = _prompts()
    references = [greedy(ref, ids) for ids in prompts]
    ours, theirs = decoding_error(got, prompts, references), decoding_error(base, prompts, references)
    print(f"{arch} {kind} {scheme}: qcompiler {ours}; onnxruntime {theirs}")
    assert ours["forced_logit_rel_l2"] <= 1.5 * theirs["forced_logit_rel_l2"], (ours, theirs)

_COMPILED: dict = {}


def _compiled(tmp_path_factory, arch, scheme):
    key = (arch, scheme)
    if key not in _COMPILED:
        out = tmp_path_factory.mktemp("dropin") / f"{arch}.{scheme}"
        assert main([str(export(arch)), "--scheme", scheme, "-o", str(out), "-q"]) == 0
        _COMPILED[key] = out
    return _COMPILED[key]


def test_compiled_encoder_folder_drops_into_optimum_feature_extraction(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    from qcompiler.embedding_eval import cosine_vs_reference, mean_pooled

    src = export("bert")
    out = _compiled(tmp_path_factory, "bert", "int8")
    ref = ORTModelForFeatureExtraction.from_pretrained(src)
    got = ORTModelForFeatureExtraction.from_pretrained(out, session_options=_session_options())
    assert str(out) in str(got.path)
    ids = torch.tensor([[5, 17, 40, 99, 123, 7, 9, 0], [8, 9, 10, 11, 12, 13, 14, 15]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1] * 8])
    a = ref(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state.numpy()
    b = got(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state.numpy()
    mean, low = cosine_vs_reference(mean_pooled(a, mask.numpy()), mean_pooled(b, mask.numpy()))
    # int8 on this random BERT: ~2% relative output error (tests/compat), mean-pooled cosine ~0.999.
    assert low > 0.99, (mean, low)
