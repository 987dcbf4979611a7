"""Relative-position multi-head self-attention, flash style, in Triton.

One program computes one block of BLOCK_M queries of one (batch, head): an online softmax over
key blocks of BLOCK_N (Milakov & Gimelshein, arXiv:1805.02867; FlashAttention, arXiv:2205.14135),
fp32 statistics and accumulator, the T x T scores never leaving registers.

The position term. After ESPnet's rel_shift, score_bd[i, j] = (q_i + v) . p[T-1-i+j]. For the
query block at i0 and the key block at j0 the rows of p needed form a band
``n = base + (BLOCK_M-1-a) + c`` (a, c: row and column inside the blocks, base = T-i0-BLOCK_M+j0)
of BLOCK_M+BLOCK_N-1 rows. With BLOCK_M <= BLOCK_N the band lies inside two consecutive chunks of
BLOCK_N rows of p, and the second chunk of key block j0 is the first chunk of key block j0+BLOCK_N.
So each key block costs one new [BLOCK_M, DK] x [DK, BLOCK_N] product (the same work as q.k^T),
the previous one is carried in registers, and the per-row shift ("skew") of the two chunks is a
gather: the pair is flattened to one axis (``join``, ``permute`` and ``reshape`` only relabel
registers) and gathered along it (``tl.gather``, Triton >= 3.2), which Triton does through
shared memory: the band is stored once and each score loads its own element back, ESPnet's
pad-and-reshape done in shared memory.

Measured and dropped (H100, B=32 H=4 T=500 d_k=64 fp16, BENCHMARKS.md): a 2-D gather along the
key axis, which Triton does with warp shuffles between two layout conversions (101.5 us against
99.3 us, and it spills at BLOCK 64x64 / 4 warps), and rounding the band to fp16 before the skew
(115 us: the extra conversions cost more than the halved shared-memory traffic saves).

REL=2 is WeNet's un-shifted form, score_bd[i, j] = (q_i + v) . p[j] with p of T rows: one more
[BLOCK_M, DK] x [DK, BLOCK_N] product per key block, on the p rows of the keys, no skew.

PACKED=1: q, k and v are one tensor [B, T, 3*H*d_k] (one projection GEMM for all three, as
the encoder makes it), k and v at column offsets H*d_k and 2*H*d_k, rows 3*H*d_k apart; the
output keeps rows of H*d_k.

Masks: keys at or past the sequence length, and with CHUNK > 0 keys outside the query's chunk
window (U2 streaming: its own chunk and LEFT chunks before it, all before it when LEFT < 0).
Query rows at or past the length produce zeros, as do rows with no key to attend. Lengths are
clamped to [0, T] in the kernel, so no length makes it read out of bounds.
"""
import triton
import triton.language as tl

from ..triton_common import dot, wait_for_predecessor

@triton.jit
def _mm(a, b):
    return dot(a, b, tl.zeros((a.shape[0], b.shape[1]), tl.float32))


@triton.jit
def _mma(a, b, acc):
    return dot(a, b, acc)


@triton.jit
def _band_offset(rows, cols, i0, j0, BLOCK_M: tl.constexpr):
    """r[a, c] = BLOCK_M-1-a+c, the column of the (query a, key c) score in the band. Written
    through j0 so that it is recomputed for each key block (a few integer adds) instead of being
    hoisted out of the loop, where it would hold a register per score."""
    return cols[None, :] - rows[:, None] + (BLOCK_M - 1 + i0 - j0)


@triton.jit
def _skew(c_lo, c_hi, r, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """bd[a, c] = band[a, r[a, c]], band = [c_lo | c_hi] (BLOCK_M <= BLOCK_N): a gather from the
    band flattened to [a * 2*BLOCK_N + column], which Triton stages in shared memory."""
    band = tl.reshape(tl.permute(tl.join(c_lo, c_hi), (0, 2, 1)), (BLOCK_M * 2 * BLOCK_N,))
    flat = tl.arange(0, BLOCK_M)[:, None] * (2 * BLOCK_N) + r
    return tl.reshape(tl.gather(band, tl.reshape(flat, (BLOCK_M * BLOCK_N,)), 0),
                      (BLOCK_M, BLOCK_N))


@triton.jit
def _chunk(qv, P, p_off, first, rows_p, HD: tl.constexpr, DK: tl.constexpr,
           BLOCK_N: tl.constexpr):
    """(q + v) . p[first + c] for c < BLOCK_N, zero where the row is outside p's ``rows_p``."""
    n = first + tl.arange(0, BLOCK_N)
    d = tl.arange(0, DK)
    pt = tl.load(P + p_off + n[None, :] * HD + d[:, None],
                 mask=(n[None, :] >= 0) & (n[None, :] < rows_p), other=0.0)
    return _mm(qv, pt)


@triton.jit
def _step(acc, l_i, m_i, c_lo, qu, qv, K, V, P, k_off, v_off, p_off, rows, i0, j0, base, T,
          lo_row, hi_row, qk_scale, QS: tl.constexpr, HD: tl.constexpr, DK: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, REL: tl.constexpr,
          MASKED: tl.constexpr):
    """Fold key block j0 into the running (acc, l, m); MASKED=0 only for blocks every row of
    which may attend entirely (no chunk mask, all keys below the length)."""
    cols = j0 + tl.arange(0, BLOCK_N)
    d = tl.arange(0, DK)
    kt_ptrs = K + k_off + cols[None, :] * QS + d[:, None]
    v_ptrs = V + v_off + cols[:, None] * QS + d[None, :]
    if MASKED:
        kt = tl.load(kt_ptrs, mask=cols[None, :] < T, other=0.0)
    else:
        kt = tl.load(kt_ptrs)
    s = _mm(qu, kt)
    if REL == 1:
        c_hi = _chunk(qv, P, p_off, base + j0 + BLOCK_N, 2 * T - 1, HD, DK, BLOCK_N)
        s += _skew(c_lo, c_hi, _band_offset(rows, cols, i0, j0, BLOCK_M), BLOCK_M, BLOCK_N)
        c_lo = c_hi
    if REL == 2:   # WeNet's legacy form: the position rows line up with the keys
        s += _chunk(qv, P, p_off, j0, T, HD, DK, BLOCK_N)   # p has T rows
    s = s * qk_scale
    if MASKED:
        keep = (cols[None, :] >= lo_row[:, None]) & (cols[None, :] < hi_row[:, None])
        s = tl.where(keep, s, float("-inf"))
        v = tl.load(v_ptrs, mask=cols[:, None] < T, other=0.0)
    else:
        v = tl.load(v_ptrs)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = _mma(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new, c_lo


@triton.jit
def relpos_attn_fwd(Q, K, V, P, U, VB, LENGTHS, O, T,
                    HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, REL: tl.constexpr,
                    CHUNK: tl.constexpr, LEFT: tl.constexpr, PACKED: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GDC: tl.constexpr = 0):
    wait_for_predecessor(GDC)
    H: tl.constexpr = HEADS
    DK: tl.constexpr = HEAD_DIM
    HD: tl.constexpr = HEADS * HEAD_DIM
    QS: tl.constexpr = (1 + 2 * PACKED) * HD     # row stride of q, k, v
    n_qb = tl.cdiv(T, BLOCK_M)
    pid = tl.program_id(0)
    qb = pid % n_qb                    # query blocks of one head are adjacent: K/V stay in L2
    bh = pid // n_qb
    b = bh // H
    h = bh % H
    length = tl.minimum(tl.maximum(tl.load(LENGTHS + b), 0), T)

    i0 = qb * BLOCK_M
    rows = i0 + tl.arange(0, BLOCK_M)
    d = tl.arange(0, DK)
    q_off = b.to(tl.int64) * T * QS + h * DK
    k_off = q_off + PACKED * HD
    v_off = q_off + 2 * PACKED * HD
    q = tl.load(Q + q_off + rows[:, None] * QS + d[None, :], mask=rows[:, None] < T, other=0.0)
    dt = q.dtype
    qk_scale = 1.4426950408889634 / tl.sqrt(DK * 1.0)      # log2(e) / sqrt(d_k): softmax in base 2

    # key window of every row, and of the block as a whole
    if CHUNK > 0:
        hi_row = tl.minimum((rows // CHUNK + 1) * CHUNK, length)
        last = tl.maximum(tl.minimum(i0 + BLOCK_M, length) - 1, 0)
        hi = tl.minimum((last // CHUNK + 1) * CHUNK, length)
        if LEFT >= 0:
            lo_row = tl.maximum((rows // CHUNK - LEFT) * CHUNK, 0)
            lo = tl.maximum((i0 // CHUNK - LEFT) * CHUNK, 0)
        else:
            lo_row = tl.zeros([BLOCK_M], tl.int32)
            lo = 0
    else:
        hi_row = tl.zeros([BLOCK_M], tl.int32) + length
        lo_row = tl.zeros([BLOCK_M], tl.int32)
        hi = length
        lo = 0
    hi = tl.where(i0 < length, hi, 0)            # blocks past the length attend nothing
    lo = (lo // BLOCK_N) * BLOCK_N

    if REL:
        u = tl.load(U + h * DK + d).to(tl.float32)
        vb = tl.load(VB + h * DK + d).to(tl.float32)
        qu = (q.to(tl.float32) + u[None, :]).to(dt)
        qv = (q.to(tl.float32) + vb[None, :]).to(dt)
        p_off = h * DK
        base = T - i0 - BLOCK_M
        if REL == 1:
            c_lo = _chunk(qv, P, p_off, base + lo, 2 * T - 1, HD, DK, BLOCK_N)
        else:
            c_lo = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    else:
        qu = q
        qv = q
        p_off = 0
        base = 0
        c_lo = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)

    acc = tl.zeros([BLOCK_M, DK], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)   # finite: a fully masked block gives no NaN
    if CHUNK > 0:
        for j0 in range(lo, hi, BLOCK_N):
            acc, l_i, m_i, c_lo = _step(acc, l_i, m_i, c_lo, qu, qv, K, V, P, k_off, v_off,
                                        p_off, rows, i0, j0, base, T, lo_row, hi_row, qk_scale,
                                        QS, HD, DK, BLOCK_M, BLOCK_N, REL, True)
    else:
        full = (hi // BLOCK_N) * BLOCK_N
        for j0 in range(0, full, BLOCK_N):
            acc, l_i, m_i, c_lo = _step(acc, l_i, m_i, c_lo, qu, qv, K, V, P, k_off, v_off,
                                        p_off, rows, i0, j0, base, T, lo_row, hi_row, qk_scale,
                                        QS, HD, DK, BLOCK_M, BLOCK_N, REL, False)
        for j0 in range(full, hi, BLOCK_N):
            acc, l_i, m_i, c_lo = _step(acc, l_i, m_i, c_lo, qu, qv, K, V, P, k_off, v_off,
                                        p_off, rows, i0, j0, base, T, lo_row, hi_row, qk_scale,
                                        QS, HD, DK, BLOCK_M, BLOCK_N, REL, True)

    ok = (rows < length) & (l_i > 0)
    out = tl.where(ok[:, None], acc / tl.where(ok, l_i, 1.0)[:, None], 0.0)
    o_off = b.to(tl.int64) * T * HD + h * DK
    tl.store(O + o_off + rows[:, None] * HD + d[None, :], out.to(dt), mask=rows[:, None] < T)
