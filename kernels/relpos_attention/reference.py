"""The attention in plain PyTorch, as ESPnet/WeNet write it: the float64 reference of the kernel
and, in the activation dtype, the eager baseline it is benchmarked against.

ESPnet espnet/nets/pytorch_backend/transformer/attention.py, ``RelPositionMultiHeadedAttention``
with the "latest" ``RelPositionalEncoding`` (2T-1 positions, row n = relative position T-1-n)::

    matrix_ac = (q + pos_bias_u) . k^T
    matrix_bd = rel_shift((q + pos_bias_v) . p^T)        # [T, 2T-1] -> [T, T]
    scores    = (matrix_ac + matrix_bd) / sqrt(d_k)      # plain attention: q . k^T / sqrt(d_k)

masked entries filled with the dtype's most negative value, softmax, masked probabilities set to
zero (a row with no key to attend becomes zeros, not NaN), times v. The mask allows key j for
query i when j < length and, with a chunk size, j lies in i's chunk window (WeNet
``subsequent_chunk_mask``). Query rows at or past the length are zeroed here and in the kernel;
ESPnet/WeNet leave them attending the valid keys, and the Conformer never reads them.
"""
from __future__ import annotations

import math

import torch


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """[..., T, 2T-1] -> [..., T, T], ``out[..., i, j] = x[..., i, T-1-i+j]``, by ESPnet's
    pad-and-reshape (Transformer-XL, arXiv:1901.02860 appendix B): prepend a zero column, read
    the [T, 2T] result as [2T, T], drop the first row, read it back as [T, 2T-1], keep T columns.
    """
    t = x.size(-2)
    lead = x.shape[:-2]
    padded = torch.cat([x.new_zeros(*lead, t, 1), x], dim=-1).view(*lead, 2 * t, t)
    return padded[..., 1:, :].reshape(*lead, t, 2 * t - 1)[..., :t]


def attend_mask(lengths: torch.Tensor, t: int, chunk: int = 0, left_chunks: int = -1
                ) -> torch.Tensor:
    """Bool [B, T, T], True where query i may attend key j: j < length, and with ``chunk`` > 0,
    j within i's chunk and the ``left_chunks`` chunks before it (all of them when < 0)."""
    pos = torch.arange(t, device=lengths.device)
    mask = (pos[None, :] < lengths[:, None].long())[:, None, :].expand(-1, t, -1)
    if chunk > 0:
        c = pos // chunk
        start = torch.zeros_like(c) if left_chunks < 0 else ((c - left_chunks) * chunk).clamp(min=0)
        window = (pos[None, :] >= start[:, None]) & (pos[None, :] < ((c + 1) * chunk)[:, None])
        mask = mask & window
    return mask


def position_scores(q: torch.Tensor, p: torch.Tensor, pos_bias_v: torch.Tensor) -> torch.Tensor:
    """matrix_bd = rel_shift((q + v) . p^T), [B, H, T, T], for q [B, T, H, d_k], p [2T-1, H, d_k]."""
    q_v = (q + pos_bias_v).transpose(1, 2)
    return rel_shift(torch.matmul(q_v, p.permute(1, 2, 0)))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor,
              heads: int, p: torch.Tensor | None = None, pos_bias_u: torch.Tensor | None = None,
              pos_bias_v: torch.Tensor | None = None, chunk: int = 0, left_chunks: int = -1,
              legacy: bool = False) -> torch.Tensor:
    """Multi-head attention in q's dtype. q, k, v: [B, T, H*d_k] (the projections' layout);
    p: [2T-1, H*d_k] (``linear_pos`` of the position table) or None for plain attention;
    with ``legacy``, WeNet's un-shifted form: p [T, H*d_k] and matrix_bd = (q + v) . p^T;
    pos_bias_u, pos_bias_v: [H, d_k]; lengths: [B]. Returns [B, T, H*d_k]."""
    b, t, hd = q.shape
    d_k = hd // heads
    qh = q.view(b, t, heads, d_k)
    kh = k.view(b, t, heads, d_k).transpose(1, 2)
    vh = v.view(b, t, heads, d_k).transpose(1, 2)
    if p is None:
        scores = torch.matmul(qh.transpose(1, 2), kh.transpose(-2, -1))
    else:
        matrix_ac = torch.matmul((qh + pos_bias_u).transpose(1, 2), kh.transpose(-2, -1))
        if legacy:
            matrix_bd = torch.matmul((qh + pos_bias_v).transpose(1, 2),
                                     p.view(t, heads, d_k).permute(1, 2, 0))
        else:
            matrix_bd = position_scores(qh, p.view(2 * t - 1, heads, d_k), pos_bias_v)
        scores = matrix_ac + matrix_bd
    scores = scores / math.sqrt(d_k)
    blocked = ~attend_mask(lengths, t, chunk, left_chunks)[:, None]
    scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
    attn = torch.softmax(scores, dim=-1).masked_fill(blocked, 0.0)
    out = torch.matmul(attn, vh).transpose(1, 2).reshape(b, t, hd)
    padded = torch.arange(t, device=q.device)[None, :] >= lengths[:, None].long()
    return out.masked_fill(padded[..., None], 0.0)
