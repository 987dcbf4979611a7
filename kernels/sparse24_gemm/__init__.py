"""2:4 structured-sparse GEMM: y = x · W^T (+ bias) with W [N, K] holding at most 2 non-zeros in
every 4 consecutive values along K, on the sparse tensor cores.

x [M, K] (fp16/bf16); the weight is pruned (:func:`prune_24`) and compressed (:func:`compress`)
once, into ``values`` (the kept half) and ``meta`` (2-bit positions) — ``packing.py`` states the
format; fp32 accumulation. M is dynamic; N, K (a multiple of 4) and bias are static.

Implementations (both with the weight as the sparse A operand and, like int4_gemm's, a
programmatic dependent launch that requests its first stages of ``values`` and ``meta`` before
waiting for the kernel ahead of it):

* ``cuda``: mma.sp.sync m16n8k32 (sm_80+) on the tiles of ``int4_gemm/gemm_tiles.cuh``;
* ``cuda_wgmma`` (sm_90 only, for large M; K a multiple of 8): Hopper's sparse warpgroup MMA
  (wgmma.mma_async.sp, compiled for sm_90a), the kept values put in registers by ldmatrix and x
  read by the tensor cores from shared memory, on the tiles of ``int4_gemm/wgmma_tiles.cuh``
  (int4_gemm's ``cuda_wgmma`` with another A operand);
* ``cuda_wgmma_kres`` (sm_90 only, K <= 256 and a multiple of 8, large M): the same MMA with the
  CTA's whole weight slab (128 rows x K) in registers and token tiles streaming past it, on
  ``int4_gemm/wgmma_kres.cuh`` (int4_gemm's ``cuda_wgmma_kres`` with another A operand).

Triton has no sparse-MMA primitive (as of 3.9 neither ``tl.dot`` nor Gluon's MMA
ops take metadata, and its compiler emits no ``mma.sp``), so there is no Triton path: see
docs/gemms.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import sass
from ..contract import Cost, Dim, Impl, Kernel, Launch, TensorSpec
from ..int4_gemm import (KRES_MAX_K, KRES_SPACE, WGMMA_SPACE, kres_heuristic, kres_rows, tiles,
                         wgmma_limits)
from . import packing
from .packing import compress, decompress, is_24, prune_24

__all__ = ["KERNEL", "Sparse24Weight", "prepare", "prune_24", "compress", "decompress", "is_24",
           "sparse24_linear"]

HERE = Path(__file__).parent


def _checked(shape) -> None:
    packing.check_k(shape["K"])


def _stage_bytes(config) -> int:
    s = tiles.sizes(config)
    return s["BN"] * s["BK"] + s["BN"] // 2 * s["BK"] // 4 + 2 * s["BM"] * s["BK"]


def _constants(config, shape, dtype):
    _checked(shape)
    return {**tiles.constants(config, _stage_bytes(config)), "BIAS": shape["with_bias"],
            "XVEC": 16 if shape["K"] % 8 == 0 else 8}


def _valid(config, shape, dtype, gpu):
    if shape["K"] % 4:
        return f"K={shape['K']} is not a multiple of 4"
    return tiles.invalid(config, _stage_bytes(config), gpu, shape["K"])


CUDA = Impl(
    name="cuda",
    sources=(HERE.parent / "cuda_common.cuh", HERE.parent / "int4_gemm" / "gemm_tiles.cuh",
             HERE / "sparse24.cu"),
    space=tiles.SPACE,
    launches=(Launch("sparse24_gemm", tiles.GRID, ("x", "values", "meta", "bias", "y", "M", "N", "K"),
                     threads=tiles.THREADS, smem="SMEM", pdl=True),),
    constants=_constants,
    valid=_valid,
    heuristic=lambda shape, dtype, gpu: tiles.heuristic(shape, gpu, _stage_bytes),
)


# ---- CUDA, Hopper sparse warpgroup MMA -----------------------------------------------------

WGMMA_SPACE_24 = {**WGMMA_SPACE, "RBLK": (1, 2)}


def _wgmma_smem(config) -> int:
    """Dynamic shared memory of sparse24_wgmma.cu: the stages (x tile, kept values, metadata)
    and the epilogue's transposed tile (in the stages' space when MT is 1), and 1024 bytes to
    align the swizzle atoms."""
    bn, bt = 64 * config["WG"] * config["RBLK"], config["BT"]
    ring = config["STAGES"] * (bt * 128 + bn * 64 + bn // 2 * 16)
    epilogue = bt * (bn + 8) * 2
    return (ring + epilogue if config["MT"] > 1 else max(ring, epilogue)) + 1024


def _wgmma_registers(config) -> int:
    """A rough count of live registers per thread: accumulators and the A set (9 registers, two
    with OVERLAP) of each row block, addressing."""
    return config["RBLK"] * (config["BT"] // 2 + 9 * (1 + config["OVERLAP"])) + 48


def _wgmma_constants(config, shape, dtype):
    """MIN_CTAS: two CTAs per SM where the register estimate leaves each half the file."""
    _checked(shape)
    min_ctas = 2 if 128 * config["WG"] * _wgmma_registers(config) <= 32768 else 1
    return {**config, "SMEM": _wgmma_smem(config), "MIN_CTAS": min_ctas, "BIAS": shape["with_bias"]}


def _wgmma_valid(config, shape, dtype, gpu):
    if shape["K"] % 8:
        return f"K={shape['K']} is not a multiple of 8 (x rows are copied in 16-byte chunks)"
    return wgmma_limits(CUDA_WGMMA, config, gpu, _wgmma_registers(config), _wgmma_smem(config))


def _wgmma_heuristic(shape, dtype, gpu):
    """The tiles below, with OVERLAP where this machine's compiler builds a binary that passes
    the register check (kernels/sass.py), else the same tiles without it."""
    config = _wgmma_tiles(shape, gpu)
    if config["OVERLAP"] and CUDA_WGMMA.runs_on(gpu):
        from .. import launch

        try:
            launch.cuda_cubin(CUDA_WGMMA, _wgmma_constants(config, shape, dtype), dtype, gpu.arch)
        except launch.BinaryRefused:
            config["OVERLAP"] = 0
    return config


def _wgmma_tiles(shape, gpu):
    """From the H100 sweeps of BENCHMARKS.md (2026-12-07, seventh and eighth sessions), 128
    weight rows per CTA where N allows: a grid of 128 x 128 tiles that covers the SMs takes, at
    K <= 256, four token tiles of 128 per CTA in a pipeline of 3 stages (16000x1024x256: 22.30 us;
    5 stages 26.61); at larger K one tile of 256 tokens, 4 stages and OVERLAP (4096³: 179.49
    against 192.82 without) -- or, where N is at most 256 and M / 128 CTAs still fill 90 % of the
    SMs, two row blocks per warpgroup (the whole N in one CTA), 128 tokens and 5 stages
    (16000x256x1024: 17.33 against 18.35; 125 CTAs on 132 SMs).
    A smaller grid: 64 tokens and the deepest pipeline that fits."""
    sms = gpu.sms if gpu else tiles.DEFAULT_SMS
    per_block = gpu.smem_per_block if gpu else 2 * tiles.DEFAULT_SMEM
    wg = 2 if shape["N"] > 64 else 1
    if shape["M"] > 64 and -(-shape["M"] // 128) * -(-shape["N"] // (64 * wg)) >= sms:
        if shape["K"] <= 256:
            return {"WG": wg, "BT": 128, "MT": 4, "STAGES": 3, "OVERLAP": 0, "RBLK": 1}
        if 128 < shape["N"] <= 256 and -(-shape["M"] // 128) >= 0.9 * sms:   # its grid: M / 128
            return {"WG": 2, "BT": 128, "MT": 1, "STAGES": 5, "OVERLAP": 1, "RBLK": 2}
        return {"WG": wg, "BT": 256, "MT": 1, "STAGES": 4, "OVERLAP": 1, "RBLK": 1}
    config = {"WG": wg, "BT": 64, "MT": 1, "OVERLAP": 0, "RBLK": 1}
    for stages in (5, 4, 3, 2):
        config["STAGES"] = stages
        if _wgmma_smem(config) <= per_block:
            break
    return config


CUDA_WGMMA = Impl(
    name="cuda_wgmma",
    sources=(HERE.parent / "cuda_common.cuh", HERE.parent / "int4_gemm" / "gemm_tiles.cuh",
             HERE.parent / "wgmma.cuh", HERE.parent / "int4_gemm" / "wgmma_tiles.cuh",
             HERE / "sparse24_wgmma.cu"),
    space=WGMMA_SPACE_24,
    launches=(Launch("sparse24_wgmma", ("cdiv(M, BT * MT)", "cdiv(N, 64 * WG * RBLK)", "1"),
                     ("x", "values", "meta", "bias", "y", "M", "N", "K"),
                     threads="128 * WG", smem="SMEM", pdl=True),),
    constants=_wgmma_constants,
    valid=_wgmma_valid,
    heuristic=_wgmma_heuristic,
    arch_suffix="a",
    ccs=((9, 0),),
    binary_check=sass.overlap_check,   # OVERLAP's two register sets must stay apart in the SASS
)


# ---- CUDA, Hopper sparse warpgroup MMA with the weight slab resident (K <= 256) -------------

def _kres_smem(config, shape) -> int:
    """x buffers of all of K, then the weight slab (values and metadata; prologue) or the
    epilogue's tile in the same space, and 1024 bytes to align the swizzle atoms."""
    vp, kp = kres_rows(shape)
    return config["BUFS"] * config["BT"] * kp * 2 + max(128 * vp + 64 * vp // 4, config["BT"] * 136 * 2) + 1024


def _kres_constants(config, shape, dtype):
    _checked(shape)
    vp, kp = kres_rows(shape)
    return {**config, "KC": shape["K"], "VP": vp, "KP": kp, "SMEM": _kres_smem(config, shape),
            "BIAS": shape["with_bias"]}


def _kres_valid(config, shape, dtype, gpu):
    if shape["K"] % 8:
        return f"K={shape['K']} is not a multiple of 8 (x rows are copied in 16-byte chunks)"
    if shape["K"] > KRES_MAX_K:
        return f"K={shape['K']}: this kernel keeps all of K of its weight rows in registers (K <= {KRES_MAX_K})"
    if not CUDA_WGMMA_KRES.runs_on(gpu):
        return "wgmma needs an sm_90 GPU (compiled for sm_90a)"
    smem = _kres_smem(config, shape)
    if smem > gpu.smem_per_block:
        return f"{smem} bytes of shared memory (limit {gpu.smem_per_block})"
    return None


CUDA_WGMMA_KRES = Impl(
    name="cuda_wgmma_kres",
    sources=(HERE.parent / "cuda_common.cuh", HERE.parent / "int4_gemm" / "gemm_tiles.cuh",
             HERE.parent / "wgmma.cuh", HERE.parent / "int4_gemm" / "wgmma_tiles.cuh",
             HERE.parent / "int4_gemm" / "wgmma_kres.cuh", HERE / "sparse24_wgmma_kres.cu"),
    space=KRES_SPACE,
    launches=(Launch("sparse24_wgmma_kres", ("cdiv(M, BT * MT)", "cdiv(N, 128)", "1"),
                     ("x", "values", "meta", "bias", "y", "M", "N", "K"),
                     threads="256", smem="SMEM", pdl=True),),
    constants=_kres_constants,
    valid=_kres_valid,
    heuristic=kres_heuristic,   # int4_gemm's: at 16000x1024x256 on an H100 the best of the 12
                                # configs that fit (18.75 us; BENCHMARKS.md, seventh session)
    arch_suffix="a",
    ccs=((9, 0),),
)


# ---- the declaration -----------------------------------------------------------------------

def dense_weight(inputs, shape) -> torch.Tensor:
    """The dense (pruned) weight [N, K], once per ``values`` tensor: what cuBLAS gets."""
    return tiles.memoised(inputs["values"], lambda: decompress(
        inputs["values"], inputs["meta"], shape["N"], shape["K"]).contiguous())


def _reference(inputs, shape, scalars):
    return tiles.reference_linear(inputs, shape, decompress(
        inputs["values"], inputs["meta"], shape["N"], shape["K"]))


def _baseline(inputs, shape, scalars):
    return tiles.baseline_linear(inputs, shape, dense_weight(inputs, shape))


def _make_inputs(shape, dtype, device, gen):
    _checked(shape)
    w = torch.randn(shape["N"], shape["K"], generator=gen, device=device) / (shape["K"] / 2) ** 0.5
    return {**compress(prune_24(w), dtype), **tiles.activations(shape, dtype, device, gen)}


def _cost(shape, dtype):
    """Bytes: x, the kept values, 4 bits of metadata per 2 of them, y. Flops: the non-zero
    products only (half the dense 2MNK)."""
    m, n, k = shape["M"], shape["N"], shape["K"]
    return Cost(bytes=2 * m * k + n * k + n * k // 8 + 2 * m * n + 2 * n * shape["with_bias"],
                flops=m * n * k)


def _tune_shapes(dims):
    m = dims.batch * dims.seq_len
    return [{"M": mm, "N": n, "K": k, "with_bias": 1}
            for n, k in ((dims.ffn, dims.d_model), (dims.d_model, dims.ffn)) if k % 4 == 0
            for mm in (16, m)]


KERNEL = Kernel(
    name="sparse24_gemm",
    doc=__doc__,
    dims=(Dim("M", 1, 2**31 - 1, dynamic=True), Dim("N", 1, 65536), Dim("K", 4, 65536),
          Dim("with_bias", 0, 1)),
    tensors=(TensorSpec("x", ("M", "K")),
             TensorSpec("values", ("cdiv(N, 16) * 16", "cdiv(K, 64) * 32")),
             TensorSpec("meta", ("cdiv(N, 16) * 8", "cdiv(K, 64) * 4"), dtype="int32"),
             TensorSpec("bias", ("N",), when="with_bias"),
             TensorSpec("y", ("M", "N"), role="out")),
    scalars={},
    dtypes=("float16", "bfloat16"),
    impls=(CUDA, CUDA_WGMMA, CUDA_WGMMA_KRES),
    reference=_reference,
    baseline=_baseline,
    make_inputs=_make_inputs,
    cost=_cost,
    tune_shapes=_tune_shapes,
    examples=({"M": 1, "N": 33, "K": 36, "with_bias": 1},
              {"M": 45, "N": 64, "K": 200, "with_bias": 0},
              {"M": 130, "N": 48, "K": 64, "with_bias": 1}),
)


@dataclass(frozen=True)
class Sparse24Weight:
    """A weight compressed by :func:`prepare`: its tensors and the dims they were made for."""
    tensors: dict
    n: int
    k: int


def prepare(w: torch.Tensor, prune: bool = False, dtype: torch.dtype | None = None) -> Sparse24Weight:
    """Compress a 2:4-sparse weight [N, K] once (``prune=True`` prunes it by magnitude first);
    a weight that is not 2:4 is refused with ValueError."""
    tensors = tiles.settled(compress(prune_24(w) if prune else w, dtype))
    return Sparse24Weight(tensors, w.shape[0], w.shape[1])


def sparse24_linear(x: torch.Tensor, weight: Sparse24Weight, bias: torch.Tensor | None = None,
                    impl: str = "auto", config=None) -> torch.Tensor:
    """y = x · W^T (+ bias) for ``weight = prepare(W)``; x [..., K] contiguous, in the dtype of
    the weight's values; y [..., N]. ``impl``: one of the kernel's implementations, or "auto" (the
    tuned winner's, else by shape and GPU: ``int4_gemm.tiles.auto_impl``). Everything is checked
    before anything launches."""
    return tiles.linear(KERNEL, x, weight, Sparse24Weight, {}, impl, config, bias)
