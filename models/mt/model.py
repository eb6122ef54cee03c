"""A Marian-style encoder-decoder transformer in torch (pre-LN, ReLU FFN, sinusoidal positions,
one embedding table tied between encoder, decoder and the output projection).

The decoder is written for incremental decoding: it takes the self-attention keys/values of
the tokens already decoded (`past`, possibly empty) and the cross-attention keys/values of the
source (computed once from the encoder output), and returns logits for the new tokens plus the
extended keys/values. Training runs it with an empty past over the whole target.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

NEG = -1e9  # additive mask value: exp() underflows to exactly 0 in fp32


@dataclasses.dataclass(frozen=True)
class MTConfig:
    vocab_size: int
    d_model: int = 192
    heads: int = 4
    ffn: int = 768
    encoder_layers: int = 3
    decoder_layers: int = 3
    max_positions: int = 128
    dropout: float = 0.05

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads


def sinusoidal_table(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(1, 2)


def _attend(q, k, v, bias, dropout: float, training: bool) -> torch.Tensor:
    """q [B,H,T,dh], k/v [B,H,S,dh], bias broadcastable to [B,H,T,S] -> [B,T,H*dh]."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])) + bias
    probs = F.dropout(torch.softmax(scores, dim=-1), dropout, training)
    out = torch.matmul(probs, v).transpose(1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1)


class SelfAttention(nn.Module):
    def __init__(self, cfg: MTConfig):
        super().__init__()
        self.cfg = cfg
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.d_model, cfg.d_model) for _ in range(4))

    def forward(self, x, bias, past_k=None, past_v=None):
        h = self.cfg.heads
        q, k, v = _split_heads(self.q(x), h), _split_heads(self.k(x), h), _split_heads(self.v(x), h)
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        return self.o(_attend(q, k, v, bias, self.cfg.dropout, self.training)), k, v


class CrossAttention(nn.Module):
    """Queries from the decoder; keys/values projected once from the encoder output (`project`)."""

    def __init__(self, cfg: MTConfig):
        super().__init__()
        self.cfg = cfg
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.d_model, cfg.d_model) for _ in range(4))

    def project(self, memory):
        return _split_heads(self.k(memory), self.cfg.heads), _split_heads(self.v(memory), self.cfg.heads)

    def forward(self, x, k, v, bias):
        q = _split_heads(self.q(x), self.cfg.heads)
        return self.o(_attend(q, k, v, bias, self.cfg.dropout, self.training))


class FFN(nn.Module):
    def __init__(self, cfg: MTConfig):
        super().__init__()
        self.up, self.down, self.p = nn.Linear(cfg.d_model, cfg.ffn), nn.Linear(cfg.ffn, cfg.d_model), cfg.dropout

    def forward(self, x):
        return self.down(F.dropout(F.relu(self.up(x)), self.p, self.training))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: MTConfig):
        super().__init__()
        self.ln1, self.attn, self.ln2, self.ffn = nn.LayerNorm(cfg.d_model), SelfAttention(cfg), nn.LayerNorm(cfg.d_model), FFN(cfg)
        self.p = cfg.dropout

    def forward(self, x, bias):
        x = x + F.dropout(self.attn(self.ln1(x), bias)[0], self.p, self.training)
        return x + F.dropout(self.ffn(self.ln2(x)), self.p, self.training)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MTConfig):
        super().__init__()
        self.ln1, self.self_attn = nn.LayerNorm(cfg.d_model), SelfAttention(cfg)
        self.ln2, self.cross = nn.LayerNorm(cfg.d_model), CrossAttention(cfg)
        self.ln3, self.ffn = nn.LayerNorm(cfg.d_model), FFN(cfg)
        self.p = cfg.dropout

    def forward(self, x, self_bias, cross_k, cross_v, cross_bias, past_k, past_v):
        a, k, v = self.self_attn(self.ln1(x), self_bias, past_k, past_v)
        x = x + F.dropout(a, self.p, self.training)
        x = x + F.dropout(self.cross(self.ln2(x), cross_k, cross_v, cross_bias), self.p, self.training)
        return x + F.dropout(self.ffn(self.ln3(x)), self.p, self.training), k, v


class MarianMT(nn.Module):
    def __init__(self, cfg: MTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)
        self.register_buffer("positions", sinusoidal_table(cfg.max_positions, cfg.d_model), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_ln = nn.LayerNorm(cfg.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_ln = nn.LayerNorm(cfg.d_model)

    def _embed(self, ids, start):
        pos = start + torch.arange(ids.shape[1], device=ids.device)
        return self.embed(ids) * math.sqrt(self.cfg.d_model) + self.positions[pos]

    @staticmethod
    def key_bias(mask):
        """[B,S] 1/0 mask -> additive bias [B,1,1,S]."""
        return (1.0 - mask[:, None, None, :].to(torch.float32)) * NEG

    def encode(self, src_ids, src_mask):
        """Source ids -> per decoder layer (cross key, cross value), each [B,H,S,dh]."""
        x = F.dropout(self._embed(src_ids, 0), self.cfg.dropout, self.training)
        bias = self.key_bias(src_mask)
        for layer in self.encoder:
            x = layer(x, bias)
        memory = self.encoder_ln(x)
        return [layer.cross.project(memory) for layer in self.decoder]

    def decode(self, ids, src_mask, cross, past):
        """New target ids [B,T] after `past` (list of (k, v) [B,H,P,dh]) -> logits [B,T,V], presents."""
        p, t = past[0][0].shape[2], ids.shape[1]
        x = F.dropout(self._embed(ids, p), self.cfg.dropout, self.training)
        q_pos = p + torch.arange(t, device=ids.device)
        k_pos = torch.arange(p + t, device=ids.device)
        self_bias = (k_pos[None, :] > q_pos[:, None]).to(torch.float32) * NEG
        cross_bias = self.key_bias(src_mask)
        presents = []
        for layer, (ck, cv), (pk, pv) in zip(self.decoder, cross, past):
            x, k, v = layer(x, self_bias, ck, cv, cross_bias, pk, pv)
            presents.append((k, v))
        return F.linear(self.decoder_ln(x), self.embed.weight), presents

    def empty_past(self, batch: int):
        z = torch.zeros(batch, self.cfg.heads, 0, self.cfg.head_dim)
        return [(z, z) for _ in range(self.cfg.decoder_layers)]

    def forward(self, src_ids, src_mask, tgt_in):
        """Teacher-forced logits for training."""
        cross = self.encode(src_ids, src_mask)
        return self.decode(tgt_in, src_mask, cross, self.empty_past(src_ids.shape[0]))[0]
