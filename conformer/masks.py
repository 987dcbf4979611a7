"""Padding and chunk masks, with WeNet's conventions (wenet/utils/mask.py).

``make_pad_mask`` is True at *padded* positions (WeNet's ``make_pad_mask``); the attention masks
are True where a query *may attend* a key (WeNet's ``subsequent_chunk_mask`` and the
``masks & chunk_masks`` of ``add_optional_chunk_mask``).
"""
from __future__ import annotations

import torch


def _check_lengths(lengths: torch.Tensor, max_len: int | None) -> int:
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        raise ValueError(f"lengths must be a 1-D tensor, got {type(lengths).__name__} "
                         f"of shape {tuple(getattr(lengths, 'shape', ()))}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    longest = int(lengths.max()) if lengths.numel() else 0
    if max_len is None:
        return longest
    if longest > max_len:
        raise ValueError(f"a length ({longest}) exceeds max_len={max_len}")
    return max_len


def make_pad_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Bool [B, max_len], True at padded frames (``t >= lengths[b]``).

    ``max_len`` defaults to ``lengths.max()``. WeNet: ``make_pad_mask([5, 3, 2])`` is
    ``[[0,0,0,0,0], [0,0,0,1,1], [0,0,1,1,1]]``.
    """
    max_len = _check_lengths(lengths, max_len)
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


def chunk_attention_mask(size: int, chunk_size: int, num_left_chunks: int = -1,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [size, size], True where query i may attend key j, U2 chunk style.

    Frames are grouped into chunks of ``chunk_size``; a query sees every key of its own chunk
    and of ``num_left_chunks`` chunks before it (all of them when ``num_left_chunks < 0``), and
    nothing to the right of its chunk. Same as WeNet's ``subsequent_chunk_mask``, e.g.
    ``chunk_attention_mask(4, 2)`` is ``[[1,1,0,0], [1,1,0,0], [1,1,1,1], [1,1,1,1]]``.
    """
    for name, value in (("size", size), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(num_left_chunks, bool) or not isinstance(num_left_chunks, int):
        raise ValueError(f"num_left_chunks must be an int, got {num_left_chunks!r}")
    positions = torch.arange(size, device=device)
    chunk = positions // chunk_size
    end = (chunk + 1) * chunk_size
    if num_left_chunks < 0:
        start = torch.zeros_like(chunk)
    else:
        start = ((chunk - num_left_chunks) * chunk_size).clamp(min=0)
    keys = positions.unsqueeze(0)
    return (keys >= start.unsqueeze(1)) & (keys < end.unsqueeze(1))


def attention_mask(lengths: torch.Tensor, max_len: int | None = None,
                   chunk_size: int | None = None, num_left_chunks: int = -1) -> torch.Tensor:
    """Bool, True where a query may attend a key: the key is a valid frame and, with
    ``chunk_size``, inside the query's chunk window.

    Shape [B, 1, T] (key padding only, broadcast over queries) when ``chunk_size`` is None,
    else [B, T, T]. Padded *queries* are not masked, as in WeNet/ESPnet: their rows see the
    valid keys. A row with no attendable key (a length-0 sequence, or a query whose chunk
    window holds only padding) gives an all-zero attention row, never NaN.
    """
    valid = ~make_pad_mask(lengths, max_len)
    mask = valid.unsqueeze(1)
    if chunk_size is None:
        return mask
    return mask & chunk_attention_mask(valid.size(1), chunk_size, num_left_chunks,
                                       device=lengths.device)
