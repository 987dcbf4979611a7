"""Two LayerNorms in one pass, in Triton: y = LN1(x + r), y2 = LN2(y).

Each program holds ROWS rows as one [ROWS, BLOCK_N] register tile, as the LayerNorm kernel does
(and with its loads and stores, so STREAM means the same); y is rounded to the activation dtype
before the second norm, so y2 is what LN2 of the stored y gives.
"""
import triton
import triton.language as tl

from ..layernorm.triton_impl import _load, _store
from ..triton_common import wait_for_predecessor


@triton.jit
def _normalize(x, mask, W, B, col, eps, N: tl.constexpr):
    mean = tl.sum(x, axis=1) / N
    d = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / N + eps)
    w = tl.load(W + col, mask=col < N, other=0.0).to(tl.float32)
    b = tl.load(B + col, mask=col < N, other=0.0).to(tl.float32)
    return d * rstd[:, None] * w + b


@triton.jit
def layernorm_chain_fwd(X, R, W, B, W2, B2, Y, Y2, rows, eps, eps2, N: tl.constexpr,
                        BLOCK_N: tl.constexpr, ROWS: tl.constexpr, STREAM: tl.constexpr,
                        GDC: tl.constexpr = 0):
    wait_for_predecessor(GDC)
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    col = tl.arange(0, BLOCK_N)[None, :]
    mask = (row < rows) & (col < N)
    offs = row * N + col
    s = _load(X + offs, mask, STREAM) + _load(R + offs, mask, STREAM)
    y = _normalize(s, mask, W, B, col, eps, N).to(Y.dtype.element_ty)
    _store(Y + offs, y, mask, STREAM)
    _store(Y2 + offs, _normalize(y.to(tl.float32), mask, W2, B2, col, eps2, N), mask, STREAM)
