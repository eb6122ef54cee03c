"""Random-weight Hugging Face models of many architectures, exported to ONNX folders the way users
get them (Optimum's exporter, or torch.onnx), cached under ~/.cache/qcompiler/exports.

Each architecture is a tiny config (hidden 32-64, 2 layers, a 256-piece byte-level BPE vocabulary
trained on our own sentences) saved with its tokenizer and exported by the installed
optimum-onnx; the cache key holds the versions of torch, transformers and optimum, so a change of
exporter exports again. Used by the compatibility suite and the folder tests (not installed).

- ``export(name, kind="optimum")``: the exported folder (model.onnx, or encoder_model.onnx +
  decoder_model.onnx + decoder_with_past_model.onnx + decoder_model_merged.onnx, config and
  tokenizer files); kind "dynamo-static" writes model.onnx by torch.onnx's dynamo exporter with
  fixed [2, 12] inputs.
- ``ARCHS``: name -> (task, config maker).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path

CACHE = Path(os.environ.get("QCOMPILER_CACHE", Path.home() / ".cache" / "qcompiler")) / "exports"
EXPORT_VERSION = 2           # bump when the configs or the export calls change
VOCAB = 256
FEATURE, CAUSAL, SEQ2SEQ, SPEECH, IMAGE = ("feature-extraction", "text-generation-with-past",
                                          "text2text-generation-with-past",
                                          "automatic-speech-recognition-with-past", "image-feature-extraction")


def _common(**kw):
    return dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)


def _configs():
    import transformers as tf

    # Weights drawn wider than transformers' defaults (0.02), so that random models make distinct
    # greedy choices instead of repeating one token: the drop-in tests compare generated tokens.
    enc = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=128, initializer_range=0.2)
    lm = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
    s2s = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
               encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128, decoder_start_token_id=2,
               init_std=0.05)
    return {
        "bert": (FEATURE, lambda: tf.BertConfig(**_common(**enc))),
        "roberta": (FEATURE, lambda: tf.RobertaConfig(**_common(**{**enc, "max_position_embeddings": 130}))),
        "xlm-roberta": (FEATURE, lambda: tf.XLMRobertaConfig(**_common(**{**enc, "max_position_embeddings": 130}))),
        "deberta-v2": (FEATURE, lambda: tf.DebertaV2Config(**_common(**enc, relative_attention=True,
                                                                       position_buckets=16, pos_att_type=["p2c", "c2p"]))),
        "distilbert": (FEATURE, lambda: tf.DistilBertConfig(**_common(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                                                       max_position_embeddings=128,
                                                                       initializer_range=0.2))),
        "albert": (FEATURE, lambda: tf.AlbertConfig(**_common(**enc, embedding_size=16))),
        "electra": (FEATURE, lambda: tf.ElectraConfig(**_common(**enc, embedding_size=32))),
        "mpnet": (FEATURE, lambda: tf.MPNetConfig(**_common(**{**enc, "max_position_embeddings": 130}))),
        "gpt2": (CAUSAL, lambda: tf.GPT2Config(**_common(n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                                              initializer_range=0.2))),
        "llama": (CAUSAL, lambda: tf.LlamaConfig(**_common(**lm))),
        "qwen2": (CAUSAL, lambda: tf.Qwen2Config(**_common(**lm))),
        "phi3": (CAUSAL, lambda: tf.Phi3Config(**_common(**lm))),
        "gemma": (CAUSAL, lambda: tf.GemmaConfig(**_common(**lm, head_dim=8))),
        "t5": (SEQ2SEQ, lambda: tf.T5Config(**_common(d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                                                       decoder_start_token_id=0, initializer_factor=20.0))),
        "bart": (SEQ2SEQ, lambda: tf.BartConfig(**_common(**s2s))),
        "marian": (SEQ2SEQ, lambda: tf.MarianConfig(**{**_common(**s2s), "decoder_start_token_id": 0})),
        "m2m100": (SEQ2SEQ, lambda: tf.M2M100Config(**_common(**s2s))),
        "whisper": (SPEECH, lambda: tf.WhisperConfig(**{**_common(**s2s), "decoder_start_token_id": 1}, num_mel_bins=16,
                                                max_source_positions=1500, max_target_positions=64,
                                                begin_suppress_tokens=None, suppress_tokens=None)),
        "vit": (IMAGE, lambda: tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64, image_size=32, patch_size=8,
                                            initializer_range=0.2)),
    }


ARCHS = tuple(_configs())


def _versions() -> str:
    import optimum.version
    import torch
    import transformers

    return f"torch{torch.__version__}-tf{transformers.__version__}-opt{optimum.version.__version__}-v{EXPORT_VERSION}"


def cache_dir(name: str, kind: str) -> Path:
    key = hashlib.sha256(_versions().encode()).hexdigest()[:10]
    return CACHE / f"{name}-{kind}-{key}"


def make_tokenizer(path: Path):
    """A 256-piece byte-level BPE trained on our own sentences, saved as tokenizer.json (+ config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from models.texts import calibration_sentences

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(calibration_sentences(400), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=120)
    fast.save_pretrained(path)
    return fast


def _source(name: str, path: Path):
    """Save a random-weight model of `name` (seed 0) with its tokenizer to `path`."""
    import torch
    import transformers as tf

    task, make = _configs()[name]
    torch.manual_seed(0)
    config = make()
    if task == FEATURE or task == IMAGE:
        model = tf.AutoModel.from_config(config)
    elif task == CAUSAL:
        model = tf.AutoModelForCausalLM.from_config(config)
    elif task == SEQ2SEQ:
        model = tf.AutoModelForSeq2SeqLM.from_config(config)
    else:
        model = tf.AutoModelForSpeechSeq2Seq.from_config(config)
    model.eval()
    model.save_pretrained(path)
    if task in (FEATURE, CAUSAL, SEQ2SEQ):
        make_tokenizer(path)
    if task == SPEECH:
        tf.WhisperFeatureExtractor(feature_size=16, chunk_length=1, n_samples=None).save_pretrained(path)
        make_tokenizer(path)
    if task == IMAGE:
        tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return model


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export(name: str, kind: str = "optimum") -> Path:
    """The ONNX folder of architecture `name` exported by `kind` (cached; made atomically)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = cache_dir(name, kind)
    if (out / ".done").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    src = tmp / "src"
    with _quiet():
        model = _source(name, src)
        if kind == "optimum":
            from optimum.exporters.onnx import main_export

            main_export(str(src), output=str(tmp / "onnx"), task=_configs()[name][0], device="cpu",
                        do_validation=False)
        elif kind == "dynamo-static":
            _export_dynamo_static(model, tmp / "onnx")
            for f in src.iterdir():
                if f.suffix in (".json", ".txt") and f.name != "model.safetensors":
                    shutil.copy(f, tmp / "onnx" / f.name)
        else:
            raise ValueError(f"unknown export kind {kind!r}")
    shutil.rmtree(src)
    for f in (tmp / "onnx").iterdir():
        f.rename(tmp / f.name)
    (tmp / "onnx").rmdir()
    (tmp / ".done").write_text(json.dumps({"versions": _versions()}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _export_dynamo_static(model, folder: Path) -> None:
    """torch.onnx's dynamo exporter, inputs fixed at [2, 12] (no dynamic axes): a static-shape file."""
    import torch

    folder.mkdir(parents=True)

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(LastHidden(model).eval(), (ids, mask), str(folder / "model.onnx"), dynamo=True,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          external_data=False)


if __name__ == "__main__":
    import sys

    for arch in sys.argv[1:] or ARCHS:
        print(arch, export(arch), flush=True)
