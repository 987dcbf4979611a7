"""A persistent Triton GEMM with the epilogues of the Conformer's Linears (listed in each user's
``Impl.sources``, so a change here re-tunes them).

Y[M, N] = epilogue(X[M, K] @ W[:N]^T + BIAS[:N]) over [BM, BN] output tiles:

* ``SILU``: SiLU (the feed-forward module's first Linear);
* ``MASKED``: 0 at padded frames (the conv module's second pointwise conv): rows are frames of a
  flattened batch, row = b * T + t, padded where t >= LEN[b] clamped to [0, T] (SILU ignores
  LEN and T).

Tiles are ordered in groups of GROUP_M row tiles that sweep the columns together (Triton's
matmul tutorial, "L2 cache optimizations"), so a row tile of X is read from DRAM about once.
Each program computes every ``num_programs``-th tile (a persistent grid when there are fewer
programs than tiles) as one flattened loop (``tl.range(..., flatten=True)``, Triton's
persistent-matmul tutorial), so that the next tile's loads are issued during this tile's
epilogue. As in the tutorials, the loads of the last row and column tiles stay in bounds by
clamping the indices (the extra rows and columns are never stored), so with K a multiple of BK
the loop's loads carry no masks at all; rows past a sequence's length are computed and dropped,
so their content (even NaN) never reaches a stored value.
"""
import triton
import triton.language as tl

from .triton_common import dot

SILU = tl.constexpr(0)
MASKED = tl.constexpr(1)


@triton.jit
def _tile(tile, tiles_m, tiles_n: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of tile number ``tile`` in the grouped order."""
    per_group = GROUP_M * tiles_n
    first_m = tile // per_group * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % group_m, (tile % per_group) // group_m


@triton.jit
def persistent_gemm(X, W, BIAS, Y, LEN, M, T, N_DIM: tl.constexpr, K_DIM: tl.constexpr,
                    EPILOGUE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
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
        if EPILOGUE == SILU:
            y = y * tl.sigmoid(y)
        else:
            rows = row0 + r
            ln = tl.load(LEN + rows // T, mask=rows < M, other=0)
            y = tl.where((rows % T < tl.minimum(tl.maximum(ln, 0), T))[:, None], y, 0.0)
        tl.store(Y + row0 * N_DIM + r[:, None] * N_DIM + cols[None, :],
                 y.to(Y.dtype.element_ty),
                 mask=(row0 + r < M)[:, None] & (cols < N_DIM)[None, :])


TILES = (1, 2, 4, 8)          # tiles per program: the configs' choices
PROGRAMS_PER_SM = 2           # what two 128x128x64, 3-stage fp16 tiles' shared memory allows on Hopper


def tiles_per_program(tiles: int, gpu) -> int:
    """The most tiles per program (of :data:`TILES`) that still leaves about PROGRAMS_PER_SM
    programs on every multiprocessor of ``gpu`` (one tile each when the GPU is not known)."""
    want = 0.9 * PROGRAMS_PER_SM * gpu.sms if gpu else tiles
    return max([t for t in TILES if -(-tiles // t) >= want] or [1])
