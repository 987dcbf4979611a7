"""LayerNorm forward, optionally fused with the residual add before it.

``layer_norm(x, w, b, residual=r)`` returns ``(LN(x + r), x + r)``: the Conformer adds each
sub-layer's output to the residual stream and normalises the sum for the next sub-layer, so both
come out of one pass over memory. Statistics are fp32 for every activation dtype.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import launch
from ..contract import Cost, Dim, Impl, Kernel, Launch, TensorSpec, elt_size, pow2
from . import triton_impl

HERE = Path(__file__).parent
MAX_ELEMS_PER_THREAD = 64   # beyond this the row no longer fits in registers without spilling


# ---- Triton --------------------------------------------------------------------------------

def _triton_constants(config, shape, dtype):
    return {"N": shape["hidden"], "BLOCK_N": pow2(shape["hidden"]), "ROWS": config["ROWS"],
            "RESIDUAL": shape["with_residual"], "STREAM": config["STREAM"]}


def _triton_valid(config, shape, dtype, gpu):
    elems = config["ROWS"] * pow2(shape["hidden"])
    threads = 32 * config["num_warps"]
    if elems > MAX_ELEMS_PER_THREAD * threads:
        return f"{elems // threads} elements per thread would spill registers"
    if elems < threads:
        return "more threads than elements"
    return None


def _triton_heuristic(shape, dtype, gpu):
    block_n = pow2(shape["hidden"])
    rows = max(1, min(16, 2048 // block_n))
    warps = max(1, min(16, rows * block_n // 256))
    return {"ROWS": rows, "num_warps": warps, "STREAM": 0}


TRITON = Impl(
    name="triton",
    sources=(HERE.parent / "triton_common.py", HERE / "triton_impl.py"),
    space={"ROWS": (1, 2, 4, 8, 16, 32), "num_warps": (1, 2, 4, 8, 16), "STREAM": (0, 1)},
    launches=(Launch("layernorm_fwd", ("cdiv(rows, ROWS)", "1", "1"),
                     ("x", "residual", "weight", "bias", "y", "sum", "rows", "eps"), pdl=True),),
    constants=_triton_constants,
    valid=_triton_valid,
    heuristic=_triton_heuristic,
    fns={"layernorm_fwd": triton_impl.layernorm_fwd},
)


# ---- CUDA ----------------------------------------------------------------------------------

def _cuda_constants(config, shape, dtype):
    return {"N": shape["hidden"], "VEC": config["VEC"], "WARPS_PER_ROW": config["WARPS_PER_ROW"],
            "ROWS_PER_BLOCK": config["ROWS_PER_BLOCK"], "RESIDUAL": shape["with_residual"],
            "STREAM": config["STREAM"]}


def _cuda_valid(config, shape, dtype, gpu):
    n, vec = shape["hidden"], config["VEC"]
    tpr = 32 * config["WARPS_PER_ROW"]
    threads = tpr * config["ROWS_PER_BLOCK"]
    if vec * elt_size(dtype) > 16:
        return f"VEC={vec} {dtype} is wider than a 16-byte access"
    if n % vec:
        return f"hidden={n} is not a multiple of VEC={vec}"
    if threads > (gpu.max_threads_per_block if gpu else 1024):
        return f"{threads} threads per block"
    iters = -(-n // (vec * tpr))
    if iters * vec > MAX_ELEMS_PER_THREAD:
        return f"{iters * vec} elements per thread would spill registers"
    if tpr > 2 * -(-n // vec):
        return "more than half of each row's threads would idle"
    return None


def _cuda_heuristic(shape, dtype, gpu):
    n = shape["hidden"]
    vec = next(v for v in (8, 4, 2, 1)
               if v == 1 or (v * elt_size(dtype) <= 16 and n % v == 0 and n // v >= 16))
    warps = max(1, min(32, pow2(-(-n // (vec * 32 * 4)))))   # about 4 accesses per thread
    rows = max(1, min(16, 256 // (32 * warps)))
    return {"VEC": vec, "WARPS_PER_ROW": warps, "ROWS_PER_BLOCK": rows, "STREAM": 0}


CUDA = Impl(
    name="cuda",
    sources=(HERE.parent / "cuda_common.cuh", HERE / "layernorm.cu"),
    space={"VEC": (1, 2, 4, 8), "WARPS_PER_ROW": (1, 2, 4, 8, 16, 32),
           "ROWS_PER_BLOCK": (1, 2, 4, 8, 16), "STREAM": (0, 1)},
    launches=(Launch("layernorm_fwd", ("cdiv(rows, ROWS_PER_BLOCK)", "1", "1"),
                     ("x", "residual", "weight", "bias", "y", "sum", "rows", "eps"),
                     threads="ROWS_PER_BLOCK * WARPS_PER_ROW * 32", pdl=True),),
    constants=_cuda_constants,
    valid=_cuda_valid,
    heuristic=_cuda_heuristic,
)


# ---- the declaration -----------------------------------------------------------------------

def _reference(inputs, shape, scalars):
    s = inputs["x"].double()
    if shape["with_residual"]:
        s = s + inputs["residual"].double()
    y = torch.nn.functional.layer_norm(s, (shape["hidden"],), inputs["weight"].double(),
                                       inputs["bias"].double(), scalars["eps"])
    return {"y": y, "sum": s} if shape["with_residual"] else {"y": y}


def _baseline(inputs, shape, scalars):
    s = inputs["x"] + inputs["residual"] if shape["with_residual"] else inputs["x"]
    return torch.nn.functional.layer_norm(s, (shape["hidden"],), inputs["weight"],
                                          inputs["bias"], scalars["eps"])


def _make_inputs(shape, dtype, device, gen):
    def randn(*dims):
        return torch.randn(*dims, generator=gen, device=device, dtype=torch.float32).to(dtype)

    rows, n = shape["rows"], shape["hidden"]
    inputs = {"x": randn(rows, n) * 2 + 0.5, "weight": 1 + 0.1 * randn(n), "bias": 0.1 * randn(n)}
    if shape["with_residual"]:
        inputs["residual"] = randn(rows, n)
    return inputs


def _cost(shape, dtype):
    e, rows, n = elt_size(dtype), shape["rows"], shape["hidden"]
    streams = 4 if shape["with_residual"] else 2           # read x (and r), write y (and x + r)
    return Cost(bytes=streams * rows * n * e + 2 * n * e, flops=8 * rows * n)


def _tune_shapes(dims):
    return [{"rows": dims.batch * dims.seq_len, "hidden": dims.d_model, "with_residual": r}
            for r in (1, 0)]


KERNEL = Kernel(
    name="layernorm",
    doc=__doc__,
    dims=(Dim("rows", 1, 2**31 - 1, dynamic=True), Dim("hidden", 32, 8192),
          Dim("with_residual", 0, 1)),
    tensors=(TensorSpec("x", ("rows", "hidden")),
             TensorSpec("residual", ("rows", "hidden"), when="with_residual"),
             TensorSpec("weight", ("hidden",)),
             TensorSpec("bias", ("hidden",)),
             TensorSpec("y", ("rows", "hidden"), role="out"),
             TensorSpec("sum", ("rows", "hidden"), role="out", when="with_residual")),
    scalars={"eps": 1e-5},
    dtypes=("float16", "bfloat16", "float32"),
    impls=(TRITON, CUDA),
    reference=_reference,
    baseline=_baseline,
    make_inputs=_make_inputs,
    cost=_cost,
    tune_shapes=_tune_shapes,
    examples=({"rows": 1, "hidden": 32, "with_residual": 0},
              {"rows": 37, "hidden": 257, "with_residual": 1},
              {"rows": 9, "hidden": 80, "with_residual": 1},
              {"rows": 3, "hidden": 1000, "with_residual": 0}),
)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
               residual: torch.Tensor | None = None, impl: str = "triton", config=None):
    """LayerNorm over the last dim of ``x``; with ``residual``, returns ``(LN(x + r), x + r)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    if residual is not None and (not isinstance(residual, torch.Tensor)
                                 or residual.shape != x.shape):
        raise ValueError("residual must be a tensor of x's shape "
                         f"{tuple(x.shape)}, got {getattr(residual, 'shape', type(residual))}")
    if not x.is_contiguous() or (residual is not None and not residual.is_contiguous()):
        raise ValueError("x and residual must be contiguous")
    n = x.shape[-1]
    shape = {"rows": x.numel() // n, "hidden": n, "with_residual": int(residual is not None)}
    flat = {"x": x.reshape(-1, n), "weight": weight, "bias": bias,
            "residual": None if residual is None else residual.reshape(-1, n)}
    out = launch.call(KERNEL, flat, shape, impl, config, {"eps": float(eps)})
    y = out["y"].reshape(x.shape)
    return (y, out["sum"].reshape(x.shape)) if residual is not None else y
