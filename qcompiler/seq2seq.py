"""Translate with an exported encoder-decoder folder in onnxruntime: greedy or beam search, batch 1.

The folder is the standard (Optimum) layout: encoder_model.onnx (input_ids, attention_mask ->
last_hidden_state), and either decoder_model.onnx (first step: -> logits + presents of self- and
cross-attention) with decoder_with_past_model.onnx (later steps: past_key_values.* -> logits +
self-attention presents), or decoder_model_merged.onnx (both behind use_cache_branch). config.json
gives the decoder start, EOS and pad ids; at most max_len tokens come out, EOS included. Any file of the folder may be a compiled one: sessions
register the qcompiler op library. The search is the one transformers' generate does (log-softmax
scores, the pad token banned, beams finished on EOS among the top `width`, length penalty 1, the
search stops when no open beam can beat the worst finished one), so the two agree on FP32.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENCODER = "encoder_model.onnx"
DECODER = "decoder_model.onnx"
DECODER_WITH_PAST = "decoder_with_past_model.onnx"
DECODER_MERGED = "decoder_model_merged.onnx"


@dataclass
class Seq2SeqFiles:
    """The ONNX files of one model: encoder, plus first-step + with-past decoders or one merged decoder."""

    encoder: str
    decoder: str | None = None
    decoder_with_past: str | None = None
    decoder_merged: str | None = None

    @classmethod
    def in_folder(cls, folder: str | Path, prefer_merged: bool = False) -> "Seq2SeqFiles":
        folder = Path(folder)
        has = lambda n: (folder / n).is_file()  # noqa: E731
        if not has(ENCODER):
            raise FileNotFoundError(f"{folder} has no {ENCODER}")
        split = has(DECODER) and has(DECODER_WITH_PAST)
        if has(DECODER_MERGED) and (prefer_merged or not split):
            return cls(str(folder / ENCODER), decoder_merged=str(folder / DECODER_MERGED))
        if split:
            return cls(str(folder / ENCODER), str(folder / DECODER), str(folder / DECODER_WITH_PAST))
        raise FileNotFoundError(f"{folder} has neither {DECODER} + {DECODER_WITH_PAST} nor {DECODER_MERGED}")

    def paths(self) -> list[str]:
        return [p for p in (self.encoder, self.decoder, self.decoder_with_past, self.decoder_merged) if p]


def special_ids(folder: str | Path) -> dict[str, int]:
    """decoder_start / eos / pad token ids from the folder's config.json (transformers' names)."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    start = cfg.get("decoder_start_token_id")
    start = cfg.get("pad_token_id") if start is None else start
    return {"start": int(start), "eos": int(cfg["eos_token_id"]), "pad": int(cfg.get("pad_token_id", -1))}


def _top_k_stable(x: np.ndarray, k: int) -> np.ndarray:
    """The first k of np.argsort(-x, kind="stable") (ties in index order) without sorting all of x:
    a full sort of beams x vocabulary per step took most of beam search's time."""
    if x.size <= 64:
        return np.argsort(-x, kind="stable")[:k]
    if x.size > k:
        thresh = x[np.argpartition(-x, k - 1)[:k]].min()
        cand = np.flatnonzero(x >= thresh)  # every tie of the k-th value, in index order
    else:
        cand = np.arange(x.size)
    return cand[np.argsort(-x[cand], kind="stable")][:k]


def _beam_candidates(logits: np.ndarray, beam_scores: np.ndarray, k: int, pad: int = -1,
                     margins: tuple[float, ...] = (3.0, 8.0, 20.0)) -> tuple[np.ndarray, np.ndarray]:
    """The k best (flat index into [B, V], score) of beam_scores[:, None] + log_softmax(logits), pad
    banned, ties in flat-index order: exactly what _top_k_stable of the full score matrix gives.

    Only entries whose logit lies within a margin of the best score are scored: an entry below that
    line cannot reach the k-th best once k candidates clear it (the line carries a 1e-3 slack for
    float rounding). Wider margins are tried in turn; fewer than k candidates at the widest falls
    back to the full matrix. Scoring and a top-k of beams x vocabulary per step were most of beam
    search's time in Python."""
    vocab = logits.shape[1]
    m = logits.max(1)
    logsum = np.log(np.exp(logits - m[:, None]).sum(1))
    top = beam_scores - logsum  # each row's best score (its max logit scores m - m = 0)
    flat_logits = logits.ravel()
    for margin in margins:
        line = top.max() - margin
        thresholds = (m + (line - top) - 1e-3).astype(np.float32)
        flat = np.flatnonzero(logits >= thresholds[:, None])
        if pad >= 0:
            flat = flat[flat % vocab != pad]
        if len(flat) < k:
            continue
        rows = flat // vocab
        scores = beam_scores[rows] + ((flat_logits[flat] - m[rows]) - logsum[rows])
        if np.count_nonzero(scores >= line) >= k:
            pick = _top_k_stable(scores, k)
            return flat[pick], scores[pick]
    full = beam_scores[:, None] + ((logits - m[:, None]) - logsum[:, None])
    if pad >= 0:
        full[:, pad] = -np.inf
    flat = _top_k_stable(full.ravel(), k)
    return flat, full.ravel()[flat]


class Seq2SeqTranslator:
    """Sessions on the files and the decoding loops; token ids in, token ids out (without specials)."""

    def __init__(self, files: Seq2SeqFiles, start: int, eos: int, pad: int = -1, threads: int = 1, max_len: int = 96):
        from qcompiler.bench import session

        self.encoder = session(files.encoder, threads)
        self.merged = files.decoder_merged is not None
        if self.merged:
            self.first = self.later = session(files.decoder_merged, threads)
        else:
            self.first = session(files.decoder, threads)
            self.later = session(files.decoder_with_past, threads)
        self.start, self.eos, self.pad, self.max_len = start, eos, pad, max_len
        self.past_names = [i.name for i in self.later.get_inputs() if i.name.startswith("past_key_values.")]
        # a later step returns the logits and the self-attention presents (a merged decoder also
        # passes the cross-attention cache through: not asked for)
        names = [o.name for o in self.later.get_outputs()]
        self.later_outputs = names[:1] + [n for n in names[1:] if ".decoder." in n]
        self.later_cache_names = [self._past_name(n) for n in self.later_outputs[1:]]
        self.first_outputs = [o.name for o in self.first.get_outputs()]
        past = next(i for i in self.later.get_inputs() if i.name.startswith("past_key_values."))
        self.heads, self.head_dim = int(past.shape[1]), int(past.shape[3])

    def _encode(self, src_ids: list[int]):
        ids = np.asarray([src_ids], dtype=np.int64)
        mask = np.ones_like(ids)
        hidden = self.encoder.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
        return mask, hidden

    @staticmethod
    def _past_name(present: str) -> str:
        return "past_key_values." + present[len("present."):]

    def _first_step(self, mask, hidden, batch: int):
        """Logits [B,V] of the start token, the self-attention cache and the cross-attention cache,
        both under past_key_values.* names."""
        feeds = {"input_ids": np.full((batch, 1), self.start, np.int64),
                 "encoder_attention_mask": np.repeat(mask, batch, 0), "encoder_hidden_states": np.repeat(hidden, batch, 0)}
        if self.merged:
            z = np.zeros((batch, self.heads, 1, self.head_dim), np.float32)
            feeds.update({n: z for n in self.past_names})
            feeds["use_cache_branch"] = np.array([False])
        outs = self.first.run(self.first_outputs, feeds)
        cache = {self._past_name(n): v for n, v in zip(self.first_outputs[1:], outs[1:])}
        cross = {n: v for n, v in cache.items() if ".encoder." in n}
        return outs[0][:, -1, :], {n: v for n, v in cache.items() if n not in cross}, cross

    def _step_feeds(self, mask, hidden, cross: dict, batch: int) -> dict:
        """The inputs of a later step that depend only on the source and the batch size: every beam
        has the same cross-attention cache (the first step's, at batch 1)."""
        feeds = {"encoder_attention_mask": np.repeat(mask, batch, 0),
                 **{n: v if batch == 1 else np.repeat(v, batch, 0) for n, v in cross.items()}}
        if self.merged:
            feeds["encoder_hidden_states"] = np.repeat(hidden, batch, 0)
            feeds["use_cache_branch"] = np.array([True])
        return feeds

    def _step(self, tokens: np.ndarray, fixed: dict, cache: dict):
        """One later step; fixed is _step_feeds for len(tokens). Returns logits [B,V] and the
        self-attention cache (the cross-attention cache stays as the first step made it)."""
        outs = self.later.run(self.later_outputs, {"input_ids": tokens[:, None], **fixed, **cache})
        return outs[0][:, -1, :], dict(zip(self.later_cache_names, outs[1:]))

    def _greedy_token(self, logits: np.ndarray, last: bool) -> int:
        """The argmax of the raw logits (what transformers' greedy search takes: the log-softmax is
        monotone, so it is not computed), pad banned, EOS at the last position of max_len."""
        if last:
            return self.eos
        row = logits[0]
        token = int(row.argmax())
        if token == self.pad >= 0:  # only then can banning the pad change the argmax
            row = row.copy()
            row[self.pad] = -np.inf
            token = int(row.argmax())
        return token

    def greedy(self, src_ids: list[int]) -> list[int]:
        mask, hidden = self._encode(src_ids)
        logits, cache, cross = self._first_step(mask, hidden, 1)
        fixed = self._step_feeds(mask, hidden, cross, 1)
        out = []
        for step in range(self.max_len):
            token = self._greedy_token(logits, last=step + 1 == self.max_len)
            if token == self.eos:
                break
            out.append(token)
            logits, cache = self._step(np.array([token], np.int64), fixed, cache)
        return out

    def beam(self, src_ids: list[int], width: int = 4, length_penalty: float = 1.0) -> list[int]:
        """Beam search, beams on the batch axis. A hypothesis is scored sum(logp) / length ** length_penalty,
        the length counting its tokens and the EOS (transformers' BeamHypotheses with the start token)."""
        if width <= 1:
            return self.greedy(src_ids)
        mask, hidden = self._encode(src_ids)
        logits, cache, cross = self._first_step(mask, hidden, 1)
        fixed: dict[int, dict] = {}  # _step_feeds per beam count
        beams: list[tuple[list[int], float]] = [([], 0.0)]
        finished: list[tuple[float, list[int]]] = []
        for step in range(1, self.max_len + 1):
            beam_scores = np.array([s for _, s in beams])
            vocab = logits.shape[1]
            if step == self.max_len:  # EOS forced (transformers' logits processor): each beam ends, best first
                order = np.argsort(-beam_scores, kind="stable")
                flats, flat_scores = order * vocab + self.eos, beam_scores[order]
            else:
                flats, flat_scores = _beam_candidates(logits.astype(np.float32, copy=False), beam_scores,
                                                      2 * width, self.pad)
            next_beams, rows = [], []
            for rank, (flat, score) in enumerate(zip(flats.tolist(), flat_scores.tolist())):
                row, tok = divmod(flat, vocab)
                seq = beams[row][0]
                if not math.isfinite(score):
                    break
                if tok == self.eos:
                    if rank < width:
                        finished.append((score / (len(seq) + 1) ** length_penalty, seq))
                elif len(next_beams) < width:
                    next_beams.append((seq + [tok], score))
                    rows.append(row)
            if not next_beams:
                break
            if len(finished) >= width:
                # transformers' heuristic (early_stopping False): the best open beam at its current
                # length (step tokens), against the width-th best finished hypothesis
                best_open = max(sc for _, sc in next_beams) / step ** length_penalty
                if sorted(f[0] for f in finished)[-width] >= best_open:
                    break
            if rows != list(range(len(beams))):  # beams reordered or their number changed
                cache = {n: v[rows] for n, v in cache.items()}
            beams = next_beams
            if len(beams) not in fixed:
                fixed[len(beams)] = self._step_feeds(mask, hidden, cross, len(beams))
            logits, cache = self._step(np.array([b[-1] for b, _ in beams], np.int64), fixed[len(beams)], cache)
        if not finished:
            finished = [(sc / (len(b) + 1) ** length_penalty, b) for b, sc in (next_beams or beams)]
        return max(finished, key=lambda f: f[0])[1]

    def translate(self, src_ids: list[int], beam: int = 1) -> list[int]:
        return self.greedy(src_ids) if beam <= 1 else self.beam(src_ids, beam)
