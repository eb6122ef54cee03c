"""Inputs made from a model's own signature, for calibration and verification without user data.

The dims follow the signature: fixed dims are taken as they are; symbolic ones are read by name
(batch, sequence, past sequence, encoder sequence, audio frames, image height and width, and
sums of them such as Optimum's "past_sequence_length + sequence_length"), with sizes from the
model's config.json when one lies beside it (Whisper's 3000 frames, a ViT's image size). The
values follow the names' usual meaning:

- token ids spread over the vocabulary of the embedding table they index; attention masks of ones
  (encoders: some samples padded at the end, so masked pooling is exercised); token_type_ids 0;
  position_ids / cache_position counting on from the past length;
- past_key_values.* (or past_*) with one past length per sample; a model with past runs as a
  generator does: a prompt with an empty past (use_cache_branch false), then a continuation whose
  past is the prompt's own present.* outputs, attention_mask = past + new, use_cache_branch true.
  A model that cannot take an empty past gets random past of the sequence length instead;
- float inputs (encoder_hidden_states, input_features, pixel_values) standard normal of their shape.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx_ir as ir

from qcompiler.errors import CalibrationError

NP_DTYPES = {
    ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16, ir.DataType.DOUBLE: np.float64,
    ir.DataType.INT64: np.int64, ir.DataType.INT32: np.int32, ir.DataType.BOOL: np.bool_,
    ir.DataType.INT8: np.int8, ir.DataType.UINT8: np.uint8, ir.DataType.BFLOAT16: np.float32,
}
_PAST = re.compile(r"(^|[._])past($|[._])|past_key|cache(?!_position)", re.I)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHAPE_OPS = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}


def input_dims(model: ir.Model) -> list[tuple[str, ir.DataType, list]]:
    """(name, dtype, dims) of the model's real inputs; a dim is an int, a symbol string or None."""
    inits = set(model.graph.initializers)
    out = []
    for v in model.graph.inputs:
        if v.name in inits:
            continue
        dims = []
        for d in (v.shape or []):
            if isinstance(d, int):
                dims.append(d)
            else:
                text = getattr(d, "value", None)
                dims.append(text if isinstance(text, str) and text else None)
        out.append((v.name, v.dtype, dims))
    return out


def is_past(name: str) -> bool:
    return bool(_PAST.search(name)) and "mask" not in name.lower() and "branch" not in name.lower()


def has_past(model: ir.Model) -> bool:
    return any(is_past(n) for n, _, _ in input_dims(model))


def present_name(past: str, outputs: list[str]) -> str | None:
    """The output carrying the updated cache of input `past` (present.N.key for past_key_values.N.key)."""
    for cand in (past.replace("past_key_values", "present"), re.sub("past", "present", past, count=1, flags=re.I)):
        if cand in outputs and cand != past:
            return cand
    return None


def read_config(model_path: str | os.PathLike | None) -> dict:
    """config.json beside the model (Optimum and transformers folders), or {}."""
    if model_path is None:
        return {}
    path = Path(model_path)
    path = path / "config.json" if path.is_dir() else path.with_name("config.json")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


class _Sizes:
    """Values of symbolic dims by name; `axis` and `input` give the fallback meaning."""

    def __init__(self, batch: int, seq: int, past: int, enc_seq: int, config: dict):
        self.batch, self.seq, self.past, self.enc = batch, seq, past, enc_seq
        self.config = config
        self.pinned: dict[str, int] = {}

    def symbol(self, sym: str, input_name: str, axis: int, rank: int) -> int:
        """A symbol keeps the value it first got in this feed: one size per name."""
        if sym not in self.pinned:
            self.pinned[sym] = self._symbol(sym, input_name, axis, rank)
        return self.pinned[sym]

    def _symbol(self, sym: str, input_name: str, axis: int, rank: int) -> int:
        s = sym.lower()
        cfg = self.config
        if "batch" in s:
            return self.batch
        if "past" in s:
            return self.past
        if "feature_size" in s or "mel" in s:
            return int(cfg.get("num_mel_bins", 80))
        if "channel" in s:
            return int(cfg.get("num_channels", 3))
        if "height" in s or "width" in s:
            size = cfg.get("image_size", 224)
            return int(size[0] if isinstance(size, (list, tuple)) else size)
        if "encoder" in s and input_name == "input_features":
            return 2 * int(cfg.get("max_source_positions", 1500))
        if "encoder" in s:
            return self.enc
        if input_name == "input_features" and axis == rank - 1:
            return 2 * int(cfg.get("max_source_positions", 1500))
        return self.fallback(input_name, axis, rank)

    def fallback(self, input_name: str, axis: int, rank: int) -> int:
        """An unnamed dim: batch first, past length on a cache's sequence axis, else sequence."""
        if axis == 0:
            return self.batch
        if is_past(input_name) and rank == 4 and axis == 2:
            return self.enc if "encoder" in input_name.lower() or "cross" in input_name.lower() else self.past
        if "attention_mask" in input_name and not input_name.startswith("encoder") and axis == 1:
            return self.past + self.seq
        if input_name.startswith("encoder") or input_name in ("input_features",):
            return self.enc
        return self.seq

    def evaluate(self, dim, input_name: str, axis: int, rank: int) -> int:
        if isinstance(dim, int):
            return dim
        if dim is None:
            return self.fallback(input_name, axis, rank)
        if _IDENT.fullmatch(dim):
            return self.symbol(dim, input_name, axis, rank)
        # An expression of symbols ("past_sequence_length + sequence_length"): + - * // only.
        expr = _IDENT.sub(lambda m: str(self.symbol(m.group(0), input_name, axis, rank)), dim)
        try:
            tree = ast.parse(expr, mode="eval")
            if all(isinstance(n, (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub, ast.Mult,
                                  ast.FloorDiv, ast.Div, ast.UnaryOp, ast.USub)) for n in ast.walk(tree)):
                return int(eval(compile(tree, "<dim>", "eval"), {"__builtins__": {}}))
        except (SyntaxError, ValueError, ZeroDivisionError):
            pass
        return self.fallback(input_name, axis, rank)


def _vocab_sizes(model: ir.Model) -> dict[str, int]:
    """{integer input: rows of the embedding table it indexes} (through casts and reshapes, into
    subgraphs); an input whose table is not found is absent."""
    found: dict[str, int] = {}
    graph_inputs = {v.name: v for v in model.graph.inputs}
    for name, value in graph_inputs.items():
        frontier, seen, rows = [value], set(), []
        while frontier:
            v = frontier.pop()
            if id(v) in seen:
                continue
            seen.add(id(v))
            for node, index in v.uses():
                if node.op_type == "Gather" and index == 1 and node.inputs[0] is not None \
                        and node.inputs[0].const_value is not None and len(node.inputs[0].const_value.shape) == 2:
                    rows.append(int(node.inputs[0].const_value.shape[0]))
                elif node.op_type in _SHAPE_OPS and index == 0:
                    frontier.extend(node.outputs)
        if not rows:
            # Subgraphs read outer values by name: their nodes' inputs are the same Value objects.
            for node in model.graph.all_nodes():
                if node.op_type == "Gather" and len(node.inputs) > 1 and node.inputs[1] is value \
                        and node.inputs[0] is not None and node.inputs[0].const_value is not None:
                    rows.append(int(node.inputs[0].const_value.shape[0]))
        if rows:
            found[name] = min(rows)
    return found


def _largest_table(model: ir.Model) -> int:
    sizes = [int(n.inputs[0].const_value.shape[0]) for n in model.graph.all_nodes()
             if n.op_type == "Gather" and n.inputs and n.inputs[0] is not None and n.inputs[0].const_value is not None
             and len(n.inputs[0].const_value.shape) == 2]
    return max(sizes) if sizes else 100


def _one_feed(specs, sizes: _Sizes, vocab: dict, default_vocab: int, rng, pad_tail: int) -> dict:
    feed = {}
    for name, dtype, dims in specs:
        shape = [sizes.evaluate(d, name, i, len(dims)) for i, d in enumerate(dims)]
        lname = name.lower()
        np_type = NP_DTYPES.get(dtype)
        if np_type is None:
            raise CalibrationError(f"cannot synthesize input '{name}' of type {dtype}; give --calib data")
        if dtype == ir.DataType.BOOL:
            arr = np.full(shape, sizes.past > 0) if "branch" in lname or "use_cache" in lname else np.ones(shape, bool)
        elif np.issubdtype(np_type, np.integer):
            if "mask" in lname:
                arr = np.ones(shape)
                if pad_tail and len(shape) == 2 and shape[1] > pad_tail and not is_past(name):
                    arr[:, shape[1] - pad_tail:] = 0
            elif "type" in lname or "segment" in lname:
                arr = np.zeros(shape)
            elif "position" in lname:
                arr = np.broadcast_to(sizes.past + np.arange(shape[-1]), shape) if shape else np.array(sizes.past)
            else:
                high = vocab.get(name, default_vocab)
                arr = rng.integers(min(4, high - 1), max(high, 2), size=shape)
        else:
            arr = rng.standard_normal(shape)
        feed[name] = np.ascontiguousarray(arr, dtype=np_type)
    return feed


def synthesize(model: ir.Model, samples: int = 16, seq_len: int = 32, seed: int = 0,
               config: dict | None = None, run_prompt: bool = True) -> list[dict[str, np.ndarray]]:
    """`samples` feeds for `model` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    specs = input_dims(model)
    config = config or {}
    vocab = _vocab_sizes(model)
    cfg_vocab = config.get("vocab_size")
    default_vocab = int(cfg_vocab) if isinstance(cfg_vocab, int) and cfg_vocab > 0 else _largest_table(model)
    vocab = {k: min(v, default_vocab) if cfg_vocab else v for k, v in vocab.items()}
    past = any(is_past(n) for n, _, _ in specs)
    pad = not past and any("mask" in n.lower() for n, _, _ in specs)
    if not past:
        return [_one_feed(specs, _Sizes(1, seq_len, 0, seq_len, config), vocab, default_vocab, rng,
                          pad_tail=(seq_len // 4 if pad and i % 2 else 0)) for i in range(samples)]
    new = max(seq_len // 4, 1)
    prompts = [_one_feed(specs, _Sizes(1, seq_len, 0, seq_len, config), vocab, default_vocab, rng, 0)
               for _ in range((samples + 1) // 2)]
    presents = _run_prompts(model, prompts, specs) if run_prompt else None
    if presents is None:   # no empty past: every sample gets a random past of seq_len
        return [_one_feed(specs, _Sizes(1, new, seq_len, seq_len, config), vocab, default_vocab, rng, 0)
                for _ in range(samples)]
    conts = []
    for prompt, present in zip(prompts[: samples - len(prompts)], presents):
        cont = _one_feed(specs, _Sizes(1, new, seq_len, seq_len, config), vocab, default_vocab, rng, 0)
        for name, value in present.items():
            cont[name] = value
        for name in cont:   # inputs the continuation shares with its prompt (the encoder's side)
            if name.startswith("encoder") and name in prompt and cont[name].shape == prompt[name].shape:
                cont[name] = prompt[name]
        conts.append(cont)
    return prompts + conts       # equal shapes together: calibration runs them as batches


def _run_prompts(model: ir.Model, prompts: list[dict], specs) -> list[dict] | None:
    """Each prompt's present.* outputs keyed by the past input they feed; None when the model does
    not run with an empty past or names its cache outputs in a way we cannot pair."""
    from qcompiler.calibration import session_with_taps

    try:
        session = session_with_taps(model, [])
    except Exception:
        return None
    outputs = [o.name for o in session.get_outputs()]
    # A cache input without a present output (the cross-attention past of a decoder-with-past
    # file) keeps its prompt's value.
    pairs = {name: out for name, _, _ in specs if is_past(name) and (out := present_name(name, outputs))}
    if not pairs:
        return None
    results = []
    for prompt in prompts:
        try:
            values = dict(zip(outputs, session.run(outputs, prompt)))
        except Exception:
            return None
        carried = {name: prompt[name] for name, _, _ in specs if is_past(name) and name not in pairs}
        results.append({**carried, **{past: np.ascontiguousarray(values[out]) for past, out in pairs.items()}})
    return results
