"""The Conformer convolution module, fused: y = mask(pw2(SiLU(dwconv_BN(GLU(pw1(mask(x))))))).

x [B, T, D] is the module's (already layer-normed) input, ``lengths`` [B] int32 the valid frames
of each sequence. Semantics are WeNet's ``ConvolutionModule`` in eval mode with BatchNorm
(``reference.py`` states them): frames ``t >= lengths[b]`` are zeroed at the module's input (so
they reach the depthwise conv as ``glu(b1)``; with ``mask_after_glu=1`` they are zeroed at the
depthwise conv's input instead), the depthwise conv (kernel K) has "same" padding (odd K) or, with
``causal=1``, K - 1 zero input frames in front, BatchNorm is folded into its weight and bias
(``weights.fold_batchnorm``), and the output is 0 at padded frames. Lengths act as clamped to
[0, T]; no length makes a kernel read out of bounds. The LayerNorm conv-norm variant is not
supported (its per-frame statistics over channels would need the whole depthwise row before the
SiLU; ``prepare_weights`` refuses such modules).

Implementations, each the whole module:

* ``triton``: pw1 + bias + GLU (epilogue) -> h; depthwise + BN + SiLU + mask -> z;
  pw2 + bias + mask.
* ``cuda_dw``: the same with the depthwise stage in CUDA (halo staged in shared memory, sliding
  register window over time).
* ``triton_fused``: pw1 + GLU -> h; then the depthwise stage runs as pw2's prologue, per K-step of
  the GEMM, so z never touches memory.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import gpu as gpus
from .. import launch, triton_gemm
from ..contract import Cost, Dim, Impl, Kernel, Launch, TensorSpec, elt_size, pow2
from . import reference, triton_impl
from .weights import fold_batchnorm, prepare_weights

__all__ = ["KERNEL", "conv_module", "fold_batchnorm", "prepare_weights"]

HERE = Path(__file__).parent
MAX_KERNEL = 63
WEIGHTS = ("w1", "b1", "dw_w", "dw_b", "w2", "b2")


def _shape_error(shape) -> str | None:
    if not shape["causal"] and shape["K"] % 2 == 0:
        return f"'same' padding needs an odd kernel size, got K={shape['K']}"
    if shape["B"] * shape["T"] >= 2**31:
        return f"B x T = {shape['B'] * shape['T']} frames; fewer than 2^31 are supported"
    return None


def _left(shape) -> int:
    return shape["K"] - 1 if shape["causal"] else (shape["K"] - 1) // 2


# ---- config spaces and their rules ---------------------------------------------------------

TILE = (16, 32, 64, 128, 256)
PW1_SPACE = {"BM1": (32, 64, 128, 256), "BN1": TILE, "BK1": (16, 32, 64, 128),
             "W1": (4, 8), "S1": (1, 2, 3, 4)}
FUSED_SPACE = {"BM2": (32, 64, 128, 256), "BN2": TILE, "BK2": (16, 32, 64, 128),
               "W2": (4, 8), "S2": (1, 2, 3, 4)}
PW2_SPACE = {**FUSED_SPACE, "TILES2": triton_gemm.TILES}
GROUP_M = 8                     # row tiles that sweep the columns together (triton_gemm.py)
DW_SPACE = {"BMD": (8, 16, 32, 64), "BCD": (16, 32, 64, 128, 256), "WD": (1, 2, 4, 8)}
CUDA_DW_SPACE = {"TT": (16, 32, 64, 128), "TC": (16, 32, 64, 128, 256), "VEC": (1, 2, 4, 8),
                 "R": (2, 4, 8, 16, 32)}
MAX_ACC_PER_THREAD = 128        # fp32 accumulator registers a thread may hold without spilling
STATIC_SMEM = 48 * 1024         # the CUDA stage's tile is static shared memory


def _gemm_error(bm, bn, bk, warps, stages, n_b, extra_acc, shape, dtype, gpu) -> str | None:
    """A Triton GEMM tile: operands fit shared memory, accumulators fit registers.
    ``n_b`` B operands (2 for GLU's value and gate), ``extra_acc`` other fp32 values per row."""
    width = pow2(max(shape["D"], 16))
    if bn > width or bk > width:
        return f"a tile of {max(bn, bk)} channels is wider than D={shape['D']} needs"
    threads = 32 * warps
    if bm * (n_b * bn + extra_acc) > MAX_ACC_PER_THREAD * threads:
        return f"{bm * (n_b * bn + extra_acc) // threads} fp32 values per thread would spill"
    # operand stages, plus the epilogue's staging of the output tile (a 64x64x64 x 2-stage
    # config that counted 221184 bytes without it needed 237568 on an H100 with Triton 3.6)
    smem = (max(stages, 1) * (bm * bk + n_b * bk * bn) + bm * bn) * elt_size(dtype)
    if smem > gpu.smem_per_block:
        return f"{smem} bytes of shared memory (the GPU has {gpu.smem_per_block})"
    return None


def _pw1_error(c, shape, dtype, gpu):
    return _gemm_error(c["BM1"], c["BN1"], c["BK1"], c["W1"], c["S1"], 2, 0, shape, dtype, gpu)


def _pw2_error(c, shape, dtype, gpu, fused):
    if fused and c["S2"] > 2:
        return "the fused prologue's loads leave no room for more than 2 stages"
    # the fused prologue holds the [BM2, BK2] depthwise accumulator and the loaded tap
    extra = 2 * c["BK2"] if fused else 0
    return _gemm_error(c["BM2"], c["BN2"], c["BK2"], c["W2"], c["S2"], 1, extra, shape, dtype, gpu)


def _dw_error(c, shape, dtype, gpu):
    threads = 32 * c["WD"]
    if c["BCD"] > pow2(max(shape["D"], 16)):
        return f"BCD={c['BCD']} is wider than D={shape['D']} needs"
    if not threads <= c["BMD"] * c["BCD"] <= 32 * threads:
        return f"{c['BMD'] * c['BCD'] / threads:g} outputs per thread (1 to 32 allowed)"
    return None


def _cuda_dw_error(c, shape, dtype, gpu):
    tt, tc, vec, r, k = c["TT"], c["TC"], c["VEC"], c["R"], shape["K"]
    if vec * elt_size(dtype) > 16:
        return f"VEC={vec} {dtype} is wider than a 16-byte access"
    if shape["D"] % vec:
        return f"D={shape['D']} is not a multiple of VEC={vec}"
    if tc < vec or r > tt or tc > max(pow2(shape["D"]), 32):
        return "TC must be in [VEC, max(D, 32)] and R <= TT"
    threads = tc // vec * (tt // r)
    if threads % 32 or not 32 <= threads <= gpu.max_threads_per_block:
        return f"{threads} threads per block (a multiple of 32 up to the limit needed)"
    # the halo tile, one row of fill values and the transposed fp32 weights
    smem = (tt + k) * tc * elt_size(dtype) + k * (tc + 1) * 4
    if smem > STATIC_SMEM:
        return f"the halo tile needs {smem} bytes of static shared memory"
    # live registers: R x VEC accumulators plus about as many weights (weight j is needed only
    # while the window slides over frames j .. j + R - 1); ptxas on sm_90 spills past VEC*R = 64
    if vec * r > MAX_ACC_PER_THREAD // 2:
        return f"{vec * r} accumulators per thread would spill"
    return None


@dataclass(frozen=True)
class _Stage:
    """One launch's share of an impl's config: its parameters, the usual best values (tried
    first), and its validity rule. Stages are independent, so an impl's heuristic picks each
    stage's first valid config on its own. The persistent GEMM stage names its suffix
    (``persist``), whose tiles-per-program parameter TILES<suffix> the heuristic sets so that
    about two programs run on every multiprocessor."""
    space: Mapping[str, tuple[int, ...]]
    first: Mapping[str, int]
    error: Callable
    persist: str = ""

    def heuristic(self, shape, dtype, gpu) -> dict[str, int]:
        spec = gpu or gpus.by_name("a10")   # no GPU: the smallest limits of the supported ones
        prefs = [(self.first[k], *(v for v in vals if v != self.first[k]))
                 for k, vals in self.space.items()]
        for values in itertools.product(*prefs):
            config = dict(zip(self.space, values))
            if self.error(config, shape, dtype, spec) is None:
                if self.persist:
                    n = self.persist
                    tiles = (-(-shape["B"] * shape["T"] // config["BM" + n])
                             * -(-shape["D"] // config["BN" + n]))
                    config["TILES" + n] = triton_gemm.tiles_per_program(tiles, gpu)
                return config
        raise ValueError(f"conv_module: no valid config of {list(self.space)} for "
                         f"{dict(shape)} {dtype}")


# The usual best values at B=32 T=500 D=256 K=31 fp16: pw2's from an H200 sweep
# (scripts/conv_module_sweep.py, Triton 3.6), the others' from per-stage sweeps on an H100.
PW1_STAGE = _Stage(PW1_SPACE, {"BM1": 128, "BN1": 64, "BK1": 64, "W1": 8, "S1": 3}, _pw1_error)
DW_STAGE = _Stage(DW_SPACE, {"BMD": 16, "BCD": 128, "WD": 4}, _dw_error)
CUDA_DW_STAGE = _Stage(CUDA_DW_SPACE, {"TT": 64, "TC": 32, "VEC": 1, "R": 16}, _cuda_dw_error)
PW2_STAGE = _Stage(PW2_SPACE, {"BM2": 128, "BN2": 128, "BK2": 64, "W2": 4, "S2": 3,
                               "TILES2": 1}, functools.partial(_pw2_error, fused=False), "2")
FUSED_STAGE = _Stage(FUSED_SPACE, {"BM2": 64, "BN2": 256, "BK2": 64, "W2": 8, "S2": 1},
                     functools.partial(_pw2_error, fused=True))


# ---- constants and launches ----------------------------------------------------------------

LAUNCH_OPTIONS = ("W1", "S1", "WD", "W2", "S2")   # num_warps / num_stages of the launches


def _staging_vector(config, shape, dtype) -> int:
    """Elements per access when the CUDA stage stages its tile: 16 bytes where D and TC allow."""
    return next(v for v in (8, 4, 2, 1) if v * elt_size(dtype) <= 16 and shape["D"] % v == 0
                and config["TC"] % v == 0)


def _constants(config, shape, dtype):
    error = _shape_error(shape)
    if error:
        raise ValueError(f"conv_module: {error}")
    consts = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
    consts.update(LEFT=_left(shape), ELT=elt_size(dtype), GROUP_M=GROUP_M)
    for stage in ("1", "2"):
        consts["EVEN_K" + stage] = int(shape["D"] % config["BK" + stage] == 0)
    if "TT" in config:   # the CUDA stage's macros
        consts.update(CH=shape["D"], KS=shape["K"], IS_CAUSAL=shape["causal"],
                      MASK_AFTER_GLU=shape["mask_after_glu"],
                      LVEC=_staging_vector(config, shape, dtype))
    return consts


PW1 = Launch("pw1_glu", ("cdiv(B * T, BM1)", "cdiv(D, BN1)", "1"),
             ("x", "lengths", "w1", "b1", "h", "B", "T", "D"), num_warps="W1", num_stages="S1",
             pdl=True)
_DW_ARGS = ("B", "T", "D", "K", "causal", "mask_after_glu")
DW = Launch("dw_swish", ("cdiv(B * T, BMD)", "cdiv(D, BCD)", "1"),
            ("h", "lengths", "b1", "dw_w", "dw_b", "z", *_DW_ARGS), num_warps="WD")
CUDA_DW = Launch("conv_dw_silu", ("cdiv(T, TT)", "B", "cdiv(D, TC)"),
                 ("h", "lengths", "b1", "dw_w", "dw_b", "z", "T"), threads="TC // VEC * (TT // R)",
                 pdl=True)
PW2 = Launch("pw2", ("cdiv(cdiv(B * T, BM2) * cdiv(D, BN2), TILES2)", "1", "1"),
             ("z", "lengths", "w2", "b2", "y", "B", "T", "D"), num_warps="W2", num_stages="S2",
             pdl=True)
PW2_FUSED = Launch("pw2_fused", ("cdiv(B * T, BM2)", "cdiv(D, BN2)", "1"),
                   ("h", "lengths", "b1", "dw_w", "dw_b", "w2", "b2", "y", *_DW_ARGS),
                   num_warps="W2", num_stages="S2")

FNS = {"pw1_glu": triton_impl.pw1_glu, "dw_swish": triton_impl.dw_swish, "pw2": triton_impl.pw2,
       "pw2_fused": triton_impl.pw2_fused}
WORKSPACE = "B * T * D * ELT"


def _impl(name, sources, stages, launches, workspaces) -> Impl:
    def valid(config, shape, dtype, gpu):
        for error in (_shape_error(shape), *(s.error(config, shape, dtype, gpu) for s in stages)):
            if error:
                return error
        return None

    def heuristic(shape, dtype, gpu):
        return {k: v for s in stages for k, v in s.heuristic(shape, dtype, gpu).items()}

    return Impl(name=name, sources=sources, launches=launches,
                space={k: v for s in stages for k, v in s.space.items()},
                constants=_constants, valid=valid, heuristic=heuristic, fns=FNS,
                workspaces=tuple((w, WORKSPACE) for w in workspaces))


TRITON_SOURCES = (HERE.parent / "triton_common.py", HERE.parent / "triton_gemm.py",
                  HERE / "triton_impl.py")
TRITON = _impl("triton", TRITON_SOURCES, (PW1_STAGE, DW_STAGE, PW2_STAGE), (PW1, DW, PW2),
               ("h", "z"))
CUDA_DW_IMPL = _impl("cuda_dw", (*TRITON_SOURCES, HERE.parent / "cuda_common.cuh",
                                 HERE / "conv_dw.cu"),
                     (PW1_STAGE, CUDA_DW_STAGE, PW2_STAGE), (PW1, CUDA_DW, PW2), ("h", "z"))
TRITON_FUSED = _impl("triton_fused", TRITON_SOURCES, (PW1_STAGE, FUSED_STAGE), (PW1, PW2_FUSED),
                     ("h",))


# ---- the declaration -----------------------------------------------------------------------

def _make_inputs(shape, dtype, device, gen):
    b, t, d, k = shape["B"], shape["T"], shape["D"], shape["K"]

    def randn(*dims, scale=1.0, dt=dtype):
        return (torch.randn(*dims, generator=gen, device=device) * scale).to(dt)

    lengths = torch.randint(1, t + 1, (b,), generator=gen, device=device, dtype=torch.int32)
    lengths[0] = t
    return {"x": randn(b, t, d), "lengths": lengths,
            "w1": randn(2 * d, d, scale=d ** -0.5), "b1": randn(2 * d, scale=0.5),
            "dw_w": randn(d, k, scale=k ** -0.5, dt=torch.float32),
            "dw_b": randn(d, scale=0.5, dt=torch.float32),
            "w2": randn(d, d, scale=d ** -0.5), "b2": randn(d, scale=0.5)}


def _cost(shape, dtype):
    e = elt_size(dtype)
    rows, d, k = shape["B"] * shape["T"], shape["D"], shape["K"]
    weights = (3 * d * d + 3 * d) * e + (d * k + d) * 4
    return Cost(bytes=2 * rows * d * e + weights + 4 * shape["B"],
                flops=2 * rows * d * 3 * d + 2 * rows * d * k)


def _tune_shapes(dims):
    return [{"B": dims.batch, "T": dims.seq_len, "D": dims.d_model, "K": dims.conv_kernel,
             "causal": c, "mask_after_glu": 0} for c in (0, 1)]


KERNEL = Kernel(
    name="conv_module",
    doc=__doc__,
    dims=(Dim("B", 1, 65535, dynamic=True), Dim("T", 1, 2**31 - 1, dynamic=True),
          Dim("D", 8, 4096), Dim("K", 1, MAX_KERNEL), Dim("causal", 0, 1),
          Dim("mask_after_glu", 0, 1)),
    tensors=(TensorSpec("x", ("B", "T", "D")),
             TensorSpec("lengths", ("B",), dtype="int32"),
             TensorSpec("w1", ("2 * D", "D")),
             TensorSpec("b1", ("2 * D",)),
             TensorSpec("dw_w", ("D", "K"), dtype="float32"),
             TensorSpec("dw_b", ("D",), dtype="float32"),
             TensorSpec("w2", ("D", "D")),
             TensorSpec("b2", ("D",)),
             TensorSpec("y", ("B", "T", "D"), role="out")),
    scalars={},
    dtypes=("float16", "bfloat16", "float32"),
    impls=(TRITON, CUDA_DW_IMPL, TRITON_FUSED),
    reference=reference.reference,
    baseline=reference.baseline,
    make_inputs=_make_inputs,
    cost=_cost,
    tune_shapes=_tune_shapes,
    examples=({"B": 2, "T": 7, "D": 16, "K": 3, "causal": 0, "mask_after_glu": 0},
              {"B": 3, "T": 5, "D": 24, "K": 7, "causal": 1, "mask_after_glu": 0},
              {"B": 2, "T": 19, "D": 40, "K": 5, "causal": 0, "mask_after_glu": 1},
              {"B": 1, "T": 3, "D": 8, "K": 15, "causal": 0, "mask_after_glu": 0},
              {"B": 2, "T": 9, "D": 32, "K": 4, "causal": 1, "mask_after_glu": 1}),
)


def conv_module(x: torch.Tensor, lengths: torch.Tensor, weights: Mapping[str, torch.Tensor],
                causal: bool = False, mask_after_glu: bool = False, impl: str | None = None,
                config=None, check_lengths: bool = False) -> torch.Tensor:
    """The convolution module on x [B, T, D] with ``weights`` from :func:`prepare_weights`
    (w1 [2D, D], b1 [2D], w2 [D, D], b2 [D] in x's dtype; dw_w [D, K], dw_b [D] float32).
    ``impl`` defaults to ``cuda_dw``, the fastest measured (H100, fp16), or ``triton`` under
    Triton's interpreter.

    ``lengths`` [B] (any integer dtype; converted to int32) is read on the device and clamped
    to [0, T] there. ``check_lengths=True`` instead refuses lengths outside [0, T] with a
    ValueError, at the cost of a device synchronisation. Returns y [B, T, D], 0 at padded frames.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(lengths, torch.Tensor):
        raise TypeError("x and lengths must be torch.Tensors")
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, D], got shape {tuple(x.shape)}")
    if not isinstance(weights, Mapping) or set(WEIGHTS) - set(weights):
        raise ValueError(f"weights must map {list(WEIGHTS)} to tensors (see prepare_weights)")
    b, t, d = x.shape
    dw_w = weights["dw_w"]
    if not isinstance(dw_w, torch.Tensor) or dw_w.dim() != 2 or dw_w.shape[0] != d:
        raise ValueError(f"dw_w must be [D={d}, K], got {tuple(getattr(dw_w, 'shape', ()))}")
    k = dw_w.shape[1]
    if not 1 <= k <= MAX_KERNEL:
        raise ValueError(f"kernel size K={k} is outside the supported 1..{MAX_KERNEL}")
    shape = {"B": b, "T": t, "D": d, "K": k, "causal": int(bool(causal)),
             "mask_after_glu": int(bool(mask_after_glu))}
    error = _shape_error(shape)
    if error:
        raise ValueError(error)
    if lengths.shape != (b,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor of shape [{b}], got "
                         f"{lengths.dtype} {tuple(lengths.shape)}")
    if check_lengths:
        bad = lengths[(lengths < 0) | (lengths > t)]
        if bad.numel():
            raise ValueError(f"lengths must lie in [0, T={t}]; got {bad.tolist()[:8]}")
    inputs = {"x": x, "lengths": lengths.to(torch.int32).contiguous(),
              **{name: weights[name] for name in WEIGHTS}}
    impl = impl or ("triton" if launch.interpreting() else "cuda_dw")
    return launch.call(KERNEL, inputs, shape, impl, config)["y"]
