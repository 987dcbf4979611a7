"""4-bit weight quantisation and the packed format both implementations read.

A float weight W [N, K] is quantised per output channel n in groups of ``group`` consecutive k:

* asymmetric: ``s = (max - min) / 15``, ``z = clamp(round(-min / s), 0, 15)``,
  ``q = clamp(round(w / s) + z, 0, 15)``;
* symmetric: ``s = max|w| / 7``, ``z = 8`` (implicit), ``q = clamp(round(w / s) + 8, 0, 15)``;

and dequantised as ``W[n, k] = (q[n, k] - z[k // group, n]) * s[k // group, n]``.

Stored tensors (N and K padded to whole 16-row tiles and 64-wide chunks, padding zero):

* ``qweight`` int32 [cdiv(N, 16) * 8, cdiv(K, 64) * 16]. Row ``R = 8 (n // 16) + n % 8`` holds the
  weight rows n and n + 8 of a 16-row tile. With ``k = 64 c + 16 j + 8 khalf + 2 t + e`` (t < 4,
  j < 4, khalf, e < 2) and ``hi`` = 1 for the row n + 8, the nibble of w[n + 8 hi, k] is nibble
  ``hi + 2 khalf + 4 e`` of word ``16 c + 4 t + j``. Word j of lane (g, t) is then exactly that
  lane's A fragment of the m16n8k16 step j (rows g, g + 8; k 2t, 2t + 1, 2t + 8, 2t + 9), a
  nibble pair ``(p, p + 4)`` lands in the two halves of a register with one mask, and a lane's
  four steps of a 64-wide chunk are one 16-byte load (the idea of Marlin's layout, our own order).
* ``scales`` [K / group, cdiv(N, 16) * 16] in the activation dtype.
* ``zeros`` uint8 [K / group, cdiv(N, 16) * 16], values 0..15 (asymmetric only).
"""
from __future__ import annotations

import torch

GROUPS = (32, 64, 128)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_dims(n: int, k: int, group: int) -> None:
    """ValueError unless ``group`` is 32/64/128 and divides K."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group}")
    if n < 1 or k < group or k % group:
        raise ValueError(f"K={k} must be a positive multiple of the group size {group} (and N={n} >= 1)")


def quantize(w: torch.Tensor, group: int, asym: bool, dtype: torch.dtype):
    """(q uint8 [N, K], scales [K/group, N] in ``dtype``, zeros uint8 [K/group, N] or None).
    Scales are rounded to ``dtype`` before q is chosen, so q is optimal for the stored scale."""
    n, k = w.shape
    check_dims(n, k, group)
    wg = w.detach().float().reshape(n, k // group, group)
    if asym:
        lo = wg.amin(-1).clamp(max=0)
        hi = wg.amax(-1).clamp(min=0)
        s = ((hi - lo) / 15).clamp(min=1e-8).to(dtype).float()
        z = torch.round(-lo / s).clamp(0, 15)
    else:
        s = (wg.abs().amax(-1) / 7).clamp(min=1e-8).to(dtype).float()
        z = torch.full_like(s, 8.0)
    q = torch.round(wg / s[..., None] + z[..., None]).clamp(0, 15).to(torch.uint8).reshape(n, k)
    zeros = z.t().contiguous().to(torch.uint8) if asym else None
    return q, s.t().contiguous().to(dtype), zeros


def pack_q(q: torch.Tensor) -> torch.Tensor:
    """q uint8 [N, K] (values 0..15) -> qweight int32 [cdiv(N, 16) * 8, cdiv(K, 64) * 16]."""
    n, k = q.shape
    npad, kpad = cdiv(n, 16) * 16, cdiv(k, 64) * 64
    full = torch.zeros(npad, kpad, dtype=torch.uint8, device=q.device)
    full[:n, :k] = q
    # [tile, hi, g, c, j, khalf, t, e] -> [tile, g, c, t, j, (e, khalf, hi)]
    v = full.reshape(npad // 16, 2, 8, kpad // 64, 4, 2, 4, 2).permute(0, 2, 3, 6, 4, 7, 5, 1)
    nib = v.reshape(-1, 8)                       # nibble p = hi + 2 khalf + 4 e of each word
    byte = nib[:, 0::2] | (nib[:, 1::2] << 4)    # little-endian bytes: nibbles (0,1) (2,3) ...
    return byte.contiguous().view(torch.int32).reshape(npad // 2, kpad // 4)


def unpack_q(qweight: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The inverse of :func:`pack_q`: q uint8 [N, K]."""
    rows, words = qweight.shape
    byte = qweight.contiguous().view(torch.uint8).reshape(-1, 4)
    nib = torch.stack([byte & 15, byte >> 4], -1).reshape(-1, 8)
    v = nib.reshape(rows // 8, 8, words // 16, 4, 4, 2, 2, 2)    # tile g c t j e khalf hi
    full = v.permute(0, 7, 1, 2, 4, 6, 3, 5).reshape(rows * 2, words * 4)
    return full[:n, :k]


def pad_cols(t: torch.Tensor, cols: int) -> torch.Tensor:
    out = torch.zeros(t.shape[0], cols, dtype=t.dtype, device=t.device)
    out[:, : t.shape[1]] = t
    return out


def pack_weight(w: torch.Tensor, group: int = 128, asym: bool = True,
                dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Quantise and pack ``w`` [N, K]: {"qweight", "scales", and "zeros" when ``asym``}, on
    ``w``'s device; scales in ``dtype`` (default ``w.dtype`` when it is fp16/bf16, else fp16)."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise TypeError("w must be a 2-D floating-point torch.Tensor [N, K]")
    if dtype is None:
        dtype = w.dtype if w.dtype in (torch.float16, torch.bfloat16) else torch.float16
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"scales are fp16 or bf16 (the activation dtype), not {dtype}")
    n, k = w.shape
    q, scales, zeros = quantize(w, group, asym, dtype)
    npad = cdiv(n, 16) * 16
    out = {"qweight": pack_q(q), "scales": pad_cols(scales, npad)}
    if asym:
        out["zeros"] = pad_cols(zeros, npad)
    return out


def dequantize(qweight, scales, zeros, n: int, k: int, group: int) -> torch.Tensor:
    """W [N, K] in float64 from the stored tensors (``zeros`` None: symmetric)."""
    q = unpack_q(qweight, n, k).double()
    s = scales[:, :n].double().t().repeat_interleave(group, dim=1)
    z = 8.0 if zeros is None else zeros[:, :n].double().t().repeat_interleave(group, dim=1)
    return (q - z) * s
