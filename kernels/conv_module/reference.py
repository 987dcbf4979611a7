"""The Conformer convolution module in PyTorch: WeNet's module (the eager baseline) and a
functional form on the kernel's tensors (the float64 reference and the functional baseline).

Semantics are those of WeNet's ``ConvolutionModule`` (wenet/transformer/convolution.py, forward
with an empty streaming cache), on input the layer has already layer-normed, x [B, T, D]:

1. frames ``t >= lengths[b]`` of x are set to 0 (``x.masked_fill_(~mask_pad, 0.0)``);
2. causal only: K - 1 zero frames are prepended (``lorder`` padding, the streaming cache's slot);
3. pointwise_conv1 (D -> 2D, kernel 1, bias) and GLU over channels: ``a * sigmoid(g)``;
4. depthwise conv over time (groups=D, kernel K, bias; "same" padding of (K - 1) / 2 zero frames
   on each side unless causal), BatchNorm1d (eval), SiLU;
5. pointwise_conv2 (D -> D, kernel 1, bias) and the padded frames set to 0 again.

Because steps 1-2 act on the module's *input*, a padded frame (and, causal, a frame before the
start) reaches the depthwise conv as ``glu(b1)``, not 0; only the "same" padding outside [0, T) is
0 after the GLU. ``mask_after_glu=True`` is the variant that zeroes every padded or out-of-range
frame at the depthwise conv's input instead (output then independent of the padding).
Lengths outside [0, T] act as clamped to it (WeNet's pad mask from such lengths is the same).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def valid_frames(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """bool [B, T]: True at frames ``t < lengths[b]`` (WeNet's ``mask_pad``, squeezed)."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths.long()[:, None]


def conv_module_functional(x: torch.Tensor, lengths: torch.Tensor, w1: torch.Tensor,
                           b1: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor,
                           w2: torch.Tensor, b2: torch.Tensor, causal: bool,
                           mask_after_glu: bool = False) -> torch.Tensor:
    """The module on the kernel's tensors, in the dtype of ``x`` (weights are cast to it):
    x [B, T, D], lengths [B], w1 [2D, D], b1 [2D], dw_w [D, K] and dw_b [D] with BatchNorm
    folded in (``weights.fold_batchnorm``), w2 [D, D], b2 [D]. Returns y [B, T, D]."""
    dt = x.dtype
    k = dw_w.shape[1]
    pad = ~valid_frames(lengths, x.shape[1])[:, None, :]           # [B, 1, T]
    h = x.transpose(1, 2)                                           # [B, D, T]
    if not mask_after_glu:
        h = h.masked_fill(pad, 0.0)
        if causal:
            h = F.pad(h, (k - 1, 0))
    h = F.glu(F.conv1d(h, w1.to(dt)[:, :, None], b1.to(dt)), dim=1)
    if mask_after_glu:
        h = h.masked_fill(pad, 0.0)
        if causal:
            h = F.pad(h, (k - 1, 0))
    h = F.conv1d(h, dw_w.to(dt)[:, None, :], dw_b.to(dt), padding=0 if causal else (k - 1) // 2,
                 groups=h.shape[1])
    h = F.conv1d(F.silu(h), w2.to(dt)[:, :, None], b2.to(dt))
    return h.masked_fill(pad, 0.0).transpose(1, 2)


def reference(inputs, shape, scalars) -> dict[str, torch.Tensor]:
    """The kernel's float64 reference (clamping lengths to [0, T] as the kernels do)."""
    d = {k: v.double() for k, v in inputs.items() if k != "lengths"}
    lengths = inputs["lengths"].long().clamp(0, shape["T"])
    y = conv_module_functional(d["x"], lengths, d["w1"], d["b1"], d["dw_w"], d["dw_b"], d["w2"],
                               d["b2"], bool(shape["causal"]), bool(shape["mask_after_glu"]))
    return {"y": y}


def baseline(inputs, shape, scalars) -> torch.Tensor:
    """What a user runs without these kernels: the same ops, eager, in the activation dtype."""
    return conv_module_functional(inputs["x"], inputs["lengths"], inputs["w1"], inputs["b1"],
                                  inputs["dw_w"], inputs["dw_b"], inputs["w2"], inputs["b2"],
                                  bool(shape["causal"]), bool(shape["mask_after_glu"]))


class WenetConvModule(nn.Module):
    """WeNet's ConvolutionModule with BatchNorm (parameter names as WeNet and ESPnet), for
    inference without a streaming cache; ``forward(x [B, T, D], lengths [B]) -> [B, T, D]``."""

    def __init__(self, channels: int, kernel_size: int, causal: bool = False,
                 eps: float = 1e-5):
        super().__init__()
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"'same' padding needs an odd kernel, got {kernel_size}")
        self.lorder = kernel_size - 1 if causal else 0
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels,
                                        padding=0 if causal else (kernel_size - 1) // 2)
        self.norm = nn.BatchNorm1d(channels, eps=eps)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pad = ~valid_frames(lengths, x.shape[1])[:, None, :]
        x = x.transpose(1, 2).masked_fill(pad, 0.0)
        if self.lorder:
            x = F.pad(x, (self.lorder, 0))
        x = F.glu(self.pointwise_conv1(x), dim=1)
        x = F.silu(self.norm(self.depthwise_conv(x)))
        return self.pointwise_conv2(x).masked_fill(pad, 0.0).transpose(1, 2)
