"""Export the Marian checkpoint the standard way (Optimum) into a folder users deploy as is.

    python -m models.mt.export_marian CHECKPOINT OUT

OUT gets Optimum's encoder_model.onnx, decoder_model.onnx, decoder_with_past_model.onnx and
decoder_model_merged.onnx (task text2text-generation-with-past), config.json and the
MarianTokenizer files, plus tokenizer.json: the same vocabulary for the `tokenizers` library
(transformers has no fast Marian tokenizer; tools that read tokenizer.json only, as `qcompile DIR
--calib-text` and `qcompile bench --task mt` do, then see the ids MarianTokenizer gives), and the
checkpoint's test.tsv and calib_sources.txt. Written in a temporary folder and renamed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import warnings
from pathlib import Path

ONNX_FILES = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx")


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Optimum export of `checkpoint` into `out` (replaced atomically); returns out."""
    from optimum.exporters.onnx import main_export

    checkpoint, out = Path(checkpoint), Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(checkpoint), output=str(tmp), task="text2text-generation-with-past", device="cpu")
    missing = [f for f in ONNX_FILES if not (tmp / f).is_file()]
    if missing:
        raise RuntimeError(f"optimum export wrote no {', '.join(missing)}")
    from models.mt.marian_tokenizer import fast_tokenizer

    fast_tokenizer(tmp).save(str(tmp / "tokenizer.json"))
    for name in ("test.tsv", "calib_sources.txt", "meta.json"):
        if (checkpoint / name).is_file():
            shutil.copy(checkpoint / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    print(export(args.checkpoint, args.out))


if __name__ == "__main__":
    main()
