"""Triton kernels of the Conformer convolution module.

Rows are the frames of the flattened batch, row = b * T + t, and each sequence's length is read
from ``lengths[b]`` clamped to [0, T], so no length makes a kernel read outside its tensors.
Padded frames (``t >= length``) of x and h never reach a valid output: pw1 reads them as 0, pw2
computes their rows and drops them, and where the depthwise conv needs such a frame of h it
takes the value WeNet's masking gives it (``glu(b1)``, or 0 with MASK_GLU) instead of reading it,
so garbage (even NaN) in padded frames stays there.

* ``pw1_glu``   h = GLU(x @ w1^T + b1): two accumulators (value and gate columns), GLU epilogue,
  stored at live frames; one program per output tile (kernels/triton_gemm.py's persistent GEMM
  with a GLU epilogue measured 22.4 us against this kernel's 17.6 us, H200, B=32 T=500 D=256).
* ``dw_swish``  z = SiLU(depthwise(h) + dw_b) (BatchNorm folded in), 0 at padded frames; each
  tap is one shifted tile load, so the K - 1 halo rows come from L1/L2. Taps are a loop, not
  unrolled: unrolled (31 taps, H100, Triton 3.6) the stage took 59 us to 1.2 ms depending on the
  tile, as a loop 42 to 45 us.
* ``pw2``       y = z @ w2^T + b2, 0 at padded frames: kernels/triton_gemm.py's persistent GEMM
  (z is written at every frame, 0 at padded ones, so its rows need no mask; 9.0 us against
  13.0 us for ``_pointwise``, same machine and shape).
* ``pw2_fused`` the same from h, the depthwise stage computed for each K-step in ``_pointwise``'s
  prologue so that z never touches memory.

Workspaces arrive as byte buffers and are cast to the activation type. With ``GDC=1`` (set by
kernels/launch.py for a programmatic dependent launch on sm_90+) ``pw1_glu`` and ``pw2`` first
wait for the grid before them (``gdc_wait``), then let the next one launch, so that a launch's
start overlaps its predecessor's last wave. ``dw_swish`` is launched plainly: started early
behind ``pw1_glu`` the Triton module took 89.5 us instead of 73.6 (H200, B=32 T=500 D=256,
scripts/conv_module_sweep.py; every other pairing was within 1 us), while the CUDA depthwise
stage gains 2.7 us from it. ``pw2_fused`` gained nothing measurable either way.
"""
import triton
import triton.language as tl

from ..triton_common import dot as _dot
from ..triton_common import wait_for_predecessor
from ..triton_gemm import MASKED, persistent_gemm


@triton.jit
def _rows(LEN, pid, B, T, BM: tl.constexpr):
    """Row indices (int64), whether they exist, their frame index and their sequence's length
    clamped to [0, T] (0 for rows past the end)."""
    rows = pid.to(tl.int64) * BM + tl.arange(0, BM)
    exists = rows // T < B
    ln = tl.load(LEN + rows // T, mask=exists, other=0)
    return rows, exists, rows % T, tl.minimum(tl.maximum(ln, 0), T)


@triton.jit
def _weight_t(W, row0, cols, ks, D: tl.constexpr, EVEN_K: tl.constexpr):
    """The [BK, BN] tile of W^T for W[row0 + cols, ks] (W is [*, D], row-major)."""
    ptrs = W + (row0 + cols[None, :]) * D + ks[:, None]
    if EVEN_K:
        return tl.load(ptrs, mask=(cols < D)[None, :], other=0.0)
    return tl.load(ptrs, mask=(cols < D)[None, :] & (ks < D)[:, None], other=0.0)


@triton.jit
def _act_tile(P, rows, live, ks, D: tl.constexpr, EVEN_K: tl.constexpr):
    """The [BM, BK] tile P[rows, ks] of an activation, 0 at rows that are not live."""
    ptrs = P + rows[:, None] * D + ks[None, :]
    if EVEN_K:
        return tl.load(ptrs, mask=live[:, None], other=0.0)
    return tl.load(ptrs, mask=live[:, None] & (ks < D)[None, :], other=0.0)


@triton.jit
def _dw_silu(H, B1, DWW, DWB, rows, t, ln, T, ch, D: tl.constexpr, K: tl.constexpr,
             CAUSAL: tl.constexpr, MASK_GLU: tl.constexpr, LEFT: tl.constexpr,
             BM: tl.constexpr, BC: tl.constexpr):
    """SiLU(depthwise conv + folded bias) for rows x channels ``ch``, in fp32, [BM, BC]."""
    cm = ch < D
    acc = tl.zeros((BM, BC), tl.float32) + tl.load(DWB + ch, mask=cm, other=0.0)[None, :]
    if not MASK_GLU:   # WeNet: a masked input frame reaches the conv as glu(b1)
        g0 = tl.load(B1 + ch, mask=cm, other=0.0).to(tl.float32) * \
            tl.sigmoid(tl.load(B1 + D + ch, mask=cm, other=0.0).to(tl.float32))
    for j in range(K):
        s = t + (j - LEFT)
        inside = (s >= 0) & (s < ln)
        v = tl.load(H + (rows + (j - LEFT))[:, None] * D + ch[None, :],
                    mask=inside[:, None] & cm[None, :], other=0.0).to(tl.float32)
        if not MASK_GLU:
            fill = (s < T) & ((s < 0) | (s >= ln))   # not inside (no ~: Triton 3.3's interpreter lacks it)
            if not CAUSAL:
                fill = fill & (s >= 0)   # "same" padding before the start is 0
            v = tl.where(fill[:, None], g0[None, :], v)
        acc += v * tl.load(DWW + ch * K + j, mask=cm, other=0.0)[None, :]
    return acc * tl.sigmoid(acc)


@triton.jit
def dw_swish(H, LEN, B1, DWW, DWB, Z, B, T, D: tl.constexpr, K: tl.constexpr,
             CAUSAL: tl.constexpr, MASK_GLU: tl.constexpr, LEFT: tl.constexpr,
             BMD: tl.constexpr, BCD: tl.constexpr):
    H = H.to(tl.pointer_type(B1.dtype.element_ty))
    Z = Z.to(tl.pointer_type(B1.dtype.element_ty))
    rows, exists, t, ln = _rows(LEN, tl.program_id(0), B, T, BMD)
    ch = tl.program_id(1) * BCD + tl.arange(0, BCD)
    z = _dw_silu(H, B1, DWW, DWB, rows, t, ln, T, ch, D, K, CAUSAL, MASK_GLU, LEFT, BMD, BCD)
    z = tl.where((t < ln)[:, None], z, 0.0)
    tl.store(Z + rows[:, None] * D + ch[None, :], z.to(Z.dtype.element_ty),
             mask=exists[:, None] & (ch < D)[None, :])


@triton.jit
def _pointwise(A, LEN, W, BIAS, OUT, B1, DWW, DWB, B, T, D: tl.constexpr, K: tl.constexpr,
               CAUSAL: tl.constexpr, MASK_GLU: tl.constexpr, LEFT: tl.constexpr,
               GLU: tl.constexpr, FUSE_DW: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr, EVEN_K: tl.constexpr):
    """One [BM, BN] tile of OUT = epilogue(A' @ W[:D]^T + BIAS[:D]). GLU: times
    sigmoid(A' @ W[D:]^T + BIAS[D:]), stored at live rows only; else 0 at padded rows. A' is A,
    or with FUSE_DW the depthwise stage computed from A (= h)."""
    rows, exists, t, ln = _rows(LEN, tl.program_id(0), B, T, BM)
    live = t < ln
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), tl.float32)
    acc_g = tl.zeros((BM, BN), tl.float32)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        if FUSE_DW:
            a = _dw_silu(A, B1, DWW, DWB, rows, t, ln, T, ks, D, K, CAUSAL, MASK_GLU, LEFT,
                         BM, BK).to(OUT.dtype.element_ty)
        else:
            a = _act_tile(A, rows, live, ks, D, EVEN_K)
        acc = _dot(a, _weight_t(W, 0, cols, ks, D, EVEN_K), acc)
        if GLU:
            acc_g = _dot(a, _weight_t(W, D, cols, ks, D, EVEN_K), acc_g)
    cm = cols < D
    y = acc + tl.load(BIAS + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    if GLU:
        g = acc_g + tl.load(BIAS + D + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        tl.store(OUT + rows[:, None] * D + cols[None, :],
                 (y * tl.sigmoid(g)).to(OUT.dtype.element_ty), mask=live[:, None] & cm[None, :])
    else:
        tl.store(OUT + rows[:, None] * D + cols[None, :],
                 tl.where(live[:, None], y, 0.0).to(OUT.dtype.element_ty),
                 mask=exists[:, None] & cm[None, :])


@triton.jit
def pw1_glu(X, LEN, W1, B1, H, B, T, D: tl.constexpr, BM1: tl.constexpr, BN1: tl.constexpr,
            BK1: tl.constexpr, EVEN_K1: tl.constexpr, GDC: tl.constexpr = 0):
    wait_for_predecessor(GDC)
    H = H.to(tl.pointer_type(X.dtype.element_ty))
    _pointwise(X, LEN, W1, B1, H, B1, B1, B1, B, T, D, 1, 0, 0, 0, True, False, BM1, BN1, BK1,
               EVEN_K1)


@triton.jit
def pw2(Z, LEN, W2, B2, Y, B, T, D: tl.constexpr, BM2: tl.constexpr, BN2: tl.constexpr,
        BK2: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K2: tl.constexpr, GDC: tl.constexpr = 0):
    wait_for_predecessor(GDC)
    Z = Z.to(tl.pointer_type(Y.dtype.element_ty))
    persistent_gemm(Z, W2, B2, Y, LEN, B * T, T, D, D, MASKED, BM2, BN2, BK2, GROUP_M, EVEN_K2)


@triton.jit
def pw2_fused(H, LEN, B1, DWW, DWB, W2, B2, Y, B, T, D: tl.constexpr, K: tl.constexpr,
              CAUSAL: tl.constexpr, MASK_GLU: tl.constexpr, LEFT: tl.constexpr,
              BM2: tl.constexpr, BN2: tl.constexpr, BK2: tl.constexpr, EVEN_K2: tl.constexpr):
    H = H.to(tl.pointer_type(Y.dtype.element_ty))
    _pointwise(H, LEN, W2, B2, Y, B1, DWW, DWB, B, T, D, K, CAUSAL, MASK_GLU, LEFT, False,
               True, BM2, BN2, BK2, EVEN_K2)
