"""Unlabeled variants of the calibration samples for distillation (in the spirit of TernaryBERT's /
TinyBERT's data augmentation: the teacher labels any input, so variants are free training data).

Each variant of a sample [CLS] t1 .. tn [SEP] (the first and last unpadded tokens are kept as they
are) is one of:
- token replacement: each inner token replaced with probability `replace` by a token drawn from the
  calibration data's own token distribution, smoothed with the uniform one over the ids it uses;
- truncation: the first k inner tokens (k uniform in [1, n-1]), then the closing token;
- concatenation: the inner tokens of this sample then of another, cut to the padded length.
Deterministic under `seed`; shapes stay [1, S]; other inputs (token_type_ids, positions) follow
the new length (the mask: ones over it; a constant row such as token_type_ids: that constant over it;
position ids 0..S-1: kept).
"""

from __future__ import annotations

import numpy as np

__all__ = ["augment", "ids_input"]


def ids_input(feeds: list[dict[str, np.ndarray]]) -> tuple[str | None, str | None]:
    """(token ids input, attention mask input) by name, or None where there is none."""
    names = list(feeds[0]) if feeds else []
    ids = next((n for n in names if "input_ids" in n.lower() and feeds[0][n].ndim == 2), None)
    mask = next((n for n in names if "attention_mask" in n.lower() and feeds[0][n].ndim == 2), None)
    return ids, mask


def _token_distribution(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    inner = np.concatenate([r[1:-1] for r in rows if len(r) > 2]) if rows else np.zeros(0, np.int64)
    if not len(inner):
        return np.zeros(0, np.int64), np.zeros(0)
    values, counts = np.unique(inner, return_counts=True)
    p = counts / counts.sum()
    return values, 0.5 * p + 0.5 / len(values)


def _rebuild(template: dict[str, np.ndarray], ids_name: str, mask_name: str | None, tokens: np.ndarray,
             pad_id: int) -> dict[str, np.ndarray]:
    seq = template[ids_name].shape[1]
    n = min(len(tokens), seq)
    out = {}
    for name, value in template.items():
        if value.ndim != 2 or value.shape[1] != seq:
            out[name] = value.copy()
            continue
        row = np.zeros(seq, value.dtype)
        if name == ids_name:
            row[:] = pad_id
            row[:n] = tokens[:n]
        elif name == mask_name:
            row[:n] = 1
        elif np.array_equal(value[0], np.arange(seq)):      # position ids
            row = np.arange(seq, dtype=value.dtype)
        elif np.all(value[0] == value[0, 0]):                # e.g. token_type_ids, all one segment
            row[:n] = value[0, 0]
        else:
            row = value[0].copy()
        out[name] = row[None, :]
    return out


def augment(feeds: list[dict[str, np.ndarray]], variants: int, seed: int = 0, replace: float = 0.15
            ) -> list[dict[str, np.ndarray]]:
    """`variants` new samples per sample of `feeds` (the originals not included); [] when the samples
    have no token ids input (then there is nothing to vary)."""
    ids_name, mask_name = ids_input(feeds)
    if not feeds or variants <= 0 or ids_name is None:
        return []
    rng = np.random.default_rng(seed)
    rows = []
    for f in feeds:
        ids = f[ids_name][0]
        length = int(f[mask_name][0].sum()) if mask_name else len(ids)
        rows.append(ids[:length])
    pad_id = int(feeds[0][ids_name][0][-1]) if mask_name and feeds[0][mask_name][0][-1] == 0 else 0
    values, p = _token_distribution(rows)
    out = []
    for i, f in enumerate(feeds):
        row = rows[i]
        for _ in range(variants):
            kind = rng.integers(3) if len(row) > 3 else 0
            if len(row) <= 2 or not len(values):
                tokens = row.copy()
            elif kind == 0:
                tokens = row.copy()
                hit = rng.random(len(row) - 2) < replace
                tokens[1:-1][hit] = rng.choice(values, size=int(hit.sum()), p=p)
            elif kind == 1:
                k = int(rng.integers(1, len(row) - 2)) if len(row) > 3 else 1
                tokens = np.concatenate([row[:1 + k], row[-1:]])
            else:
                other = rows[int(rng.integers(len(rows)))]
                seq = f[ids_name].shape[1]
                body = np.concatenate([row[1:-1], other[1:-1]])[:max(seq - 2, 0)]
                tokens = np.concatenate([row[:1], body, row[-1:]])
            out.append(_rebuild(f, ids_name, mask_name, tokens, pad_id))
    return out
