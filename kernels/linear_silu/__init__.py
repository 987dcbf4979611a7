"""The feed-forward module's first Linear with its activation: y = SiLU(x @ weight^T + bias).

x [M, K] (M = batch x frames, K = d_model), weight [N, K] (N = the FFN width), y [M, N]. Fusing
the activation into the GEMM's epilogue saves a read and a write of y, the widest activation of
a Conformer block (cuBLAS has no SiLU epilogue, so PyTorch runs it as a second kernel).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import gpu as gpus
from .. import launch
from ..contract import Cost, Dim, Impl, Kernel, Launch, TensorSpec, elt_size, pow2
from .. import triton_gemm
from . import triton_impl

HERE = Path(__file__).parent
MAX_ACC_PER_THREAD = 128    # fp32 accumulators a thread holds without spilling


def _constants(config, shape, dtype):
    return {"N_DIM": shape["N"], "K_DIM": shape["K"], "BM": config["BM"], "BN": config["BN"],
            "BK": config["BK"], "GROUP_M": config["GROUP_M"],
            "EVEN_K": int(shape["K"] % config["BK"] == 0)}


def _valid(config, shape, dtype, gpu):
    bm, bn, bk = config["BM"], config["BN"], config["BK"]
    if bn > pow2(max(shape["N"], 16)) or bk > pow2(max(shape["K"], 16)):
        return f"a {bn}x{bk} weight tile is larger than N={shape['N']}, K={shape['K']} need"
    threads = 32 * config["num_warps"]
    if bm * bn > MAX_ACC_PER_THREAD * threads:
        return f"{bm * bn // threads} fp32 accumulators per thread would spill"
    # operand stages plus the epilogue's staging of the output tile
    smem = (config["num_stages"] * (bm + bn) * bk + bm * bn) * elt_size(dtype)
    limit = gpu.smem_per_block if gpu else gpus.by_name("a10").smem_per_block
    if smem > limit:
        return f"{smem} bytes of shared memory (the GPU has {limit})"
    return None


# Tried in order by the heuristic: the first valid one wins (the first is the fastest of an
# H200 sweep at 16000x1024x256 with two programs per multiprocessor; the next need Hopper- or
# A100-sized shared memory, the later ones fit an A10 or L4, and the last small shapes).
PREFERRED = ({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 3},
             {"BM": 128, "BN": 128, "BK": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3},
             {"BM": 64, "BN": 64, "BK": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 2},
             {"BM": 32, "BN": 32, "BK": 16, "GROUP_M": 1, "num_warps": 4, "num_stages": 2})
def _heuristic(shape, dtype, gpu):
    n, k = pow2(max(shape["N"], 16)), pow2(max(shape["K"], 16))
    for preferred in PREFERRED:   # narrow layers: the tile shrinks to the layer
        config = {**preferred, "BN": min(preferred["BN"], n), "BK": min(preferred["BK"], k)}
        if _valid({**config, "TILES": 1}, shape, dtype, gpu) is None:
            tiles = -(-shape["M"] // config["BM"]) * -(-shape["N"] // config["BN"])
            return {**config, "TILES": triton_gemm.tiles_per_program(tiles, gpu)}
    raise ValueError(f"linear_silu: no preferred config is valid for {dict(shape)} {dtype}")


TRITON = Impl(
    name="triton",
    sources=(HERE.parent / "triton_common.py", HERE.parent / "triton_gemm.py",
             HERE / "triton_impl.py"),
    space={"BM": (32, 64, 128, 256), "BN": (16, 32, 64, 128, 256), "BK": (16, 32, 64, 128),
           "GROUP_M": (1, 8), "num_warps": (4, 8), "num_stages": (2, 3, 4, 5),
           "TILES": triton_gemm.TILES},
    launches=(Launch("linear_silu", ("cdiv(cdiv(M, BM) * cdiv(N, BN), TILES)", "1", "1"),
                     ("x", "weight", "bias", "y", "M"), num_stages="num_stages", pdl=True),),
    constants=_constants,
    valid=_valid,
    heuristic=_heuristic,
    fns={"linear_silu": triton_impl.linear_silu},
)


def _reference(inputs, shape, scalars):
    return {"y": torch.nn.functional.silu(torch.nn.functional.linear(
        inputs["x"].double(), inputs["weight"].double(), inputs["bias"].double()))}


def _baseline(inputs, shape, scalars):
    return torch.nn.functional.silu(torch.nn.functional.linear(inputs["x"], inputs["weight"],
                                                               inputs["bias"]))


def _make_inputs(shape, dtype, device, gen):
    def randn(*dims, scale=1.0):
        return (torch.randn(*dims, generator=gen, device=device) * scale).to(dtype)

    return {"x": randn(shape["M"], shape["K"]),
            "weight": randn(shape["N"], shape["K"], scale=shape["K"] ** -0.5),
            "bias": randn(shape["N"], scale=0.5)}


def _cost(shape, dtype):
    m, n, k = shape["M"], shape["N"], shape["K"]
    return Cost(bytes=(m * k + n * k + n + m * n) * elt_size(dtype), flops=2 * m * n * k + 4 * m * n)


def _tune_shapes(dims):
    return [{"M": dims.batch * dims.seq_len, "N": dims.ffn, "K": dims.d_model}]


KERNEL = Kernel(
    name="linear_silu",
    doc=__doc__,
    dims=(Dim("M", 1, 2**31 - 1, dynamic=True), Dim("N", 1, 65536), Dim("K", 1, 65536)),
    tensors=(TensorSpec("x", ("M", "K")),
             TensorSpec("weight", ("N", "K")),
             TensorSpec("bias", ("N",)),
             TensorSpec("y", ("M", "N"), role="out")),
    scalars={},
    dtypes=("float16", "bfloat16", "float32"),
    impls=(TRITON,),
    reference=_reference,
    baseline=_baseline,
    make_inputs=_make_inputs,
    cost=_cost,
    tune_shapes=_tune_shapes,
    examples=({"M": 1, "N": 24, "K": 16},
              {"M": 37, "N": 72, "K": 40},
              {"M": 130, "N": 33, "K": 100},
              {"M": 5, "N": 300, "K": 7}),
)


def linear_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, impl: str = "triton",
                config=None) -> torch.Tensor:
    """SiLU(x @ weight^T + bias) for contiguous x [..., K], weight [N, K], bias [N] of x's dtype;
    returns [..., N]. Everything is checked before anything launches."""
    if not all(isinstance(t, torch.Tensor) for t in (x, weight, bias)):
        raise TypeError("x, weight and bias must be torch.Tensors")
    if x.dim() < 1 or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x [..., K] and weight [N, K] disagree: {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    n, k = weight.shape
    shape = {"M": x.numel() // k if k else 0, "N": n, "K": k}
    y = launch.call(KERNEL, {"x": x.reshape(-1, k), "weight": weight, "bias": bias}, shape, impl,
                    config)["y"]
    return y.reshape(*x.shape[:-1], n)
