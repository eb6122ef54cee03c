"""The Marian model's tables: every scheme of the Optimum export beside CTranslate2, and three decoders agreeing.

    python -m models.mt.bench_marian [--sentences N] [--schemes ...] [--out DIR]

1. `qcompile bench --task mt` machinery (qcompiler.bench_mt.run_seq2seq_bench) on the exported
   folder, with CTranslate2 (its transformers converter on the same checkpoint; int8, int8_float32,
   float32) and Optimum's ORTModelForSeq2SeqLM.generate (FP32 files) as anchors interleaved
   sentence by sentence: BLEU/chrF greedy and beam 4, tokens/s at batch 1 on one thread, sizes.
   `--qat ternary,bcq2` adds each scheme compiled from its QAT-trained checkpoint
   (models.mt.qat_marian) to the same interleaved run, beside its calibrated compile.
2. `--agree`: the FP32 files decoded by our runner, by Optimum's generate and by CTranslate2
   float32, greedy and beam 4, at 1 and 2 threads: the fraction of identical outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

CT2_TYPES = {"int8": "int8", "int8_float32": "int8", "float32": "float32"}  # compute type -> stored weights


def export_dir(checkpoint: Path) -> Path:
    """The Optimum export of a checkpoint, made once beside it."""
    from models.mt.export_marian import export

    out = checkpoint.with_name(checkpoint.name + ".onnx")
    if not (out / "decoder_model_merged.onnx").is_file():
        export(checkpoint, out)
    return out


def ct2_dir(checkpoint: Path, weights: str) -> Path:
    """CTranslate2's conversion of the checkpoint with `weights` (int8 / float32), made once beside it."""
    from ctranslate2.converters import TransformersConverter

    out = checkpoint.with_name(f"{checkpoint.name}.ct2-{weights}")
    if not (out / "model.bin").is_file():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            TransformersConverter(str(checkpoint)).convert(str(tmp), quantization=weights, force=True)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def ct2_translator(checkpoint: Path, compute_type: str, threads: int = 1, max_len: int = 96):
    """translate(text, beam) -> (text, tokens incl. EOS) with CTranslate2, and its model folder."""
    import ctranslate2

    from models.mt.marian_tokenizer import load_tokenizer

    folder = ct2_dir(checkpoint, CT2_TYPES[compute_type])
    tok = load_tokenizer(checkpoint)
    tr = ctranslate2.Translator(str(folder), device="cpu", compute_type=compute_type, inter_threads=1,
                                intra_threads=threads)

    def translate(text, beam):
        pieces = tok.convert_ids_to_tokens(tok(text)["input_ids"])
        # transformers' max_new_tokens counts the forced EOS; CTranslate2's limit does not
        hyp = tr.translate_batch([pieces], beam_size=beam, max_decoding_length=max_len - 1)[0].hypotheses[0]
        return tok.convert_tokens_to_string(hyp), len(hyp) + 1
    return translate, folder


def optimum_translator(folder: Path, threads: int = 1, max_len: int = 96):
    """translate(text, beam) with ORTModelForSeq2SeqLM.generate on the folder's FP32 files."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    from models.mt.marian_tokenizer import load_tokenizer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ORTModelForSeq2SeqLM.from_pretrained(str(folder), session_options=opts, use_merged=False)
    tok = load_tokenizer(folder)

    def translate(text, beam):
        out = model.generate(**tok(text, return_tensors="pt"), num_beams=beam, max_new_tokens=max_len, do_sample=False)[0]
        ids = [int(t) for t in out[1:]]  # without the decoder start
        return tok.decode(ids, skip_special_tokens=True), len(ids)
    return translate


def qat_anchor(checkpoint: Path, scheme: str, steps: int, out_dir: Path, threads: int = 1, max_len: int = 96,
               console=None) -> "Anchor":
    """The scheme compiled from its QAT-trained checkpoint (models.mt.qat_marian; Optimum export,
    `qcompile DIR`, calibration on the same training sentences) as a variant beside the others."""
    from models.mt.qat_marian import qat_dir
    from qcompiler import model_io
    from qcompiler.bench_mt import Anchor, TextTokenizer
    from qcompiler.folder import compile_folder
    from qcompiler.seq2seq import Seq2SeqFiles, Seq2SeqTranslator, special_ids

    exported = export_dir(qat_dir(checkpoint, scheme, steps))
    out = Path(out_dir) / f"qat-{Path(scheme).stem}"
    out.parent.mkdir(parents=True, exist_ok=True)
    compile_folder(exported, scheme=scheme, output=out, calib_text=str(exported / "calib_sources.txt"), verify=True,
                   progress=True, console=console)
    files = Seq2SeqFiles.in_folder(out)
    tr = Seq2SeqTranslator(files, **special_ids(out), threads=threads, max_len=max_len)
    tok = TextTokenizer(out)

    def translate(text, beam):
        ids = tr.translate(tok.encode(text), beam)
        return tok.decode(ids), len(ids) + 1
    return Anchor(f"qcompiler {Path(scheme).stem}, QAT {steps} steps", "qcompiler",
                  sum(model_io.file_size(p) for p in files.paths()), translate)


def agreement(checkpoint: Path, sentences: int, threads_list=(1, 2), beams=(1, 4), max_len: int = 96) -> dict:
    """Fraction of identical outputs: ours vs Optimum generate vs CTranslate2 float32 on the FP32 model."""
    from qcompiler.bench_mt import TextTokenizer, _read_pairs
    from qcompiler.seq2seq import Seq2SeqFiles, Seq2SeqTranslator, special_ids

    folder = export_dir(checkpoint)
    pairs = _read_pairs(folder / "test.tsv")[:sentences]
    tok = TextTokenizer(folder)
    out = {}
    for threads in threads_list:
        ours_tr = Seq2SeqTranslator(Seq2SeqFiles.in_folder(folder), **special_ids(folder), threads=threads, max_len=max_len)
        ours = lambda text, beam: (tok.decode(ours_tr.translate(tok.encode(text), beam)), 0)  # noqa: E731
        merged_tr = Seq2SeqTranslator(Seq2SeqFiles.in_folder(folder, prefer_merged=True), **special_ids(folder),
                                      threads=threads, max_len=max_len)
        merged = lambda text, beam: (tok.decode(merged_tr.translate(tok.encode(text), beam)), 0)  # noqa: E731
        optimum = optimum_translator(folder, threads, max_len)
        ct2, _ = ct2_translator(checkpoint, "float32", threads, max_len)
        for beam in beams:
            hyps = {name: [fn(en, beam)[0] for en, _ in pairs]
                    for name, fn in (("ours", ours), ("ours_merged", merged), ("optimum", optimum), ("ct2_float32", ct2))}
            same = lambda a, b: sum(x == y for x, y in zip(hyps[a], hyps[b])) / len(pairs)  # noqa: E731
            out[f"threads{threads}_beam{beam}"] = {"ours=optimum": same("ours", "optimum"),
                                                    "ours=ours_merged": same("ours", "ours_merged"),
                                                    "ours=ct2_float32": same("ours", "ct2_float32"),
                                                    "optimum=ct2_float32": same("optimum", "ct2_float32")}
    return {"sentences": len(pairs), "agreement": out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a Marian checkpoint folder (default: `make mt-model`'s)")
    ap.add_argument("--schemes", default="int8,int4,kmeans4,bcq3,bcq2,ternary,mixed")
    ap.add_argument("--sentences", type=int, default=None)
    ap.add_argument("--beams", default="1,4")
    ap.add_argument("--out", default="build/mt-marian-bench")
    ap.add_argument("--agree", type=int, default=0, metavar="N", help="only the agreement check, on N sentences")
    ap.add_argument("--no-optimum", action="store_true", help="leave Optimum's generate out of the speed table")
    ap.add_argument("--qat", default="", help="schemes also compiled from a QAT-trained checkpoint (e.g. ternary,bcq2)")
    ap.add_argument("--qat-steps", type=int, default=600)
    args = ap.parse_args(argv)
    from models.mt.train_marian import build

    checkpoint = Path(args.checkpoint) if args.checkpoint else build()
    if args.agree:
        print(json.dumps(agreement(checkpoint, args.agree), indent=1))
        return
    from qcompiler.bench_mt import Anchor, locate, print_table, run_mt_bench

    folder = export_dir(checkpoint)
    anchors = []
    for ctype in CT2_TYPES:
        fn, ct_folder = ct2_translator(checkpoint, ctype)
        anchors.append(Anchor(f"ctranslate2 {ctype}", "ctranslate2", dir_size(ct_folder), fn))
    if not args.no_optimum:
        files = [folder / n for n in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")]
        anchors.append(Anchor("optimum generate fp32", "optimum", sum(f.stat().st_size for f in files),
                              optimum_translator(folder)))
    anchors += [qat_anchor(checkpoint, s, args.qat_steps, Path(args.out)) for s in args.qat.split(",") if s]
    result = run_mt_bench(locate(str(folder), None), [s for s in args.schemes.split(",") if s], out_dir=args.out,
                          sentences=args.sentences, beams=[int(b) for b in args.beams.split(",")], anchors=anchors)
    print_table(result)
    print((Path(args.out) / "mt.bench.md").read_text())
    print(result["files"], file=sys.stderr)


if __name__ == "__main__":
    main()
