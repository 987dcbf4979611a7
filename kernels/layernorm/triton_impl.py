"""LayerNorm forward (optionally fused with a residual add) in Triton.

Each program normalises ROWS rows held as one [ROWS, BLOCK_N] register tile; statistics in fp32.
"""
import triton
import triton.language as tl


@triton.jit
def layernorm_fwd(X, R, W, B, Y, S, rows, eps, N: tl.constexpr, BLOCK_N: tl.constexpr,
                  ROWS: tl.constexpr, RESIDUAL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    col = tl.arange(0, BLOCK_N)[None, :]
    mask = (row < rows) & (col < N)
    offs = row * N + col
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if RESIDUAL:
        x += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(S + offs, x.to(S.dtype.element_ty), mask=mask)
    mean = tl.sum(x, axis=1) / N
    d = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / N + eps)
    w = tl.load(W + col, mask=col < N, other=0.0).to(tl.float32)
    b = tl.load(B + col, mask=col < N, other=0.0).to(tl.float32)
    tl.store(Y + offs, (d * rstd[:, None] * w + b).to(Y.dtype.element_ty), mask=mask)
