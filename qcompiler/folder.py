"""`qcompile DIR`: compile an exported model folder (Optimum / transformers layout) as a whole.

One scheme over every ONNX file (model.onnx, encoder_model.onnx, decoder_model.onnx,
decoder_with_past_model.onnx, decoder_model_merged.onnx, ...); every other file (config,
tokenizer, generation config) copied; a qcompile.json record of the settings and per-file
figures in the output folder, which is written whole in a temporary folder and renamed into
place. Calibration follows the chain the files form at run time:

- the encoder runs on the token samples (from `--calib-text` through the folder's tokenizer.json,
  else random tokens; synthesized features for speech / image encoders);
- decoder_model runs on a decoder prompt ([decoder start] + the sample's first tokens) over the
  FP32 encoder's outputs for that sample;
- decoder_with_past_model and the cache branch of decoder_model_merged run on the next tokens
  with the FP32 decoder's present.* outputs as their past; the merged file's other branch on the
  prompts (use_cache_branch false, empty past);
- a decoder-only model.onnx with past: the first three quarters of a sample as the prompt (empty
  past), the rest as the continuation over the prompt's own present.* outputs.

Each file is verified on a held-out part of its own chain samples (pipeline.compile_model).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import numpy as np

from qcompiler import model_io
from qcompiler.errors import CalibrationError, OutputError, UsageError, require_extra
from qcompiler.synthetic_inputs import _Sizes, _one_feed, input_dims, is_past, present_name, read_config, synthesize

ENCODER, DECODER, WITH_PAST, MERGED = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx",
                                       "decoder_model_merged.onnx")
RECORD = "qcompile.json"
MAX_TEXT_SAMPLES = 256
MAX_TOKENS = 64


def default_output_dir(folder: Path, scheme_name: str) -> Path:
    return folder.with_name(f"{folder.name}.{Path(scheme_name).stem}")


def _onnx_files(folder: Path) -> list[Path]:
    """The folder's ONNX files, encoder first (its outputs feed the decoders' calibration)."""
    order = {ENCODER: 0, DECODER: 1, WITH_PAST: 2, MERGED: 3}
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix == ".onnx"),
                  key=lambda p: (order.get(p.name, 4), p.name))


def _external_data_files(path: Path) -> set[str]:
    """Names of the external data files an ONNX file reads (they are rewritten, not copied)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {Path(kv.value).name for g in model_io.graph_protos(proto.graph) for t in g.initializer
            for kv in t.external_data if kv.key == "location"}


def token_samples(folder: Path, calib_text: str | None, config: dict, n: int, seed: int) -> tuple[list, str]:
    """(1-D token id arrays, description): the sentences of `calib_text` through the folder's
    tokenizer.json, else n random-token samples of 32 over the config's vocabulary."""
    if calib_text is None:
        rng = np.random.default_rng(seed)
        vocab = int(config.get("vocab_size") or 100)
        return [rng.integers(min(4, vocab - 1), vocab, size=32) for _ in range(n)], \
            f"{n} samples of random tokens (no --calib-text)"
    tokenizers = require_extra("tokenizers", "text", "--calib-text")
    tok_path = folder / "tokenizer.json"
    if not tok_path.exists():
        raise UsageError(f"--calib-text needs the folder's tokenizer: {tok_path} not found")
    try:
        lines = [line.strip() for line in Path(calib_text).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"cannot read --calib-text {calib_text}: {exc}") from None
    if not lines:
        raise CalibrationError(f"--calib-text {calib_text} has no sentences (one per line)")
    try:
        tok = tokenizers.Tokenizer.from_file(str(tok_path))
    except Exception as exc:
        raise CalibrationError(f"cannot load the tokenizer {tok_path}: {str(exc).splitlines()[0][:200]}") from None
    samples = []
    for line in lines[:MAX_TEXT_SAMPLES]:
        ids = np.asarray(tok.encode(line).ids[:MAX_TOKENS], dtype=np.int64)
        if ids.size >= 2:
            samples.append(ids)
    if len(samples) < 2:
        raise CalibrationError(f"--calib-text {calib_text}: fewer than 2 sentences of 2 or more tokens")
    return samples, f"{len(samples)} sentences of {Path(calib_text).name} through tokenizer.json"


class _Chain:
    """Builds each file's calibration feeds from the token samples and the FP32 files before it."""

    def __init__(self, folder: Path, tokens: list, config: dict, seed: int):
        self.folder, self.tokens, self.config = folder, tokens, config
        self.rng = np.random.default_rng(seed)
        self.encoder_side: list[dict] | None = None    # per sample: encoder_hidden_states + mask
        self.decoder_prompts: list[dict] | None = None  # per sample: the decoder_model feed
        self.decoder_presents: list[dict] | None = None  # per sample: {past input name: array}
        start = config.get("decoder_start_token_id")
        self.start = int(start) if isinstance(start, int) else int(config.get("pad_token_id") or 0)

    def _session(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def _feed(self, model, specs, seq: int, past: int, enc: int, ids=None, extra=None) -> dict:
        feed = _one_feed(specs, _Sizes(1, seq, past, enc, self.config), {}, int(self.config.get("vocab_size") or 100),
                         self.rng, 0)
        names = {n for n, _, _ in specs}
        if ids is not None:
            for key in ("input_ids", "decoder_input_ids"):
                if key in names:
                    feed[key] = ids[None].astype(feed[key].dtype)
        for key, value in (extra or {}).items():
            if key in names:
                feed[key] = value
        return feed

    def feeds_for(self, path: Path, model) -> tuple[list[dict], str]:
        specs = input_dims(model)
        names = {n for n, _, _ in specs}
        past = any(is_past(n) for n in names)
        if path.name == ENCODER or ("encoder_hidden_states" not in names and not past):
            return self._encoder_like(path, model, specs, names)
        if "encoder_hidden_states" in names or path.name in (DECODER, WITH_PAST, MERGED):
            return self._decoder(path, model, specs, names, past)
        return self._causal(path, model, specs)

    def _encoder_like(self, path, model, specs, names):
        if "input_ids" not in names:   # speech / image encoders: synthesized features of the right shape
            feeds = synthesize(model, samples=len(self.tokens), config=self.config, run_prompt=False)
            how = "synthesized features"
        else:
            feeds = [self._feed(model, specs, len(ids), 0, len(ids), ids) for ids in self.tokens]
            how = "token samples"
        if path.name == ENCODER:
            sess = self._session(path)
            out = sess.get_outputs()[0].name
            self.encoder_side = []
            for feed in feeds:
                hidden = sess.run([out], feed)[0]
                mask = feed.get("attention_mask", np.ones(hidden.shape[:2], np.int64))
                self.encoder_side.append({"encoder_hidden_states": hidden, "encoder_attention_mask": mask})
        return feeds, how

    def _decoder(self, path, model, specs, names, past):
        n = len(self.tokens)
        side = self.encoder_side
        if side is None:   # no encoder file: synthesized encoder states
            side = [None] * n
        prompts_ids = [np.concatenate([[self.start], ids[: max(1, 3 * len(ids) // 4)]]).astype(np.int64)
                       for ids in self.tokens]
        next_ids = [ids[max(1, 3 * len(ids) // 4):][:8] if len(ids) > 1 else ids for ids in self.tokens]
        next_ids = [x if x.size else self.tokens[i][-1:] for i, x in enumerate(next_ids)]

        def enc_len(i):
            return side[i]["encoder_hidden_states"].shape[1] if side[i] is not None else 32

        if not past:       # decoder_model: the prompts; its presents feed the files with past
            feeds = [self._feed(model, specs, len(p), 0, enc_len(i), p, side[i]) for i, p in enumerate(prompts_ids)]
            sess = self._session(path)
            outs = [o.name for o in sess.get_outputs()]
            self.decoder_prompts, self.decoder_presents = feeds, []
            for feed in feeds:
                values = dict(zip(outs, sess.run(outs, feed)))
                self.decoder_presents.append({k: v for k, v in values.items() if k.startswith("present")})
            return feeds, "decoder prompts over the FP32 encoder's outputs"
        prompts = [self._feed(model, specs, len(p), 0, enc_len(i), p, side[i]) for i, p in enumerate(prompts_ids)]
        presents = self._presents_for(specs, model, path, prompts)
        conts = []
        for i, ids in enumerate(next_ids):
            plen = len(prompts_ids[i])
            cont = self._feed(model, specs, len(ids), plen, enc_len(i), ids, side[i])
            for name, value in presents[i].items():
                cont[name] = value
            conts.append(cont)
        if path.name == MERGED or "use_cache_branch" in names:   # both branches, both in the held-out tail
            k = min(4, len(prompts) // 4)
            feeds = prompts[: len(prompts) - k] + conts[: len(conts) - k] + prompts[len(prompts) - k:] + conts[len(conts) - k:]
            return feeds, "both branches: prompts with an empty past, next tokens over the FP32 decoder's past"
        return conts, "next tokens over the FP32 decoder's past (present.* of decoder_model)"

    def _presents_for(self, specs, model, path, prompts) -> list[dict]:
        """Per sample {past input: value} from decoder_model's presents, else from this file's own
        prompt run (a merged file, use_cache_branch false); inputs without a present stay random."""
        pasts = [n for n, _, _ in specs if is_past(n)]
        source = self.decoder_presents
        if source is None:
            sess = self._session(path)
            outs = [o.name for o in sess.get_outputs()]
            source = []
            for feed in prompts:
                values = dict(zip(outs, sess.run(outs, feed)))
                source.append({k: v for k, v in values.items() if k.startswith("present")})
        result = []
        for i, present in enumerate(source):
            outputs = list(present)
            entry = {}
            for name in pasts:
                out = present_name(name, outputs)
                if out is not None:
                    entry[name] = present[out]
            result.append(entry)
        return result

    def _causal(self, path, model, specs):
        """A decoder-only file with past: prompt (empty past) + continuation over its own presents."""
        prompts, conts = [], []
        splits = [max(1, 3 * len(ids) // 4) for ids in self.tokens]
        for ids, s in zip(self.tokens, splits):
            prompts.append(self._feed(model, specs, s, 0, s, ids[:s]))
        presents = self._presents_for(specs, model, path, prompts)
        for (ids, s), present in zip(zip(self.tokens, splits), presents):
            new = ids[s:] if len(ids) > s else ids[-1:]
            cont = self._feed(model, specs, len(new), s, s, new)
            cont.update(present)
            conts.append(cont)
        k = min(4, len(prompts) // 4)
        feeds = prompts[: len(prompts) - k] + conts[: len(conts) - k] + prompts[len(prompts) - k:] + conts[len(conts) - k:]
        return feeds, "prompts with an empty past and their continuations over the model's own past"


def compile_folder(folder, scheme="int8", output=None, calib_text=None, exclude=(), target="ort",
                   verify=True, progress=False, console=None, seed: int = 0, **compile_kwargs) -> dict:
    """Compile every ONNX file of `folder` into `output` (default FOLDER.<scheme>/ beside it); returns
    the record also written as output/qcompile.json."""
    from qcompiler.pipeline import compile_model
    from qcompiler.schemes import Scheme, load_scheme

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"input folder not found: {folder}")
    files = _onnx_files(folder)
    if not files:
        raise UsageError(f"no .onnx file in {folder}")
    scheme_obj = scheme if isinstance(scheme, Scheme) else load_scheme(str(scheme))
    out = Path(output) if output else default_output_dir(folder, scheme_obj.name)
    if out.resolve() == folder.resolve() or folder.resolve() in out.resolve().parents:
        raise OutputError(f"output folder {out} is the input folder or inside it; refusing to write there")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path exists and is not a folder: {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"output folder's parent is missing or not writable: {parent}")
    config = read_config(folder)
    tokens, token_text = token_samples(folder, calib_text, config, 64, seed)
    skip = set()
    for f in files:
        skip |= _external_data_files(f)
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    record = {"tool": "qcompiler", "version": _version(), "created": datetime.datetime.now(datetime.timezone.utc)
              .isoformat(timespec="seconds"), "input": str(folder), "scheme": scheme_obj.name,
              "scheme_source": scheme_obj.source, "target": target, "exclude": list(exclude),
              "calibration": token_text, "files": {}, "copied": []}
    try:
        chain = _Chain(folder, tokens, config, seed)
        for f in files:
            model = model_io.load_model(f)
            feeds, how = chain.feeds_for(f, model)
            del model
            if console is not None and progress:
                console.print(f"[bold]{f.name}[/bold]: calibration on {len(feeds)} samples ({how})")
            rep = compile_model(f, scheme=scheme_obj, output=tmp / f.name, exclude=list(exclude), target=target,
                                verify=verify, progress=progress, console=console, calib_feeds=feeds,
                                calib_label=f"{token_text}; {how}", **compile_kwargs)
            record["files"][f.name] = {"chain": f"{len(feeds)} samples: {how}", **_file_record(rep)}
        for item in sorted(folder.iterdir()):
            if item.suffix == ".onnx" or item.name in skip or item.name == RECORD or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
            record["copied"].append(item.name)
        record["size_before"] = sum(model_io.file_size(folder / n) for n in record["files"])
        record["size_after"] = sum(r["size_after"] for r in record["files"].values())
        (tmp / RECORD).write_text(json.dumps(record, indent=2, default=str))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record["output"] = str(out)
    return record


def _file_record(rep: dict) -> dict:
    ver = rep.get("verification") or {}
    return {"size_before": rep["size_before"], "size_after": rep["size_after"], "calibration": rep["calibration"],
            "roles": rep["roles"], "verification": {k: ver.get(k) for k in ("inputs", "synthesized", "samples", "primary")}
            if ver else None, "notes": rep["notes"]}


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder in place: an existing output is moved aside first, removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qcompiler")
    except PackageNotFoundError:
        return "unknown"


def print_folder_summary(record: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"qcompile: {Path(record['input']).name} -> {record['scheme']}")
    for col in ("file", "size", "verified cosine (mean / min)", "on"):
        table.add_column(col)
    for name, r in record["files"].items():
        v = (r.get("verification") or {})
        p = v.get("primary") or {}
        cos = f"{p['cosine_mean']:.4f} / {p['cosine_min']:.4f} ({p['output']})" if p else "-"
        table.add_row(name, f"{r['size_before'] / 1e6:.2f} -> {r['size_after'] / 1e6:.2f} MB", cos,
                      "SYNTHESIZED" if v.get("synthesized") else (f"{v.get('samples')} held-out chain samples" if v else "-"))
    console.print(table)
    console.print(f"copied: {', '.join(record['copied']) or '-'}; calibration: {record['calibration']}", soft_wrap=True)
