"""Where a translation's time goes: our runner on an exported (or compiled) folder beside CTranslate2.

    python -m models.mt.profile_marian FOLDER [--ct2 DIR] [--sentences N] [--beams 1,4] [--ops]

Per sentence, batch 1, one thread, process CPU time (CTranslate2 computes in its own worker thread), the engines interleaved sentence by sentence:
- ours: the encoder run, the first decoder step, the later decoder steps (per step), and Python
  outside the sessions (per step: the search, feeds, cache reordering);
- CTranslate2 (`--ct2`, a converted model folder; compute type from `--ct2-type`): the same
  sentence with max_decoding_length 1 (encoder + first step), then in full; the rest per output
  token. Its pip wheel has no profiler, so its split stops there.
`--ops` adds onnxruntime's profile of the later-step decoder by op type: its shares, not its
durations (the profiler's bookkeeping inflates every kernel), and the node count per run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

LINEAR_OPS = {"MatMul", "FusedMatMul", "Gemm", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul",
              "DynamicQuantizeLinear", "TernaryMatMul", "BinaryCodeMatMul", "CodebookMatMul", "Int4MatMul"}


class _Timed:
    """session.run wrapped: process CPU seconds and calls accumulated under a key."""

    def __init__(self, session, acc: dict, key: str):
        self._session, self._acc, self._key = session, acc, key

    def run(self, *args, **kwargs):
        c = time.process_time()
        out = self._session.run(*args, **kwargs)
        self._acc[self._key] += time.process_time() - c
        self._acc[self._key + "_calls"] += 1
        return out

    def __getattr__(self, name):
        return getattr(self._session, name)


def our_runner(folder: Path, threads: int = 1, max_len: int = 96):
    """(translate(ids, beam) -> ids, the accumulators) with the encoder and decoder sessions timed."""
    from qcompiler.seq2seq import Seq2SeqFiles, Seq2SeqTranslator, special_ids

    tr = Seq2SeqTranslator(Seq2SeqFiles.in_folder(folder), **special_ids(folder), threads=threads, max_len=max_len)
    acc = collections.defaultdict(float)
    tr.encoder = _Timed(tr.encoder, acc, "encoder")
    tr.first = _Timed(tr.first, acc, "first")  # a merged decoder's first step: the same session, its own timer
    tr.later = _Timed(tr.later, acc, "later")
    return tr, acc


def ct2_runner(ct2_dir: Path, compute_type: str, threads: int = 1, max_len: int = 96):
    import ctranslate2

    tr = ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type=compute_type, inter_threads=1,
                                intra_threads=threads)

    def run(pieces, beam, limit=max_len - 1):
        return tr.translate_batch([pieces], beam_size=beam, max_decoding_length=limit)[0].hypotheses[0]
    return run


def profile(folder: Path, sentences: list[str], beams=(1, 4), ct2: Path | None = None, ct2_type: str = "int8",
            threads: int = 1, max_len: int = 96) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encoded = [tok.encode(s) for s in sentences]
    ids, pieces = [e.ids for e in encoded], [e.tokens for e in encoded]
    tr, acc = our_runner(folder, threads, max_len)
    ct = ct2_runner(ct2, ct2_type, threads, max_len) if ct2 else None
    out = {"sentences": len(sentences), "threads": threads, "load_average": [round(x, 2) for x in os.getloadavg()]}
    for beam in beams:
        tr.translate(ids[0], beam)  # warm-up
        if ct:
            ct(pieces[0], beam)
        acc.clear()
        total, tokens, ct_first, ct_total, ct_tokens = 0.0, 0, 0.0, 0.0, 0
        for i in range(len(ids)):
            c = time.process_time()
            tokens += len(tr.translate(ids[i], beam)) + 1
            total += time.process_time() - c
            if ct:
                c = time.process_time()
                ct(pieces[i], beam, 1)
                ct_first += time.process_time() - c
                c = time.process_time()
                ct_tokens += len(ct(pieces[i], beam)) + 1
                ct_total += time.process_time() - c
        n = len(ids)
        steps = acc["later_calls"]
        python = total - acc["encoder"] - acc["first"] - acc["later"]
        row = {"ms_per_sentence": 1e3 * total / n, "tokens_per_sentence": tokens / n,
               "encoder_ms": 1e3 * acc["encoder"] / n, "first_step_ms": 1e3 * acc["first"] / n,
               "later_steps_per_sentence": steps / n, "later_step_us": 1e6 * acc["later"] / max(steps, 1),
               "python_us_per_step": 1e6 * python / max(steps, 1)}
        if ct:
            row["ct2"] = {"ms_per_sentence": 1e3 * ct_total / n, "tokens_per_sentence": ct_tokens / n,
                          "encoder_and_first_step_ms": 1e3 * ct_first / n,
                          "rest_us_per_token": 1e6 * (ct_total - ct_first) / max(ct_tokens - n, 1)}
        out[f"beam{beam}"] = row
    return out


def op_profile(folder: Path, sentences: list[str], beam: int, threads: int = 1, max_len: int = 96) -> dict:
    """onnxruntime's profile of the later-step decoder while translating: share of kernel time and
    nodes per run, by op type."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from qcompiler.bench import native_library
    from qcompiler.seq2seq import Seq2SeqFiles, Seq2SeqTranslator, special_ids

    files = Seq2SeqFiles.in_folder(folder)
    tr = Seq2SeqTranslator(files, **special_ids(folder), threads=threads, max_len=max_len)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "later")
        if native_library().startswith("loaded"):
            from qcompiler import ops

            ops.register(opts)
        later = ort.InferenceSession(files.decoder_with_past or files.decoder_merged, opts, providers=["CPUExecutionProvider"])
        tr.later = later
        if files.decoder_merged:
            tr.first = later
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        for s in sentences:
            tr.translate(tok.encode(s).ids, beam)
        events = json.loads(Path(later.end_profiling()).read_text())
    runs = sum(1 for e in events if e.get("name") == "model_run") or 1
    kernel, nodes = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"]["op_name"]
            kernel[op] += e["dur"]
            nodes[op] += 1
    total = sum(kernel.values()) or 1
    by_op = {op: {"share": kernel[op] / total, "nodes_per_run": nodes[op] / runs} for op, _ in kernel.most_common()}
    linear = sum(v["share"] for op, v in by_op.items() if op in LINEAR_OPS)
    return {"runs": runs, "nodes_per_run": sum(nodes.values()) / runs, "linear_share": linear, "by_op": by_op}


def _print(result: dict, ops: dict | None) -> None:
    print(f"{result['sentences']} sentences, {result['threads']} thread(s), load average {result['load_average']}")
    for key, row in result.items():
        if not key.startswith("beam"):
            continue
        print(f"{key}: ours {row['ms_per_sentence']:.2f} ms/sentence ({row['tokens_per_sentence']:.1f} tokens): "
              f"encoder {row['encoder_ms']:.2f} ms, first step {row['first_step_ms']:.2f} ms, {row['later_steps_per_sentence']:.1f} later steps "
              f"x {row['later_step_us']:.0f} us + Python {row['python_us_per_step']:.0f} us/step")
        if "ct2" in row:
            c = row["ct2"]
            print(f"       CTranslate2 {c['ms_per_sentence']:.2f} ms/sentence ({c['tokens_per_sentence']:.1f} tokens): "
                  f"encoder + first step {c['encoder_and_first_step_ms']:.2f} ms, then {c['rest_us_per_token']:.0f} us/token")
    if ops:
        print(f"later-step decoder: {ops['nodes_per_run']:.0f} nodes/run, linear ops {100 * ops['linear_share']:.0f}% of kernel time")
        for op, v in list(ops["by_op"].items())[:14]:
            print(f"  {op:24s} {100 * v['share']:5.1f}%  {v['nodes_per_run']:5.1f} nodes/run")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--ct2", type=Path, help="a CTranslate2 model folder of the same checkpoint")
    ap.add_argument("--ct2-type", default="int8")
    ap.add_argument("--data", type=Path, help="source TAB reference lines (default: FOLDER/test.tsv)")
    ap.add_argument("--sentences", type=int, default=100)
    ap.add_argument("--beams", default="1,4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ops", action="store_true", help="also onnxruntime's profile of the later step, by op type")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    data = args.data or args.folder / "test.tsv"
    if not data.is_file() or not (args.folder / "tokenizer.json").is_file():
        sys.exit(f"profile_marian: {args.folder} needs tokenizer.json and {data.name}")
    sentences = [line.split("\t")[0] for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    sentences = sentences[: args.sentences]
    beams = tuple(int(b) for b in args.beams.split(","))
    result = profile(args.folder, sentences, beams, args.ct2, args.ct2_type, args.threads)
    ops = op_profile(args.folder, sentences[:30], beams[-1], args.threads) if args.ops else None
    _print(result, ops)
    if args.json:
        args.json.write_text(json.dumps({"split": result, "ops": ops}, indent=2))


if __name__ == "__main__":
    main()
