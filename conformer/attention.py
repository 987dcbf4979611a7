"""Multi-head self-attention: plain (``abs``) and Transformer-XL relative-position (``rel``,
``rel_legacy``), as modules and as a standalone functional reference for kernel tests.

Score semantics (WeNet wenet/transformer/attention.py, ESPnet
espnet/nets/pytorch_backend/transformer/attention.py ``RelPositionMultiHeadedAttention``)::

    matrix_ac[i, j] = (q_i + pos_bias_u) . k_j
    matrix_bd[i, j] = (q_i + pos_bias_v) . p[T-1-i+j]   # "rel": rel_shift of a [T, 2T-1] product
                    = (q_i + pos_bias_v) . p[j]         # "rel_legacy" (WeNet: no rel_shift)
    scores = (matrix_ac + matrix_bd) / sqrt(d_k)        # "abs": scores = q_i . k_j / sqrt(d_k)

then masked entries are filled with the dtype's most negative value (ESPnet; WeNet uses -inf,
same result), softmax in float32 (WeNet), masked entries set to 0 after the softmax so a row
with no attendable key is all zeros instead of uniform or NaN, then ``attn @ v`` and the
output projection.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .masks import attention_mask


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """[..., T, 2T-1] → [..., T, T] with ``out[..., i, j] = x[..., i, T-1-i+j]``.

    The pad-and-reshape trick of ESPnet's ``RelPositionMultiHeadedAttention.rel_shift``
    (Transformer-XL, arXiv:1901.02860 appendix B): prepend a zero column, view the
    [T, 2T] result as [2T, T], drop its first row, view back as [T, 2T-1], keep T columns.
    """
    if x.dim() < 2 or x.size(-1) != 2 * x.size(-2) - 1:
        raise ValueError(f"rel_shift needs [..., T, 2T-1], got shape {tuple(x.shape)}")
    t = x.size(-2)
    lead = x.shape[:-2]
    zero_pad = x.new_zeros(*lead, t, 1)
    padded = torch.cat([zero_pad, x], dim=-1).reshape(*lead, 2 * t, t)
    return padded[..., 1:, :].reshape(*lead, t, 2 * t - 1)[..., :t]


def _softmax_attend(scores: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked float32 softmax over keys, masked weights zeroed, times v ([B, H, T, d_k])."""
    blocked = ~mask.unsqueeze(1)                                   # [B, 1, 1 or T, T]
    scores = scores.float().masked_fill(blocked, torch.finfo(torch.float32).min)
    attn = torch.softmax(scores, dim=-1).masked_fill(blocked, 0.0)
    return torch.matmul(attn.to(v.dtype), v)


class MultiHeadedAttention(nn.Module):
    """Plain multi-head self-attention (``pos_enc="abs"``): torchaudio's
    nn.MultiheadAttention and WeNet's ``MultiHeadedAttention``, with WeNet's parameter names
    ``linear_q``, ``linear_k``, ``linear_v``, ``linear_out``."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.h = num_heads
        self.d_k = d_model // num_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] → [B, H, T, d_k]."""
        return x.view(x.size(0), x.size(1), self.h, self.d_k).transpose(1, 2)

    def _output(self, context: torch.Tensor) -> torch.Tensor:
        """[B, H, T, d_k] → out-projected [B, T, d]."""
        b, _, t, _ = context.shape
        return self.linear_out(context.transpose(1, 2).reshape(b, t, self.h * self.d_k))

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                pos_emb: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, d]; mask bool [B, 1 or T, T], True = may attend; pos_emb unused."""
        q = self._heads(self.linear_q(x))
        k = self._heads(self.linear_k(x))
        v = self._heads(self.linear_v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self._output(_softmax_attend(scores, v, mask))


class RelPositionMultiHeadedAttention(MultiHeadedAttention):
    """Relative-position self-attention with ``linear_pos`` (no bias) and learned
    ``pos_bias_u``/``pos_bias_v`` [H, d_k], WeNet/ESPnet parameter names.

    ``legacy=False`` ("rel"): pos_emb is [2T-1, d] from ``rel_pos_table`` and matrix_bd goes
    through ``rel_shift`` (ESPnet). ``legacy=True`` ("rel_legacy"): pos_emb is [T, d] from
    ``abs_pos_table`` and there is no shift (WeNet).
    """

    def __init__(self, d_model: int, num_heads: int, legacy: bool):
        super().__init__(d_model, num_heads)
        self.legacy = legacy
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                pos_emb: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, d]; mask bool [B, 1 or T, T]; pos_emb [2T-1, d] ("rel") or [T, d]."""
        t = x.size(1)
        want = t if self.legacy else 2 * t - 1
        if pos_emb is None or pos_emb.dim() != 2 or pos_emb.size(0) != want:
            raise ValueError(f"pos_emb must be [{want}, d] for T={t} "
                             f"({'rel_legacy' if self.legacy else 'rel'}), got "
                             f"{None if pos_emb is None else tuple(pos_emb.shape)}")
        q = self.linear_q(x).view(x.size(0), t, self.h, self.d_k)
        k = self._heads(self.linear_k(x))
        v = self._heads(self.linear_v(x))
        p = self.linear_pos(pos_emb).view(-1, self.h, self.d_k).transpose(0, 1)  # [H, P, d_k]
        q_u = (q + self.pos_bias_u).transpose(1, 2)                              # [B, H, T, d_k]
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        matrix_ac = torch.matmul(q_u, k.transpose(-2, -1))
        matrix_bd = torch.matmul(q_v, p.transpose(-2, -1))
        if not self.legacy:
            matrix_bd = rel_shift(matrix_bd)
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        return self._output(_softmax_attend(scores, v, mask))


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def rel_pos_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                p: torch.Tensor, pos_bias_u: torch.Tensor,
                                pos_bias_v: torch.Tensor, lengths: torch.Tensor,
                                chunk_size: int | None = None,
                                num_left_chunks: int = -1) -> torch.Tensor:
    """Relative-position attention context, before the output projection.

    Works in the layout the projections produce: ``q``, ``k``, ``v`` are [B, T, H, d_k]
    (a view of ``linear_q(x)`` etc. of shape [B, T, H*d_k]); ``p`` is ``linear_pos(pos_emb)``
    as [P, H, d_k] or [1 or B, P, H, d_k] with P = 2T-1 for "rel" (row n is relative position
    T-1-n) or P = T for "rel_legacy"; ``pos_bias_u``/``pos_bias_v`` are [H, d_k].
    Masking is ``attention_mask(lengths, T, chunk_size, num_left_chunks)``.

    Returns the context [B, T, H, d_k] in q's dtype; computed in float64 for float64 inputs and
    float32 otherwise. matrix_bd is gathered with the explicit index T-1-i+j rather than with
    ``rel_shift``, so this is an independent check of the module.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be [B, T, H, d_k], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, t, h, d_k = q.shape
    if p.dim() == 3:
        p = p.unsqueeze(0)
    if p.dim() != 4 or p.size(0) not in (1, b) or p.shape[2:] != (h, d_k):
        raise ValueError(f"p must be [P, {h}, {d_k}] or [1 or {b}, P, {h}, {d_k}], "
                         f"got {tuple(p.shape)}")
    if p.size(1) not in (t, 2 * t - 1):
        raise ValueError(f"p has {p.size(1)} positions; T={t} needs {2 * t - 1} (rel) or "
                         f"{t} (rel_legacy)")
    for name, bias in (("pos_bias_u", pos_bias_u), ("pos_bias_v", pos_bias_v)):
        if bias.shape != (h, d_k):
            raise ValueError(f"{name} must be [{h}, {d_k}], got {tuple(bias.shape)}")
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [{b}], got {tuple(lengths.shape)}")
    out_dtype, cd = q.dtype, _compute_dtype(q)
    q, k, v, p = (x.to(cd) for x in (q, k, v, p))
    matrix_ac = torch.einsum("bihd,bjhd->bhij", q + pos_bias_u.to(cd), k)
    matrix_bd = torch.einsum("bihd,bnhd->bhin", q + pos_bias_v.to(cd), p.expand(b, -1, -1, -1))
    if p.size(1) == 2 * t - 1:
        i = torch.arange(t, device=q.device).unsqueeze(1)
        j = torch.arange(t, device=q.device).unsqueeze(0)
        index = (t - 1 - i + j).expand(b, h, t, t)
        matrix_bd = torch.gather(matrix_bd, 3, index)
    scores = (matrix_ac + matrix_bd) / math.sqrt(d_k)
    blocked = ~attention_mask(lengths, t, chunk_size, num_left_chunks).unsqueeze(1)
    attn = torch.softmax(scores.masked_fill(blocked, torch.finfo(cd).min), dim=-1)
    attn = attn.masked_fill(blocked, 0.0)
    return torch.einsum("bhij,bjhd->bihd", attn, v).to(out_dtype)
