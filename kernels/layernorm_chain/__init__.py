"""Two LayerNorms back to back, with the residual add before the first, in one pass:
``layer_norm_chain(x, r, ...)`` returns ``(LN1(x + r), LN2(LN1(x + r)))``.

Between two Conformer blocks the first block's final LayerNorm (over the residual sum) is
followed at once by the next block's first LayerNorm (the macaron FFN's, or attention's): its
output is both the residual stream and, normalised again, the next sub-layer's input. Run as
two LayerNorm kernels that is 6 activation-sized transfers (x, r in; y and the unneeded sum
out; y in, y2 out); here it is 4.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import launch
from ..contract import Cost, Dim, Impl, Kernel, Launch, TensorSpec, elt_size, pow2
from ..layernorm import TRITON as LN_TRITON
from . import triton_impl

HERE = Path(__file__).parent


def _constants(config, shape, dtype):
    n = shape["hidden"]
    return {"N": n, "BLOCK_N": pow2(n), "ROWS": config["ROWS"],
            "STREAM": config["STREAM"]}


def _as_layernorm(shape):
    return {**shape, "with_residual": 1}


TRITON = Impl(
    name="triton",
    sources=(HERE.parent / "triton_common.py", HERE.parent / "layernorm" / "triton_impl.py",
             HERE / "triton_impl.py"),
    space=dict(LN_TRITON.space),     # the same tile as the LayerNorm kernel, the same limits
    launches=(Launch("layernorm_chain_fwd", ("cdiv(rows, ROWS)", "1", "1"),
                     ("x", "residual", "weight", "bias", "weight2", "bias2", "y", "y2", "rows",
                      "eps", "eps2"), pdl=True),),
    constants=_constants,
    valid=lambda config, shape, dtype, gpu: LN_TRITON.valid(config, _as_layernorm(shape),
                                                            dtype, gpu),
    heuristic=lambda shape, dtype, gpu: LN_TRITON.heuristic(_as_layernorm(shape), dtype, gpu),
    fns={"layernorm_chain_fwd": triton_impl.layernorm_chain_fwd},
)


def _ln(x, w, b, eps):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def _reference(inputs, shape, scalars):
    y = _ln(inputs["x"].double() + inputs["residual"].double(), inputs["weight"].double(),
            inputs["bias"].double(), scalars["eps"])
    return {"y": y, "y2": _ln(y, inputs["weight2"].double(), inputs["bias2"].double(),
                              scalars["eps2"])}


def _baseline(inputs, shape, scalars):
    y = _ln(inputs["x"] + inputs["residual"], inputs["weight"], inputs["bias"], scalars["eps"])
    return _ln(y, inputs["weight2"], inputs["bias2"], scalars["eps2"])


def _make_inputs(shape, dtype, device, gen):
    def randn(*dims):
        return torch.randn(*dims, generator=gen, device=device, dtype=torch.float32).to(dtype)

    rows, n = shape["rows"], shape["hidden"]
    return {"x": randn(rows, n) * 2 + 0.5, "residual": randn(rows, n),
            "weight": 1 + 0.1 * randn(n), "bias": 0.1 * randn(n),
            "weight2": 1 + 0.1 * randn(n), "bias2": 0.1 * randn(n)}


def _cost(shape, dtype):
    e = elt_size(dtype)
    rows, n = shape["rows"], shape["hidden"]
    return Cost(bytes=4 * rows * n * e + 4 * n * e, flops=16 * rows * n)


def _tune_shapes(dims):
    return [{"rows": dims.batch * dims.seq_len, "hidden": dims.d_model}]


KERNEL = Kernel(
    name="layernorm_chain",
    doc=__doc__,
    dims=(Dim("rows", 1, 2**31 - 1, dynamic=True), Dim("hidden", 32, 8192)),
    tensors=(TensorSpec("x", ("rows", "hidden")),
             TensorSpec("residual", ("rows", "hidden")),
             TensorSpec("weight", ("hidden",)),
             TensorSpec("bias", ("hidden",)),
             TensorSpec("weight2", ("hidden",)),
             TensorSpec("bias2", ("hidden",)),
             TensorSpec("y", ("rows", "hidden"), role="out"),
             TensorSpec("y2", ("rows", "hidden"), role="out")),
    scalars={"eps": 1e-5, "eps2": 1e-5},
    dtypes=("float16", "bfloat16", "float32"),
    impls=(TRITON,),
    reference=_reference,
    baseline=_baseline,
    make_inputs=_make_inputs,
    cost=_cost,
    tune_shapes=_tune_shapes,
    examples=({"rows": 1, "hidden": 32}, {"rows": 37, "hidden": 257}, {"rows": 9, "hidden": 80},
              {"rows": 3, "hidden": 1000}),
)


def layer_norm_chain(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor,
                     eps: float = 1e-5, eps2: float = 1e-5, config=None):
    """``(LN1(x + residual), LN2(LN1(x + residual)))`` over the last dim; contiguous x and
    residual of one shape, weights [hidden] in x's dtype."""
    if not isinstance(x, torch.Tensor) or not isinstance(residual, torch.Tensor):
        raise TypeError("x and residual must be torch.Tensors")
    if x.dim() < 1 or x.shape[-1] == 0 or residual.shape != x.shape:
        raise ValueError(f"x and residual must share a shape with a non-empty last dim, got "
                         f"{tuple(x.shape)} and {tuple(residual.shape)}")
    if not x.is_contiguous() or not residual.is_contiguous():
        raise ValueError("x and residual must be contiguous")
    n = x.shape[-1]
    shape = {"rows": x.numel() // n, "hidden": n}
    out = launch.call(KERNEL, {"x": x.reshape(-1, n), "residual": residual.reshape(-1, n),
                               "weight": weight, "bias": bias, "weight2": weight2,
                               "bias2": bias2},
                      shape, "triton", config, {"eps": float(eps), "eps2": float(eps2)})
    return out["y"].reshape(x.shape), out["y2"].reshape(x.shape)
