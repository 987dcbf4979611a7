"""y = SiLU(x @ w^T + b) in Triton: one program per [BM, BN] tile of y, a plain K loop on the
tensor cores, bias and SiLU in the epilogue on the fp32 accumulator, so the FFN's widest
activation (rows x 4·d_model) is written once and never read back for the activation.

Programs are ordered in groups of GROUP_M row tiles that sweep the columns together (Triton's
matmul tutorial, "L2 cache optimizations"), so a row tile of x is read from DRAM about once.
"""
import triton
import triton.language as tl

from ..triton_common import dot


@triton.jit
def linear_silu(X, W, BIAS, Y, M, N_DIM: tl.constexpr, K_DIM: tl.constexpr, BM: tl.constexpr,
                BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                EVEN_K: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BM)
    tiles_n: tl.constexpr = (N_DIM + BN - 1) // BN
    per_group = GROUP_M * tiles_n
    first_m = pid // per_group * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    rm, cm = rows < M, cols < N_DIM
    acc = tl.zeros((BM, BN), tl.float32)
    for k0 in range(0, K_DIM, BK):
        ks = k0 + tl.arange(0, BK)
        a_mask, b_mask = rm[:, None], cm[None, :]
        if not EVEN_K:
            a_mask = a_mask & (ks < K_DIM)[None, :]
            b_mask = b_mask & (ks < K_DIM)[:, None]
        a = tl.load(X + rows[:, None] * K_DIM + ks[None, :], mask=a_mask, other=0.0)
        b = tl.load(W + cols[None, :] * K_DIM + ks[:, None], mask=b_mask, other=0.0)
        acc = dot(a, b, acc)
    y = acc + tl.load(BIAS + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    y = y * tl.sigmoid(y)
    tl.store(Y + rows[:, None] * N_DIM + cols[None, :], y.to(Y.dtype.element_ty),
             mask=rm[:, None] & cm[None, :])
