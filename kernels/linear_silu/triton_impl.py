"""y = SiLU(x @ w^T + b) in Triton: [BM, BN] tiles of y, a plain K loop on the tensor cores,
bias and SiLU in the epilogue on the fp32 accumulator, so the FFN's widest activation
(rows x 4·d_model) is written once and never read back for the activation.

Tiles are ordered in groups of GROUP_M row tiles that sweep the columns together (Triton's
matmul tutorial, "L2 cache optimizations"), so a row tile of x is read from DRAM about once.
Each program computes TILES of them, strided by the number of programs (a persistent grid when
TILES > 1), as one flattened loop (``tl.range(..., flatten=True)``, Triton's persistent-matmul
tutorial) so that the next tile's loads are issued during this tile's epilogue: measured on an
H200 at 16000x1024x256 fp16, 31.4 us tuned with 4 tiles per program against 35.9 us with one
(BENCHMARKS.md). As in the tutorials, the loads of the last row and column tiles are kept in
bounds by clamping the indices (the extra rows and columns are never stored), so with K a
multiple of BK the loop's loads carry no masks at all.
"""
import triton
import triton.language as tl

from ..triton_common import dot


@triton.jit
def _tile(tile, tiles_m, tiles_n: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of tile number ``tile`` in the grouped order."""
    per_group = GROUP_M * tiles_n
    first_m = tile // per_group * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % group_m, (tile % per_group) // group_m


@triton.jit
def linear_silu(X, W, BIAS, Y, M, N_DIM: tl.constexpr, K_DIM: tl.constexpr, BM: tl.constexpr,
                BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                EVEN_K: tl.constexpr):
    tiles_m = tl.cdiv(M, BM)
    tiles_n: tl.constexpr = (N_DIM + BN - 1) // BN
    programs = tl.num_programs(0)
    r = tl.arange(0, BM)
    k = tl.arange(0, BK)
    # the epilogue recomputes its tile from its own counter, as the persistent-matmul tutorial
    # does (a value used both before and after the flattened K loop trips its pipeliner)
    tile_out = tl.program_id(0) - programs
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, programs, flatten=True):
        pid_m, pid_n = _tile(tile, tiles_m, tiles_n, GROUP_M)
        row0 = pid_m.to(tl.int64) * BM              # offsets past 2^31 stay in the base pointer
        r_in = tl.minimum(r, M - 1 - row0).to(tl.int32)  # rows past M re-read the last one
        c_in = tl.minimum(pid_n * BN + tl.arange(0, BN), N_DIM - 1)
        if N_DIM * K_DIM >= 2**31:
            c_in = c_in.to(tl.int64)
        a_ptrs = X + row0 * K_DIM + r_in[:, None] * K_DIM + k[None, :]
        b_ptrs = W + c_in[None, :] * K_DIM + k[:, None]
        acc = tl.zeros((BM, BN), tl.float32)
        for k0 in range(0, K_DIM, BK):
            if EVEN_K:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                a = tl.load(a_ptrs, mask=(k0 + k < K_DIM)[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=(k0 + k < K_DIM)[:, None], other=0.0)
            acc = dot(a, b, acc)
            a_ptrs += BK
            b_ptrs += BK
        tile_out += programs
        pid_m, pid_n = _tile(tile_out, tiles_m, tiles_n, GROUP_M)
        row0 = pid_m.to(tl.int64) * BM
        cols = pid_n * BN + tl.arange(0, BN)
        y = acc + tl.load(BIAS + tl.minimum(cols, N_DIM - 1)).to(tl.float32)[None, :]
        y = y * tl.sigmoid(y)
        tl.store(Y + row0 * N_DIM + r[:, None] * N_DIM + cols[None, :],
                 y.to(Y.dtype.element_ty),
                 mask=(row0 + r < M)[:, None] & (cols < N_DIM)[None, :])
