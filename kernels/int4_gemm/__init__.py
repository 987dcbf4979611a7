"""W4A16: y = x · W^T (+ bias) with a 4-bit weight quantised per output channel in groups along K.

x [M, K] (fp16/bf16), the weight prepared once by :func:`prepare` (``packing.py`` states the
quantisation and the packed format: ``qweight`` int32 nibbles, ``scales`` in the activation dtype,
``zeros`` uint8 with ``asym=1``), W[n, k] = (q[n, k] - z[k // group, n]) · s[k // group, n] with
z = 8 when symmetric; fp32 accumulation. M is dynamic (1 … millions); N, K, group (32/64/128,
dividing K), asym and bias are static.

Implementations:

* ``cuda``: mma.sync m16n8k16 with the weight as the A operand (16 rows) and the tokens as B
  (8 columns), nibbles dequantised in registers two at a time (magic-number conversion), a
  cp.async pipeline, and warps splitting K inside the CTA — one kernel for GEMV-like small M
  and compute-bound large M. With at most two token tiles per warp (WM <= 2) the tensor cores
  take q - z unscaled into per-group fp32 partial sums that are scaled once per group, and each
  thread's copies have fixed offsets (docs/gemms.md). A programmatic dependent launch on sm_90+: it requests its first
  stages of ``qweight``, ``scales`` and ``zeros`` before waiting for the kernel ahead of it, so
  that kernel must not write them (engine constants it is not; :func:`prepare` synchronises).
* ``cuda_wgmma`` (sm_90 only, for large M): Hopper's warpgroup MMA (compiled for sm_90a), the
  same packed words dequantised into wgmma's register A operand and the x tile read by the
  tensor cores from shared memory (128-byte swizzle); 64 or 128 weight rows x 64-256 tokens
  per CTA; the same pipeline, PDL and weight-first prologue as ``cuda``.
* ``cuda_wgmma_kres`` (sm_90 only, K <= 256, large M): the CTA's whole weight slab (128 rows x
  K) dequantised once into registers; token tiles of all of K stream past it (x only), each
  tile's wgmma overlapping the previous tile's epilogue (docs/gemms.md).
* ``triton``: per K step, the x tile as it lies and the packed words dequantised in registers
  into natural-k weight tiles, one ``tl.dot`` per half of the N tile (rows n and n + 8).
* ``triton_splitk``: the same with K split over SPLIT_K programs and a reduction launch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..contract import Cost, Dim, Impl, Kernel, Launch, TensorSpec
from . import packing, tiles, triton_impl
from .packing import GROUPS, dequantize

__all__ = ["KERNEL", "Int4Weight", "int4_linear", "prepare", "dequantize"]

HERE = Path(__file__).parent
CDIV16, CDIV64 = "cdiv(N, 16)", "cdiv(K, 64)"


def shape_error(shape) -> str | None:
    """Why a shape's static dims cannot be served (None when they can)."""
    if shape["group"] not in GROUPS:
        return f"group={shape['group']} is not one of {GROUPS}"
    if shape["K"] % shape["group"]:
        return f"K={shape['K']} is not a multiple of the group size {shape['group']}"
    return None


def _checked(shape) -> None:
    reason = shape_error(shape)
    if reason:
        raise ValueError(f"int4_gemm: {reason}")


# ---- CUDA ----------------------------------------------------------------------------------

_CUDA_ARGS = ("x", "qweight", "scales", "zeros", "bias", "y", "M", "N", "K")   # both kernels

def _cuda_stage_bytes(config, shape) -> int:
    s = tiles.sizes(config)
    sg = max(1, s["BK"] // shape["group"])
    return s["BN"] // 2 * s["BK"] + 2 * s["BM"] * s["BK"] + sg * s["BN"] * (2 + shape["asym"])


def _cuda_constants(config, shape, dtype):
    _checked(shape)
    return {**tiles.constants(config, _cuda_stage_bytes(config, shape)), "GROUP": shape["group"],
            "ASYM": shape["asym"], "BIAS": shape["with_bias"]}


def _cuda_valid(config, shape, dtype, gpu):
    return shape_error(shape) or tiles.invalid(config, _cuda_stage_bytes(config, shape), gpu, shape["K"])


def _cuda_heuristic(shape, dtype, gpu):
    return tiles.heuristic(shape, gpu, lambda c: _cuda_stage_bytes(c, shape))


CUDA = Impl(
    name="cuda",
    sources=(HERE.parent / "cuda_common.cuh", HERE / "gemm_tiles.cuh", HERE / "dequant.cuh",
             HERE / "w4a16.cu"),
    space=tiles.SPACE,
    launches=(Launch("w4a16_gemm", tiles.GRID,
                     _CUDA_ARGS,
                     threads=tiles.THREADS, smem="SMEM", pdl=True),),
    constants=_cuda_constants,
    valid=_cuda_valid,
    heuristic=_cuda_heuristic,
)


# ---- CUDA, Hopper warpgroup MMA ------------------------------------------------------------

WGMMA_SPACE = {"WG": (1, 2), "BT": (64, 128, 256), "MT": (1, 2, 4, 8), "STAGES": (2, 3, 4, 5),
               "OVERLAP": (0, 1)}
# This kernel's: no OVERLAP. With a stage's MMAs left running while the next is dequantised, ptxas
# gave both register sets the same registers and the dequantisation overwrote the A fragments
# the running wgmma read (wrong results on an H100, 2026-12-07; kernels/sass.py finds it
# in the SASS). sparse24_gemm's cuda_wgmma keeps OVERLAP: its SASS passes that check.
WGMMA_SPACE_W4 = {**WGMMA_SPACE, "OVERLAP": (0,)}


def _wgmma_smem(config, shape) -> int:
    """Dynamic shared memory of w4a16_wgmma.cu: the stages (x tile, packed weight, scales,
    zeros) and the epilogue's transposed tile (in the stages' space when MT is 1), and 1024
    bytes to align the swizzle atoms."""
    bn, bt = 64 * config["WG"], config["BT"]
    sg = max(1, 64 // shape["group"])
    ring = config["STAGES"] * (bt * 128 + bn // 2 * 64 + sg * bn * (2 + shape["asym"]))
    epilogue = bt * (bn + 8) * 2
    return (ring + epilogue if config["MT"] > 1 else max(ring, epilogue)) + 1024


def _wgmma_registers(config) -> int:
    """A rough count of live registers per thread: accumulators, A fragments, words, scales,
    addressing."""
    return config["BT"] // 2 + 64


def _wgmma_constants(config, shape, dtype):
    """MIN_CTAS: __launch_bounds__ asks for two CTAs per SM where the estimate leaves each
    half the register file."""
    _checked(shape)
    min_ctas = 2 if 128 * config["WG"] * _wgmma_registers(config) <= 32768 else 1
    return {**config, "SMEM": _wgmma_smem(config, shape), "MIN_CTAS": min_ctas,
            "GROUP": shape["group"], "ASYM": shape["asym"], "BIAS": shape["with_bias"]}


def wgmma_limits(impl: Impl, config, gpu, registers: int, smem: int) -> str | None:
    """Why a config of a kernel on wgmma_tiles.cuh (this one's ``cuda_wgmma``, sparse24_gemm's)
    cannot run on ``gpu``: not sm_90, OVERLAP without the stages for it, ``registers`` (the
    kernel's estimate per thread) or ``smem`` (its dynamic shared memory) past the limits."""
    if not impl.runs_on(gpu):
        return "wgmma needs an sm_90 GPU (compiled for sm_90a)"
    if config["OVERLAP"] and config["STAGES"] < 3:
        return "OVERLAP needs 3 stages or more (one in the tensor cores, one loading, one ready)"
    limit = min(255, 65536 // (128 * config["WG"]))
    if registers > limit:
        return f"about {registers} registers per thread (limit {limit})"
    if smem > gpu.smem_per_block:
        return f"{smem} bytes of shared memory (limit {gpu.smem_per_block})"
    return None


def _wgmma_valid(config, shape, dtype, gpu):
    return shape_error(shape) or wgmma_limits(CUDA_WGMMA, config, gpu, _wgmma_registers(config),
                                              _wgmma_smem(config, shape))


def _wgmma_heuristic(shape, dtype, gpu):
    """Large M (a grid of 128 x 128 tiles that covers the SMs), from the sweeps of BENCHMARKS.md
    (H100, 2026-12-07, fifth session, WG 2): at K <= 256 four token tiles of 128 per CTA in one
    pipeline of 3 stages (16000x1024x256: 24.30 us against 26.62 with 2 stages); at larger K one
    tile of 256 tokens and the deepest pipeline that fits (16000x256x1024: 5 stages, 20.38).
    Otherwise 64 tokens, and the deepest pipeline that leaves room for two CTAs per SM."""
    m, n, k = shape["M"], shape["N"], shape["K"]
    sms = gpu.sms if gpu else tiles.DEFAULT_SMS
    per_block = gpu.smem_per_block if gpu else 2 * tiles.DEFAULT_SMEM
    wg = 2 if n > 64 else 1
    if m > 64 and -(-m // 128) * -(-n // 128) >= sms:
        if k <= 256:
            return {"WG": wg, "BT": 128, "MT": 4, "STAGES": 3, "OVERLAP": 0}
        config = {"WG": wg, "BT": 256, "MT": 1, "OVERLAP": 0}
        for stages in (5, 4, 3, 2):
            config["STAGES"] = stages
            if _wgmma_smem(config, shape) <= per_block:
                return config
    config = {"WG": wg, "BT": 64, "MT": 1, "OVERLAP": 0}
    per_sm = gpu.smem_per_sm if gpu else 2 * tiles.DEFAULT_SMEM
    for stages in (4, 3, 2):
        config["STAGES"] = stages
        if 2 * (_wgmma_smem(config, shape) + 1024) <= per_sm:
            break
    return config


CUDA_WGMMA = Impl(
    name="cuda_wgmma",
    sources=(HERE.parent / "cuda_common.cuh", HERE / "gemm_tiles.cuh", HERE / "dequant.cuh",
             HERE.parent / "wgmma.cuh", HERE / "wgmma_tiles.cuh", HERE / "w4a16_wgmma.cu"),
    space=WGMMA_SPACE_W4,
    launches=(Launch("w4a16_wgmma", ("cdiv(M, BT * MT)", "cdiv(N, 64 * WG)", "1"),
                     _CUDA_ARGS,
                     threads="128 * WG", smem="SMEM", pdl=True),),
    constants=_wgmma_constants,
    valid=_wgmma_valid,
    heuristic=_wgmma_heuristic,
    arch_suffix="a",
    ccs=((9, 0),),
)


# ---- CUDA, Hopper warpgroup MMA with the weight slab resident (K <= 256) ---------------------

KRES_SPACE = {"BT": (64, 128), "MT": (2, 4, 8, 16), "BUFS": (2, 3)}
KRES_MAX_K = 256


def kres_rows(shape) -> tuple[int, int]:
    """(K rounded up to 64: the packed weight's row bytes here, the 2:4 values' in
    sparse24_gemm), and the x tile's row length of wgmma_kres.cuh (64, 128 or 256: its 16-byte
    chunks per row divide the CTA's 256 threads)."""
    qp = -(-shape["K"] // 64) * 64
    return qp, max(64, 1 << (qp - 1).bit_length())


def _kres_smem(config, shape) -> int:
    """x buffers of all of K, then the weight slab (prologue) or the epilogue's tile in the same
    space, and 1024 bytes to align the swizzle atoms."""
    qp, kp = kres_rows(shape)
    slab = 64 * qp + shape["K"] // shape["group"] * 128 * (2 + shape["asym"])
    return config["BUFS"] * config["BT"] * kp * 2 + max(slab, config["BT"] * 136 * 2) + 1024


def _kres_constants(config, shape, dtype):
    _checked(shape)
    qp, kp = kres_rows(shape)
    return {**config, "KC": shape["K"], "QP": qp, "KP": kp, "SMEM": _kres_smem(config, shape),
            "GROUP": shape["group"], "ASYM": shape["asym"], "BIAS": shape["with_bias"]}


def _kres_valid(config, shape, dtype, gpu):
    reason = shape_error(shape)
    if reason:
        return reason
    if not CUDA_WGMMA_KRES.runs_on(gpu):
        return "wgmma needs an sm_90 GPU (compiled for sm_90a)"
    if shape["K"] > KRES_MAX_K:
        return f"K={shape['K']}: this kernel keeps all of K of its weight rows in registers (K <= {KRES_MAX_K})"
    smem = _kres_smem(config, shape)
    if smem > gpu.smem_per_block:
        return f"{smem} bytes of shared memory (limit {gpu.smem_per_block})"
    return None


def kres_heuristic(shape, dtype, gpu):
    """(Also sparse24_gemm's.) 64-token tiles, three x buffers, and as many tiles per CTA as fill
    the SMs once with one CTA each: at 16000x1024x256 on an H100 that is MT 16, the fastest of the 16 configs (19.97 us
    against cuBLAS's 21.83; BT 128 MT 8 with 2 buffers 21.60) — BENCHMARKS.md, H100,
    2026-12-07, fifth session."""
    sms = gpu.sms if gpu else tiles.DEFAULT_SMS
    ctas_n = -(-shape["N"] // 128)
    for mt in KRES_SPACE["MT"]:
        if -(-shape["M"] // (64 * mt)) * ctas_n <= sms:
            break
    return {"BT": 64, "MT": mt, "BUFS": 3}


CUDA_WGMMA_KRES = Impl(
    name="cuda_wgmma_kres",
    sources=(HERE.parent / "cuda_common.cuh", HERE / "gemm_tiles.cuh", HERE / "dequant.cuh",
             HERE.parent / "wgmma.cuh", HERE / "wgmma_tiles.cuh", HERE / "wgmma_kres.cuh",
             HERE / "w4a16_wgmma_kres.cu"),
    space=KRES_SPACE,
    launches=(Launch("w4a16_wgmma_kres", ("cdiv(M, BT * MT)", "cdiv(N, 128)", "1"),
                     _CUDA_ARGS,
                     threads="256", smem="SMEM", pdl=True),),
    constants=_kres_constants,
    valid=_kres_valid,
    heuristic=kres_heuristic,
    arch_suffix="a",
    ccs=((9, 0),),
)


# ---- Triton --------------------------------------------------------------------------------

TRITON_SPACE = {"BLOCK_M": (16, 32, 64, 128), "BLOCK_N": (32, 64, 128, 256),
                "BLOCK_K": (64, 128, 256), "num_warps": (4, 8), "num_stages": (2, 3, 4, 5)}
SPLITK_SPACE = {**TRITON_SPACE, "SPLIT_K": (2, 4, 8, 16)}
REDUCE_BLOCK = 1024


def _triton_constants(config, shape, dtype):
    _checked(shape)
    return {"N_DIM": shape["N"], "K_DIM": shape["K"], "GROUP": shape["group"], "ASYM": shape["asym"],
            "BIAS": shape["with_bias"], "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
            "BLOCK_K": config["BLOCK_K"], "SPLIT_K": config.get("SPLIT_K", 1),
            "BLOCK": REDUCE_BLOCK}


def _triton_valid(config, shape, dtype, gpu):
    reason = shape_error(shape)
    if reason:
        return reason
    bm, bn, bk, warps = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"], config["num_warps"]
    threads = 32 * warps
    if bm * bn > 128 * threads:
        return f"{bm * bn // threads} fp32 accumulators per thread would spill"
    if bk * bn > 128 * threads:
        return f"a {bk}x{bn} weight tile is {bk * bn // threads} dequantised weights per thread"
    # x and the packed words per stage, and the dot operands (seen: Triton 3.9 for sm_90 takes
    # 15-53 KB for the tiles of this space's middle, under this estimate)
    smem = config["num_stages"] * (2 * bm * bk + bn * bk // 2) + 2 * bk * bn
    cap = gpu.smem_per_block if gpu else tiles.DEFAULT_SMEM
    if smem > cap:
        return f"about {smem} bytes of shared memory (limit {cap})"
    if (config.get("SPLIT_K", 1) - 1) * bk >= shape["K"]:
        return f"SPLIT_K={config['SPLIT_K']} x BLOCK_K={bk} leaves a part of K={shape['K']} empty"
    return None


def _pow2_at_least(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, 1 << (max(n, 1) - 1).bit_length()))


def _triton_heuristic(shape, dtype, gpu, split=False):
    """From the H100 sweeps (docs/gemms.md) of the previous, per-nibble design — not yet re-swept
    for the natural-k one: small M wants long K steps and narrow N tiles (or, split, 4-8 parts);
    large M 128 x 256 tiles."""
    m, k = shape["M"], shape["K"]
    if m > 64:
        config = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "num_warps": 8}
    elif split:
        config = {"BLOCK_M": _pow2_at_least(m, 16, 64), "BLOCK_N": 64 if m <= 8 else 128,
                  "BLOCK_K": 128 if k >= 256 else 64, "num_warps": 4}
    else:
        config = {"BLOCK_M": _pow2_at_least(m, 16, 64), "BLOCK_N": 64 if m <= 8 else 32,
                  "BLOCK_K": 256 if k >= 1024 else 128 if k >= 256 else 64, "num_warps": 4}
    if split:   # at least two BLOCK_K steps per part where K allows
        most = 8 if m <= 8 else 4
        config["SPLIT_K"] = max(s for s in SPLITK_SPACE["SPLIT_K"]
                                if s <= max(2, min(most, k // config["BLOCK_K"] // 2)))
    for stages in (4, 3, 2) if m <= 64 else (3, 2):
        config["num_stages"] = stages
        if _triton_valid(config, shape, dtype, gpu) is None:
            break
    return config


_GEMM_ARGS = ("x", "qweight", "scales", "zeros", "bias", "y", "ws", "M")

TRITON = Impl(
    name="triton",
    sources=(HERE / "triton_impl.py",),
    space=TRITON_SPACE,
    launches=(Launch("w4a16_gemm", ("cdiv(M, BLOCK_M)", "cdiv(N, BLOCK_N)", "1"), _GEMM_ARGS,
                     num_stages="num_stages"),),
    constants=_triton_constants,
    valid=_triton_valid,
    heuristic=_triton_heuristic,
    fns={"w4a16_gemm": triton_impl.w4a16_gemm},
    workspaces=(("ws", "0"),),
)

TRITON_SPLITK = Impl(
    name="triton_splitk",
    sources=(HERE / "triton_impl.py",),
    space=SPLITK_SPACE,
    launches=(Launch("w4a16_gemm", ("cdiv(M, BLOCK_M)", "cdiv(N, BLOCK_N)", "SPLIT_K"), _GEMM_ARGS,
                     num_stages="num_stages"),
              Launch("w4a16_splitk_reduce", ("cdiv(M * N, BLOCK)", "1", "1"), ("ws", "bias", "y", "M"),
                     num_warps="4")),
    constants=_triton_constants,
    valid=_triton_valid,
    heuristic=lambda shape, dtype, gpu: _triton_heuristic(shape, dtype, gpu, split=True),
    fns={"w4a16_gemm": triton_impl.w4a16_gemm,
         "w4a16_splitk_reduce": triton_impl.w4a16_splitk_reduce},
    workspaces=(("ws", "SPLIT_K * M * N * 4"),),
)


# ---- the declaration -----------------------------------------------------------------------

def dense_weight(inputs, shape) -> torch.Tensor:
    """The dequantised weight [N, K] in the activation dtype, once per ``qweight`` tensor: what a
    user without this kernel would hold, and feed to cuBLAS."""
    return tiles.memoised(inputs["qweight"], lambda: dequantize(
        inputs["qweight"], inputs["scales"], inputs.get("zeros"), shape["N"], shape["K"],
        shape["group"]).to(inputs["x"].dtype))


def _reference(inputs, shape, scalars):
    return tiles.reference_linear(inputs, shape, dequantize(
        inputs["qweight"], inputs["scales"], inputs.get("zeros"), shape["N"], shape["K"],
        shape["group"]))


def _baseline(inputs, shape, scalars):
    return tiles.baseline_linear(inputs, shape, dense_weight(inputs, shape))


def _make_inputs(shape, dtype, device, gen):
    _checked(shape)
    w = torch.randn(shape["N"], shape["K"], generator=gen, device=device) / shape["K"] ** 0.5
    return {**packing.pack_weight(w, shape["group"], bool(shape["asym"]), dtype),
            **tiles.activations(shape, dtype, device, gen)}


def _cost(shape, dtype):
    m, n, k, groups = shape["M"], shape["N"], shape["K"], shape["K"] // shape["group"]
    weight = n * k // 2 + groups * n * (2 + shape["asym"]) + 2 * n * shape["with_bias"]
    return Cost(bytes=2 * m * k + weight + 2 * m * n, flops=2 * m * n * k)


def _tune_shapes(dims):
    shapes = []
    for n, k in ((dims.ffn, dims.d_model), (dims.d_model, dims.ffn)):
        group = next((g for g in (128, 64, 32) if k % g == 0), None)
        if group is None:
            continue
        for m in (16, dims.batch * dims.seq_len):
            shapes.append({"M": m, "N": n, "K": k, "group": group, "asym": 1, "with_bias": 1})
    return shapes


KERNEL = Kernel(
    name="int4_gemm",
    doc=__doc__,
    dims=(Dim("M", 1, 2**31 - 1, dynamic=True), Dim("N", 1, 65536), Dim("K", 32, 65536),
          Dim("group", 32, 128), Dim("asym", 0, 1), Dim("with_bias", 0, 1)),
    tensors=(TensorSpec("x", ("M", "K")),
             TensorSpec("qweight", (f"{CDIV16} * 8", f"{CDIV64} * 16"), dtype="int32"),
             TensorSpec("scales", ("K // group", f"{CDIV16} * 16")),
             TensorSpec("zeros", ("K // group", f"{CDIV16} * 16"), dtype="uint8", when="asym"),
             TensorSpec("bias", ("N",), when="with_bias"),
             TensorSpec("y", ("M", "N"), role="out")),
    scalars={},
    dtypes=("float16", "bfloat16"),
    impls=(CUDA, CUDA_WGMMA, CUDA_WGMMA_KRES, TRITON, TRITON_SPLITK),
    reference=_reference,
    baseline=_baseline,
    make_inputs=_make_inputs,
    cost=_cost,
    tune_shapes=_tune_shapes,
    examples=({"M": 1, "N": 33, "K": 96, "group": 32, "asym": 1, "with_bias": 1},
              {"M": 37, "N": 24, "K": 192, "group": 64, "asym": 0, "with_bias": 0},
              {"M": 19, "N": 136, "K": 384, "group": 128, "asym": 1, "with_bias": 1}),
)


@dataclass(frozen=True)
class Int4Weight:
    """A weight prepared by :func:`prepare`: its packed tensors and the dims they were made for."""
    tensors: dict
    n: int
    k: int
    group: int

    @property
    def asym(self) -> bool:
        return "zeros" in self.tensors


def prepare(w: torch.Tensor, group: int = 128, asym: bool = True,
            dtype: torch.dtype | None = None) -> Int4Weight:
    """Quantise and pack a float weight [N, K] once, at build time (see ``packing.py``)."""
    tensors = tiles.settled(packing.pack_weight(w, group, asym, dtype))
    return Int4Weight(tensors, w.shape[0], w.shape[1], group)


def int4_linear(x: torch.Tensor, weight: Int4Weight, bias: torch.Tensor | None = None,
                impl: str = "auto", config=None) -> torch.Tensor:
    """y = x · W^T (+ bias) for ``weight = prepare(W, ...)``; x [..., K] contiguous, fp16/bf16 in
    the dtype of the weight's scales; y [..., N]. ``impl``: one of the kernel's implementations,
    or "auto" (the tuned winner's, else by shape and GPU: ``tiles.auto_impl``). Everything is
    checked before anything launches."""
    if isinstance(weight, Int4Weight):
        _checked({"K": weight.k, "group": weight.group})
    return tiles.linear(KERNEL, x, weight, Int4Weight,
                        {"group": getattr(weight, "group", 0), "asym": int(getattr(weight, "asym", 0))},
                        impl, config, bias)
