"""2:4 structured sparsity along K: magnitude pruning, and the compressed format the sparse
tensor cores read (PTX ISA, "Sparse matrix storage"; the same values + 2-bit-index idea as
cuSPARSELt's compressed matrices, in the per-lane order mma.sp.sync m16n8k32 takes).

For W [N, K] with at most 2 non-zeros in every group of 4 consecutive k (N, K padded with zeros
to whole 16-row tiles and 64-wide chunks; a group keeps positions i0 < i1, its non-zeros first,
then the lowest free positions):

* ``values`` [cdiv(N, 16) * 16, cdiv(K, 64) * 32] (activation dtype): W[n, 4 c + i0], W[n, 4 c + i1]
  at columns 2 c, 2 c + 1;
* ``meta`` int32 [cdiv(N, 16) * 8, cdiv(K, 64) * 4]: row R = 8 (n // 16) + n % 8 holds rows n and
  n + 8 (n % 16 < 8); word b has, for the four groups of k in [16 b, 16 b + 16), the nibbles
  ``i0 | i1 << 2`` of row n in bits 0..15 and of row n + 8 in bits 16..31 (group order low to
  high). That is the metadata register of one lane for one half of an m16n8k32 step.
"""
from __future__ import annotations

import torch

from ..int4_gemm.packing import cdiv


def check_k(k: int) -> None:
    if k < 4 or k % 4:
        raise ValueError(f"K={k} must be a positive multiple of 4 for 2:4 sparsity")


def prune_24(w: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest-magnitude values of every 4 consecutive along K (the last dim)."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise TypeError("w must be a 2-D floating-point torch.Tensor [N, K]")
    n, k = w.shape
    check_k(k)
    groups = w.reshape(n, k // 4, 4)
    keep = groups.abs().float().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(n, k)


def is_24(w: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive values along K has at most 2 non-zeros."""
    n, k = w.shape
    return k % 4 == 0 and bool(((w.reshape(n, k // 4, 4) != 0).sum(-1) <= 2).all())


def compress(w: torch.Tensor, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """{"values", "meta"} of a 2:4-sparse W [N, K]; ValueError if W is not 2:4 (prune it with
    :func:`prune_24` first)."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise TypeError("w must be a 2-D floating-point torch.Tensor [N, K]")
    n, k = w.shape
    check_k(k)
    dtype = dtype or (w.dtype if w.dtype in (torch.float16, torch.bfloat16) else torch.float16)
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"values are fp16 or bf16 (the activation dtype), not {dtype}")
    w = w.to(dtype)   # rounding can only make more zeros
    if not is_24(w):
        bad = int(((w.reshape(n, k // 4, 4) != 0).sum(-1) > 2).sum())
        raise ValueError(f"the weight is not 2:4 sparse along K ({bad} groups of 4 have more "
                         "than 2 non-zeros); prune it with prune_24(w) first")
    npad, kpad = cdiv(n, 16) * 16, cdiv(k, 64) * 64
    full = torch.zeros(npad, kpad, dtype=dtype, device=w.device)
    full[:n, :k] = w
    groups = full.reshape(npad, kpad // 4, 4)
    # non-zeros first, then the lowest positions; the two kept positions in ascending order
    rank = (groups != 0).to(torch.int16) * 8 - torch.arange(4, device=w.device, dtype=torch.int16)
    idx = rank.topk(2, dim=-1).indices.sort(dim=-1).values
    values = groups.gather(-1, idx).reshape(npad, kpad // 2)
    nib = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)           # [npad, kpad / 4]
    byte = nib[:, 0::2] | (nib[:, 1::2] << 4)                          # [npad, kpad / 8]
    # word = [row n: bytes of k16 block b][row n + 8: same], little-endian
    tiles = byte.reshape(npad // 16, 2, 8, kpad // 16, 2).permute(0, 2, 3, 1, 4)
    meta = tiles.reshape(npad // 2, kpad // 4).view(torch.int32)
    return {"values": values.contiguous(), "meta": meta}


def decompress(values: torch.Tensor, meta: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The dense W [N, K] (values' dtype) of a compressed weight."""
    npad, half = values.shape
    byte = meta.contiguous().view(torch.uint8).reshape(npad // 16, 8, half // 8, 2, 2)
    byte = byte.permute(0, 3, 1, 2, 4).reshape(npad, half // 4)         # [row, k16 block, 2 bytes]
    nib = torch.stack([byte & 15, byte >> 4], -1).reshape(npad, half // 2).long()
    idx = torch.stack([nib & 3, nib >> 2], -1)                          # [npad, groups, 2]
    dense = torch.zeros(npad, half // 2, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, idx, values.reshape(npad, half // 2, 2))
    return dense.reshape(npad, half * 2)[:n, :k]
