"""W4A16 GEMM in Triton: each program owns a [BLOCK_M, BLOCK_N] tile of y (BLOCK_N / 2 row pairs
of the packed weight, packing.py) and walks K in BLOCK_K steps (or one of SPLIT_K interleaved
parts of it, writing fp32 partials that ``w4a16_splitk_reduce`` sums), dequantising nibbles in
registers for ``tl.dot``.
"""
import os

import triton
import triton.language as tl

# Triton's interpreter multiplies the uint16 storage of bfloat16 tl.dot operands
# (triton-lang/triton#11584); there, and only there, they are widened to fp32 first.
_WIDEN_DOT = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _dot_t(x, w, acc):
    """acc + x · w^T."""
    if _WIDEN_DOT:
        return tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc)
    return tl.dot(x, tl.trans(w), acc)


@triton.jit
def _store(Y, offs_m, n, acc, mask_m, N_DIM: tl.constexpr):
    tl.store(Y + offs_m[:, None] * N_DIM + n[None, :], acc.to(Y.dtype.element_ty),
             mask=mask_m[:, None] & (n < N_DIM)[None, :])


@triton.jit
def w4a16_gemm(X, QW, S, Z, B, Y, WS, M, N_DIM: tl.constexpr, K_DIM: tl.constexpr,
               GROUP: tl.constexpr, ASYM: tl.constexpr, BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """Words are loaded as they lie (a [BLOCK_N / 2 row pairs, BLOCK_K / 4] tile, contiguous along
    K); nibble p = hi + 2 khalf + 4 e of every word is one [BLOCK_N / 2, BLOCK_K / 4] weight tile
    (rows n + 8 hi, k = kb + 8 khalf + e) that meets the matching columns of x in its own
    ``tl.dot``: eight dots per step, two accumulators (rows n and n + 8 of each row pair)."""
    NP: tl.constexpr = (N_DIM + 15) // 16 * 16
    KW: tl.constexpr = (K_DIM + 63) // 64 * 16          # words per qweight row
    HALF: tl.constexpr = BLOCK_N // 2
    QK: tl.constexpr = BLOCK_K // 4
    pid_m, pid_n, part = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    mask_m = offs_m < M
    rp = pid_n * HALF + tl.arange(0, HALF)               # row pairs
    n_lo = (rp // 8) * 16 + rp % 8                      # their first rows; the second is + 8
    mask_rp = rp < NP // 2
    acc_lo = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)
    acc_hi = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)
    for k0 in range(part * BLOCK_K, K_DIM, BLOCK_K * SPLIT_K):
        u = k0 // 4 + tl.arange(0, QK)                   # word index within a row
        kb = (u // 16) * 64 + (u % 4) * 16 + ((u // 4) % 4) * 2     # k of the word's nibble 0
        wmask = mask_rp[:, None] & (kb < K_DIM)[None, :]
        words = tl.load(QW + rp[:, None] * KW + u[None, :], mask=wmask, other=0)
        sp = S + (kb // GROUP)[None, :] * NP + n_lo[:, None]
        s_lo = tl.load(sp, mask=wmask, other=0.0).to(tl.float32)
        s_hi = tl.load(sp + 8, mask=wmask, other=0.0).to(tl.float32)
        if ASYM:
            zp = Z + (kb // GROUP)[None, :] * NP + n_lo[:, None]
            z_lo = tl.load(zp, mask=wmask, other=0).to(tl.int32)
            z_hi = tl.load(zp + 8, mask=wmask, other=0).to(tl.int32)
        else:
            z_lo = 8
            z_hi = 8
        for kh in tl.static_range(2):
            for e in tl.static_range(2):
                k = kb + 8 * kh + e
                x = tl.load(X + offs_m[:, None] * K_DIM + k[None, :],
                            mask=mask_m[:, None] & (k < K_DIM)[None, :], other=0.0)
                q_lo = (words >> (8 * kh + 16 * e)) & 0xF
                q_hi = (words >> (4 + 8 * kh + 16 * e)) & 0xF
                acc_lo = _dot_t(x, ((q_lo - z_lo).to(tl.float32) * s_lo).to(x.dtype), acc_lo)
                acc_hi = _dot_t(x, ((q_hi - z_hi).to(tl.float32) * s_hi).to(x.dtype), acc_hi)
    n_hi = n_lo + 8
    if SPLIT_K == 1:
        if BIAS:
            acc_lo += tl.load(B + n_lo, mask=n_lo < N_DIM, other=0.0).to(tl.float32)[None, :]
            acc_hi += tl.load(B + n_hi, mask=n_hi < N_DIM, other=0.0).to(tl.float32)[None, :]
        _store(Y, offs_m, n_lo, acc_lo, mask_m, N_DIM)
        _store(Y, offs_m, n_hi, acc_hi, mask_m, N_DIM)
    else:
        WS = WS.to(tl.pointer_type(tl.float32))    # the workspace arrives as bytes
        part_rows = tl.cast(part, tl.int64) * M + offs_m
        _store(WS, part_rows, n_lo, acc_lo, mask_m, N_DIM)
        _store(WS, part_rows, n_hi, acc_hi, mask_m, N_DIM)


@triton.jit
def w4a16_splitk_reduce(WS, B, Y, M, N_DIM: tl.constexpr, BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                        BLOCK: tl.constexpr):
    """y = sum of the SPLIT_K fp32 partials (+ bias), in the activation dtype."""
    WS = WS.to(tl.pointer_type(tl.float32))
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    size = tl.cast(M, tl.int64) * N_DIM
    mask = offs < size
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for part in tl.static_range(SPLIT_K):
        total += tl.load(WS + part * size + offs, mask=mask, other=0.0)
    if BIAS:
        total += tl.load(B + offs % N_DIM, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, total.to(Y.dtype.element_ty), mask=mask)
