"""Sinusoidal position tables of WeNet and ESPnet, computed exactly as they compute them.

Row ``n`` of a table for position ``pos`` is ``[sin(pos*w_0), cos(pos*w_0), sin(pos*w_1), ...]``
with ``w_i = exp(2i * -(ln 10000 / d))``, in float32 (Vaswani et al.; WeNet
wenet/transformer/embedding.py ``PositionalEncoding``, ESPnet
espnet/nets/pytorch_backend/transformer/embedding.py). The tables depend on the row's position
only, so computing T rows directly gives the same bits as slicing their 5000-row buffers.
"""
from __future__ import annotations

import math

import torch


def sinusoid_table(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """[len(positions), d_model] float32 table for the given (float32) positions."""
    if d_model % 2:
        raise ValueError(f"d_model={d_model} must be even for a sinusoidal table")
    positions = positions.to(torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                         * -(math.log(10000.0) / d_model)).to(positions.device)
    table = torch.zeros(positions.size(0), d_model, device=positions.device)
    table[:, 0::2] = torch.sin(positions * div_term)
    table[:, 1::2] = torch.cos(positions * div_term)
    return table


def abs_pos_table(length: int, d_model: int, device=None) -> torch.Tensor:
    """[T, d] for positions 0 … T-1: WeNet/ESPnet ``PositionalEncoding`` (added to
    ``x * sqrt(d)`` after the front end for ``abs_pos``), and also WeNet's
    ``RelPositionalEncoding`` pos_emb (our ``rel_legacy``)."""
    return sinusoid_table(torch.arange(length, dtype=torch.float32, device=device), d_model)


def rel_pos_table(length: int, d_model: int, device=None) -> torch.Tensor:
    """[2T-1, d] for relative positions T-1, T-2, …, 0, …, -(T-1): ESPnet's current
    ``RelPositionalEncoding`` pos_emb (``pe[:, center - T + 1 : center + T]``). Row ``n`` is
    relative position ``i - j = T-1-n``, which ``rel_shift`` lines up with query i, key j."""
    positions = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)
    return sinusoid_table(positions, d_model)
