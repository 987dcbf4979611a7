"""LayerNorm forward (optionally fused with a residual add) in Triton.

Each program normalises ROWS rows held as one [ROWS, BLOCK_N] register tile; statistics in fp32.
STREAM marks the activations read-once / write-once (evict-first loads, streaming stores), so
they do not push the weights and the next layer's data out of L2.
"""
import triton
import triton.language as tl

from ..triton_common import wait_for_predecessor


@triton.jit
def _load(ptr, mask, STREAM: tl.constexpr):
    if STREAM:
        return tl.load(ptr, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store(ptr, value, mask, STREAM: tl.constexpr):
    if STREAM:
        tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask, cache_modifier=".cs")
    else:
        tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def layernorm_fwd(X, R, W, B, Y, S, rows, eps, N: tl.constexpr, BLOCK_N: tl.constexpr,
                  ROWS: tl.constexpr, RESIDUAL: tl.constexpr, STREAM: tl.constexpr,
                  GDC: tl.constexpr = 0):
    wait_for_predecessor(GDC)
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    col = tl.arange(0, BLOCK_N)[None, :]
    mask = (row < rows) & (col < N)
    offs = row * N + col
    x = _load(X + offs, mask, STREAM)
    if RESIDUAL:
        x += _load(R + offs, mask, STREAM)
        _store(S + offs, x, mask, STREAM)
    mean = tl.sum(x, axis=1) / N
    d = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / N + eps)
    w = tl.load(W + col, mask=col < N, other=0.0).to(tl.float32)
    b = tl.load(B + col, mask=col < N, other=0.0).to(tl.float32)
    _store(Y + offs, d * rstd[:, None] * w + b, mask, STREAM)
