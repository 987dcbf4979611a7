"""From a WeNet/ESPnet ConvolutionModule's parameters to the kernel's tensors.

At inference BatchNorm1d is an affine map per channel, ``(v - mean) * gamma / sqrt(var + eps) +
beta``, applied right after the depthwise conv, so it folds into the conv's weight and bias
(the usual conv-BN fusion; PyTorch's ``torch.nn.utils.fusion.fuse_conv_bn_weights`` does the same).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

# WeNet / ESPnet ConvolutionModule keys (wenet/transformer/convolution.py,
# espnet/nets/pytorch_backend/conformer/convolution.py), without the module's prefix.
_BN_KEYS = ("norm.weight", "norm.bias", "norm.running_mean", "norm.running_var")


def fold_batchnorm(dw_weight: torch.Tensor, dw_bias: torch.Tensor | None, gamma: torch.Tensor,
                   beta: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                   eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm1d into the depthwise conv before it.

    ``dw_weight`` is [D, 1, K] (the conv's) or [D, K]; ``dw_bias`` [D] or None. Returns the
    folded (weight [D, K], bias [D]) in float32, computed in float64.
    """
    w = dw_weight.detach().double()
    if w.dim() == 3 and w.shape[1] == 1:
        w = w[:, 0]
    if w.dim() != 2:
        raise ValueError("depthwise weight must be [D, 1, K] or [D, K], got "
                         f"{tuple(dw_weight.shape)}")
    d = w.shape[0]
    for name, v in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        if tuple(v.shape) != (d,):
            raise ValueError(f"BatchNorm {name} must be [{d}], got {tuple(v.shape)}")
    b = torch.zeros(d, dtype=torch.float64, device=w.device) if dw_bias is None \
        else dw_bias.detach().double()
    scale = gamma.detach().double() / torch.sqrt(var.detach().double() + eps)
    folded_b = (b - mean.detach().double()) * scale + beta.detach().double()
    return (w * scale[:, None]).float().contiguous(), folded_b.float().contiguous()


def prepare_weights(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                    eps: float = 1e-5, prefix: str = "") -> dict[str, torch.Tensor]:
    """Map a ConvolutionModule's ``state_dict()`` (keys ``pointwise_conv1.*``,
    ``depthwise_conv.*``, ``norm.*``, ``pointwise_conv2.*`` after ``prefix``) to the kernel's
    weights: w1 [2D, D], b1 [2D], w2 [D, D], b2 [D] in ``dtype`` (default: pointwise_conv1's) and
    the BatchNorm-folded dw_w [D, K], dw_b [D] in float32. Missing conv biases count as zero
    (``bias=False`` modules). A LayerNorm conv norm (no running statistics) is refused: the
    kernels implement the BatchNorm variant only."""
    def get(key, required=True):
        v = state.get(prefix + key)
        if v is None and required:
            raise KeyError(f"state has no {prefix + key!r}")
        return v

    if get("norm.weight") is not None and get("norm.running_mean", required=False) is None:
        raise ValueError("the conv module's norm is a LayerNorm (no running statistics); "
                         "only the BatchNorm variant is supported")
    w1, w2, dww = get("pointwise_conv1.weight"), get("pointwise_conv2.weight"), \
        get("depthwise_conv.weight")
    d = w2.shape[0]
    if tuple(w1.shape[:2]) != (2 * d, d) or tuple(w2.shape[:2]) != (d, d) \
            or w1.shape[2:] not in ((), (1,)) or w2.shape[2:] not in ((), (1,)):
        raise ValueError(f"pointwise convs must be [2D, D, 1] and [D, D, 1]; got "
                         f"{tuple(w1.shape)} and {tuple(w2.shape)}")
    dtype = dtype or w1.dtype

    def bias(key, n):
        b = get(key, required=False)
        return torch.zeros(n, dtype=dtype, device=w1.device) if b is None else b

    dw_w, dw_b = fold_batchnorm(dww, get("depthwise_conv.bias", required=False),
                                *(get(k) for k in _BN_KEYS), eps=eps)
    out = {"w1": w1.reshape(2 * d, d), "b1": bias("pointwise_conv1.bias", 2 * d),
           "w2": w2.reshape(d, d), "b2": bias("pointwise_conv2.bias", d)}
    out = {k: v.detach().to(dtype).contiguous() for k, v in out.items()}
    return {**out, "dw_w": dw_w.to(w1.device), "dw_b": dw_b.to(w1.device)}
