"""W4A16 GEMM in Triton: each program owns a [BLOCK_M, BLOCK_N] tile of y (BLOCK_N / 2 row pairs
of the packed weight, packing.py) and walks K in BLOCK_K steps (or one of SPLIT_K interleaved
parts of it, writing fp32 partials that ``w4a16_splitk_reduce`` sums). Per step it loads the x
tile as it lies (contiguous, so Triton pipelines it into shared memory) and the packed words of
the weight tile, dequantises them in registers into two [BLOCK_N / 2, BLOCK_K] tiles in natural
k order (rows n and n + 8 of every row pair), and runs one ``tl.dot`` per tile.
"""
import triton
import triton.language as tl

from ..triton_common import dot


@triton.jit
def _plane(words, s, z, SHIFT: tl.constexpr, dt):
    """One nibble of every word, dequantised: (q - z) * s in the activation dtype."""
    return ((((words >> SHIFT) & 0xF) - z).to(tl.float32) * s).to(dt)


@triton.jit
def _weight_tile(words, s, z, HI: tl.constexpr, dt):
    """[R, C, 4 (j), 4 (t)] packed words -> the dequantised weight rows n + 8 HI, [R, 64 C] in
    natural k order: k = 64 c + 16 j + 8 khalf + 2 t + e is nibble HI + 2 khalf + 4 e of word
    16 c + 4 t + j, so the four nibble planes of HI are joined as (t, e, khalf) and permuted to
    (khalf, t, e) — relabellings of registers until Triton stages the tile for the dot."""
    kh0 = tl.join(_plane(words, s, z, 4 * HI, dt), _plane(words, s, z, 4 * HI + 16, dt))
    kh1 = tl.join(_plane(words, s, z, 4 * HI + 8, dt), _plane(words, s, z, 4 * HI + 24, dt))
    w = tl.permute(tl.join(kh0, kh1), (1, 2, 5, 3, 4, 0))
    return tl.reshape(w, (w.shape[0] * 64, w.shape[5]))


@triton.jit
def _store(Y, offs_m, n, acc, mask_m, N_DIM: tl.constexpr):
    tl.store(Y + offs_m[:, None] * N_DIM + n[None, :], acc.to(Y.dtype.element_ty),
             mask=mask_m[:, None] & (n < N_DIM)[None, :])


@triton.jit
def w4a16_gemm(X, QW, S, Z, B, Y, WS, M, N_DIM: tl.constexpr, K_DIM: tl.constexpr,
               GROUP: tl.constexpr, ASYM: tl.constexpr, BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """The words of a step are loaded as a [BLOCK_N / 2, C, 4 (j), 4 (t)] tile (C = BLOCK_K / 64
    chunks; word 16 c + 4 t + j of row pair R), with one scale (and zero point) per (R, c, j):
    all 16 k of a word's j lie in one group. Two accumulators, rows n and n + 8 of each pair."""
    NP: tl.constexpr = (N_DIM + 15) // 16 * 16
    KW: tl.constexpr = (K_DIM + 63) // 64 * 16          # words per qweight row
    HALF: tl.constexpr = BLOCK_N // 2
    C: tl.constexpr = BLOCK_K // 64
    pid_m, pid_n, part = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    mask_m = offs_m < M
    rp = pid_n * HALF + tl.arange(0, HALF)               # row pairs
    n_lo = (rp // 8) * 16 + rp % 8                      # their first rows; the second is + 8
    r4 = rp[:, None, None, None]
    c4 = tl.arange(0, C)[None, :, None, None]
    j4 = tl.arange(0, 4)[None, None, :, None]
    t4 = tl.arange(0, 4)[None, None, None, :]
    n4 = n_lo[:, None, None, None]
    d = tl.arange(0, BLOCK_K)
    acc_lo = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)
    acc_hi = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)
    for k0 in range(part * BLOCK_K, K_DIM, BLOCK_K * SPLIT_K):
        k = k0 + d
        x = tl.load(X + offs_m[:, None] * K_DIM + k[None, :],
                    mask=mask_m[:, None] & (k < K_DIM)[None, :], other=0.0)
        kj = k0 + 64 * c4 + 16 * j4                      # first k of (c, j): [1, C, 4, 1]
        ok = (r4 < NP // 2) & (kj < K_DIM)
        words = tl.load(QW + r4 * KW + (k0 // 4 + 16 * c4 + 4 * t4 + j4), mask=ok, other=0)
        sp = S + (kj // GROUP) * NP + n4
        s_lo = tl.load(sp, mask=ok, other=0.0).to(tl.float32)
        s_hi = tl.load(sp + 8, mask=ok, other=0.0).to(tl.float32)
        if ASYM:
            zp = Z + (kj // GROUP) * NP + n4
            z_lo = tl.load(zp, mask=ok, other=0).to(tl.int32)
            z_hi = tl.load(zp + 8, mask=ok, other=0).to(tl.int32)
        else:
            z_lo = 8
            z_hi = 8
        acc_lo = dot(x, _weight_tile(words, s_lo, z_lo, 0, x.dtype), acc_lo)
        acc_hi = dot(x, _weight_tile(words, s_hi, z_hi, 1, x.dtype), acc_hi)
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
