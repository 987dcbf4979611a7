"""Config space, constants, rules and defaults of the tensor-core GEMM tiles (gemm_tiles.cuh),
shared by int4_gemm and sparse24_gemm.

A CTA computes a BN x BM tile of y^T (BN = 16 WN WARPS_N weight rows, BM = 8 WM WARPS_M tokens);
each stage of its cp.async pipeline covers BK = 64 WARPS_K of K, one 64-wide slice per WARPS_K
warp, and the WARPS_K partial tiles are summed in the epilogue. SPLIT > 1 (sm_90+): a cluster of
SPLIT CTAs shares the tile, each taking 1/SPLIT of the k-tiles, summed through distributed shared
memory.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from .. import gpu as gpus
from .. import launch
from ..gpu import GpuSpec

SPACE = {"WN": (1, 2, 4), "WM": (1, 2, 4, 8), "WARPS_N": (1, 2, 4), "WARPS_M": (1, 2, 4),
         "WARPS_K": (1, 2, 4, 8, 16), "STAGES": (2, 3, 4, 5), "SPLIT": (1, 2, 4)}
MAX_THREADS = 512
DEFAULT_SMEM = 101376        # the smallest opt-in limit we ship for (sm_86 / sm_89), when no GPU is named
DEFAULT_SMS = 132


def sizes(config) -> dict[str, int]:
    """BN, BM, BK and THREADS of a config."""
    return {"BN": 16 * config["WN"] * config["WARPS_N"], "BM": 8 * config["WM"] * config["WARPS_M"],
            "BK": 64 * config["WARPS_K"],
            "THREADS": 32 * config["WARPS_N"] * config["WARPS_M"] * config["WARPS_K"]}


def smem_bytes(config, stage_bytes: int) -> int:
    """Dynamic shared memory: the pipeline's stages, or the epilogue's fp32 partial tiles (and
    with SPLIT > 1 their sum, which the cluster reads)."""
    s = sizes(config)
    epilogue = config["WARPS_K"] * s["BM"] * (s["BN"] + 4) * 4
    if config["SPLIT"] > 1:
        epilogue += s["BM"] * s["BN"] * 4
    return max(config["STAGES"] * stage_bytes, epilogue)


def constants(config, stage_bytes: int) -> dict[str, int]:
    return {**{k: config[k] for k in SPACE}, "SMEM": smem_bytes(config, stage_bytes)}


# Launch geometry over the config's names (the CUDA sources derive BN, BM, BK the same way).
GRID = ("cdiv(M, 8 * WM * WARPS_M)", "cdiv(N, 16 * WN * WARPS_N)", "SPLIT")
THREADS = "32 * WARPS_N * WARPS_M * WARPS_K"


def registers(config) -> int:
    """A rough count of live 32-bit registers per thread: accumulators, B and A fragments,
    addressing. Past ~255 (or the per-thread share of the register file) ptxas spills."""
    return 4 * config["WN"] * config["WM"] + 4 * config["WM"] + 8 * config["WN"] + 48


def invalid(config, stage_bytes: int, gpu: GpuSpec | None, k: int) -> str | None:
    s = sizes(config)
    if config["SPLIT"] > 1:
        if gpu is None or gpu.cc < (9, 0):
            return "SPLIT > 1 needs thread-block clusters (sm_90 or newer)"
        if config["SPLIT"] > -(-k // s["BK"]):
            return f"SPLIT={config['SPLIT']} exceeds the {-(-k // s['BK'])} k-tiles of K={k}"
    if s["THREADS"] > MAX_THREADS:
        return f"{s['THREADS']} threads per CTA (at most {MAX_THREADS})"
    limit = min(255, 65536 // s["THREADS"])
    if registers(config) > limit:
        return f"about {registers(config)} registers per thread (limit {limit})"
    smem = smem_bytes(config, stage_bytes)
    cap = gpu.smem_per_block if gpu else DEFAULT_SMEM
    if smem > cap:
        return f"{smem} bytes of shared memory (limit {cap})"
    return None


def heuristic(shape, gpu: GpuSpec | None, stage_bytes) -> dict[str, int]:
    """The untuned default, from sweeps on an H100 and (with programmatic dependent launch) an
    H200 (docs/gemms.md). Small M (bandwidth-bound, GEMV-like): one n8 token tile (two at
    M <= 16), 32 weight rows per CTA when that still gives every SM a CTA (else 16), and 8 warps
    splitting each stage's K to keep loads in flight. Large M (compute-bound): 128 x 128 CTA
    tiles of four 64 x 64 warp tiles, halved while the grid would leave SMs idle. Then the
    deepest pipeline that fits (at most 5 for small M, 3 for large: deeper measured no better);
    on sm_90+ a small-M CTA also leaves room on its SM for one of the next launch, which then
    fetches its weight while this one runs. ``stage_bytes(config)`` is the kernel's shared
    memory per stage."""
    m, n, k = shape["M"], shape["N"], shape["K"]
    sms = gpu.sms if gpu else DEFAULT_SMS
    chunks = -(-k // 64)
    pair = False
    if m <= 64:
        wm, warps_m = (1, 1) if m <= 8 else (2, 1) if m <= 16 else (4, 1) if m <= 32 else (4, 2)
        wn = 2 if -(-n // 32) >= 0.9 * sms else 1
        warps_n = 1 if m <= 8 or wn == 2 else 2
        warps_k = max(w for w in (1, 2, 4, 8) if w <= chunks
                      and 32 * w * warps_n * warps_m <= MAX_THREADS)
        config = {"WN": wn, "WM": wm, "WARPS_N": warps_n, "WARPS_M": warps_m, "WARPS_K": warps_k,
                  "SPLIT": 1}
        depths = (5, 4, 3, 2)
        pair = gpu is not None and gpu.cc >= (9, 0)
    else:
        config = {"WN": 4, "WM": 8, "WARPS_N": 2, "WARPS_M": 2, "WARPS_K": 1, "SPLIT": 1}
        if -(-m // 128) * -(-n // 128) < sms:
            config.update(WN=2, WM=4)
        depths = (3, 2)
    fits = []
    for stages in depths:
        config["STAGES"] = stages
        if invalid(config, stage_bytes(config), gpu, k) is None:
            fits.append(stages)
            if not pair or 2 * (smem_bytes(config, stage_bytes(config)) + 1024) <= gpu.smem_per_sm:
                return config
    config["STAGES"] = fits[0] if fits else depths[-1]
    return config


_memo: dict[int, tuple] = {}


def memoised(key, make: Callable[[], object]):
    """``make()`` once per live ``key`` object (a prepared weight tensor), for the baselines that
    need the dense weight on every call; the entry goes when the key is collected."""
    hit = _memo.get(id(key))
    if hit is not None and hit[0]() is key:
        return hit[1]
    value = make()
    _memo[id(key)] = (weakref.ref(key, lambda _, k=id(key): _memo.pop(k, None)), value)
    return value


def settled(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A prepared weight, complete before anything else is launched: the kernels read it before
    waiting for the grid ahead of them (gemm_tiles.cuh), so the kernel that wrote it must not be
    the one right before their launch."""
    if any(t.is_cuda for t in tensors.values()):
        torch.cuda.synchronize()
    return tensors


def reference_linear(inputs, shape, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"y": x · w^T (+ bias)} in float64, for the dense weight ``w`` the prepared one encodes."""
    y = inputs["x"].double() @ w.double().t()
    if shape["with_bias"]:
        y = y + inputs["bias"].double()
    return {"y": y}


def baseline_linear(inputs, shape, w: torch.Tensor) -> torch.Tensor:
    """What a user without these kernels runs: F.linear (cuBLAS) with the dense weight."""
    return torch.nn.functional.linear(inputs["x"], w, inputs["bias"] if shape["with_bias"] else None)


def activations(shape, dtype, device, gen) -> dict[str, torch.Tensor]:
    """Random x [M, K] (and bias [N] where the shape has one), after the weight was drawn."""
    out = {"x": torch.randn(shape["M"], shape["K"], generator=gen, device=device).to(dtype)}
    if shape["with_bias"]:
        out["bias"] = (0.1 * torch.randn(shape["N"], generator=gen, device=device)).to(dtype)
    return out


# The warpgroup kernels an eager call prefers, in order, where they apply (sm_90, large M).
AUTO_ORDER = ("cuda_wgmma_kres", "cuda_wgmma")


def auto_impl(kernel, shape, dtype: str, spec: GpuSpec | None, tuned: str | None = None) -> str:
    """The implementation a public function runs when none is named: ``tuned`` (the fastest
    stored winner for this GPU and the shape's bucket, when ``autotune run`` left one), else by
    the H100 measurements of BENCHMARKS.md (2026-12-07, fifth and seventh sessions): where a grid
    of 128 x 128 tiles covers the SMs, the weight slab resident in registers if K allows it
    (16000x1024x256: INT4 1.11x, 2:4 1.21x cuBLAS, against 0.5-0.6x for ``cuda``), else the
    per-stage warpgroup kernel (16000x256x1024: 0.84x and 0.96x, against 0.5x and 0.70x), on
    the GPUs they run on; everything else (small M: ``cuda`` is the 3x-cuBLAS one at M = 1) and
    every other GPU takes ``cuda``."""
    if tuned is not None:
        return tuned
    sms = spec.sms if spec else DEFAULT_SMS
    if -(-shape["M"] // 128) * -(-shape["N"] // 128) >= sms:
        for name in AUTO_ORDER:
            impl = kernel.impl(name)
            if impl.runs_on(spec) and impl.valid(impl.heuristic(shape, dtype, spec), shape, dtype, spec) is None:
                return name
    return "cuda"


def linear(kernel, x, weight, kind: type, shape, impl: str, config, bias) -> torch.Tensor:
    """The public functions' common part: check ``x`` [..., K] and ``weight`` (a ``kind``), set
    the shape's M, N, K and with_bias, pick the implementation (``impl="auto"``:
    :func:`auto_impl`), launch, and give y the shape [..., N]."""
    if not isinstance(weight, kind):
        raise TypeError(f"weight must be a {kind.__name__} from prepare(), got {type(weight).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != weight.k or x.numel() == 0:
        raise ValueError(f"x must be a non-empty [..., K={weight.k}], got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    shape = {**shape, "M": x.numel() // weight.k, "N": weight.n, "K": weight.k,
             "with_bias": int(bias is not None)}
    if impl == "auto":   # x off the GPU or in another dtype: the launch below refuses it clearly
        impl = "cuda"
        if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
            dtype = launch.dtype_name(x.dtype)
            impl = auto_impl(kernel, shape, dtype, gpus.running().spec, launch.tuned_impl(kernel, shape, dtype))
    out = launch.call(kernel, {"x": x.reshape(-1, weight.k), **weight.tensors, "bias": bias},
                      shape, impl, config)
    return out["y"].reshape(*x.shape[:-1], weight.n)
