"""Translate with the exported encoder + decoder-with-past in onnxruntime: greedy or beam search.

Works on the FP32 export and on every compiled pair (sessions come from qcompiler.bench.session,
which registers the qcompiler op library). Batch 1: one sentence at a time, as on a device.
"""

from __future__ import annotations

import numpy as np

from models.mt.tokenizer import BOS, EOS


class OnnxTranslator:
    """Encoder and decoder sessions plus the decoding loops; `max_len` bounds the output tokens."""

    def __init__(self, encoder_path: str, decoder_path: str, threads: int = 1, max_len: int = 64):
        from qcompiler.bench import session

        self.encoder = session(str(encoder_path), threads)
        self.decoder = session(str(decoder_path), threads)
        self.max_len = max_len
        self.cross_names = [o.name for o in self.encoder.get_outputs()]
        self.past_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_")]
        self.present_names = [o.name for o in self.decoder.get_outputs() if o.name.startswith("present_")]
        past = next(i for i in self.decoder.get_inputs() if i.name.startswith("past_"))
        self.heads, self.head_dim = int(past.shape[1]), int(past.shape[3])

    def encode(self, src_ids: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ids = np.asarray([src_ids + [EOS]], dtype=np.int64)
        mask = np.ones_like(ids)
        return mask, dict(zip(self.cross_names, self.encoder.run(self.cross_names, {"input_ids": ids, "attention_mask": mask})))

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        z = np.zeros((batch, self.heads, 0, self.head_dim), np.float32)
        return {name: z for name in self.past_names}

    def step(self, ids: np.ndarray, mask: np.ndarray, cross: dict, past: dict) -> tuple[np.ndarray, dict]:
        """Logits of the last new token [B,V] and the presents renamed as the next past."""
        outs = self.decoder.run(None, {"input_ids": ids, "encoder_attention_mask": mask, **cross, **past})
        presents = dict(zip(self.past_names, outs[1:]))
        return outs[0][:, -1, :], presents

    def greedy(self, src_ids: list[int]) -> list[int]:
        mask, cross = self.encode(src_ids)
        past, token, out = self.empty_past(1), BOS, []
        for _ in range(self.max_len):
            logits, past = self.step(np.array([[token]], np.int64), mask, cross, past)
            token = int(logits[0].argmax())
            if token == EOS:
                break
            out.append(token)
        return out

    def greedy_full(self, src_ids: list[int]) -> list[int]:
        """Greedy without the cache: every step re-runs the decoder over the whole prefix (the reference)."""
        mask, cross = self.encode(src_ids)
        prefix = [BOS]
        for _ in range(self.max_len):
            logits, _ = self.step(np.array([prefix], np.int64), mask, cross, self.empty_past(1))
            token = int(logits[0].argmax())
            if token == EOS:
                break
            prefix.append(token)
        return prefix[1:]

    def beam(self, src_ids: list[int], width: int = 4, length_penalty: float = 1.0) -> list[int]:
        """Beam search (beams are the batch axis). A hypothesis ending in EOS among the step's top
        `width` candidates is finished, scored by logprob / (tokens incl. EOS) ** length_penalty;
        search ends when `width` are finished and no open beam scores better (as in HF generate)."""
        if width <= 1:
            return self.greedy(src_ids)
        mask, cross = self.encode(src_ids)
        beams: list[tuple[list[int], float]] = [([], 0.0)]
        past = self.empty_past(1)
        finished: list[tuple[float, list[int]]] = []
        for step in range(1, self.max_len + 1):
            k = len(beams)
            ids = np.array([[b[-1] if b else BOS] for b, _ in beams], np.int64)
            rep = {n: np.repeat(v[:1], k, axis=0) for n, v in cross.items()}
            logits, past = self.step(ids, np.repeat(mask, k, axis=0), rep, past)
            logp = logits - logits.max(1, keepdims=True)
            logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
            scores = np.array([s for _, s in beams])[:, None] + logp
            next_beams, rows = [], []
            for rank, flat in enumerate(np.argsort(scores, axis=None)[::-1][: 2 * width]):
                row, tok = divmod(int(flat), scores.shape[1])
                seq, score = beams[row][0], float(scores[row, tok])
                if tok == EOS:
                    if rank < width:
                        finished.append((score / (len(seq) + 1) ** length_penalty, seq))
                elif len(next_beams) < width:
                    next_beams.append((seq + [tok], score))
                    rows.append(row)
            if not next_beams:
                break
            if len(finished) >= width:
                best_open = max(sc for _, sc in next_beams) / (step + 1) ** length_penalty
                if sorted(f[0] for f in finished)[-width] >= best_open:
                    break
            beams = next_beams
            past = {n: v[rows] for n, v in past.items()}
        if not finished:
            finished = [(sc / (len(b) + 1) ** length_penalty, b) for b, sc in beams]
        return max(finished, key=lambda f: f[0])[1]

    def translate(self, src_ids: list[int], beam: int = 1) -> list[int]:
        return self.greedy(src_ids) if beam <= 1 else self.beam(src_ids, beam)
