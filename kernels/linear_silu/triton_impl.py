"""y = SiLU(x @ w^T + b) in Triton: kernels/triton_gemm.py's persistent GEMM with bias and SiLU
in the epilogue on the fp32 accumulator, so the FFN's widest activation (rows x 4·d_model) is
written once and never read back for the activation. With TILES tiles per program (a
persistent grid when TILES > 1), measured on an H200 at 16000x1024x256 fp16: 31.4 us tuned with
4 tiles per program against 35.9 us with one (BENCHMARKS.md).
"""
import triton
import triton.language as tl

from ..triton_common import wait_for_predecessor
from ..triton_gemm import SILU, persistent_gemm


@triton.jit
def linear_silu(X, W, BIAS, Y, M, N_DIM: tl.constexpr, K_DIM: tl.constexpr, BM: tl.constexpr,
                BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                EVEN_K: tl.constexpr, GDC: tl.constexpr = 0):
    wait_for_predecessor(GDC)
    persistent_gemm(X, W, BIAS, Y, X, M, 1, N_DIM, K_DIM, SILU, BM, BN, BK, GROUP_M, EVEN_K)
