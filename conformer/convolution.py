"""The Conformer convolution module, as a module and as a functional reference.

Semantics of WeNet's ``ConvolutionModule`` (wenet/transformer/convolution.py), on input that
the layer has already layer-normed, x [B, T, C] (``mask="input"``, the default):

    1. padded frames of x are set to 0 (WeNet ``x.masked_fill_(~mask_pad, 0.0)``);
    2. causal only: k-1 zero frames are prepended (WeNet's ``lorder`` padding, the slot of its
       streaming ``cnn_cache``);
    3. pointwise_conv1 (C → 2C, k=1) and GLU over channels (first half * sigmoid(second half));
    4. depthwise conv (groups=C, kernel k; non-causal: it zero-pads (k-1)/2 frames on each
       side, "same"), then BatchNorm1d (eval: running statistics) or a LayerNorm over channels
       per frame, then SiLU (Swish);
    5. pointwise_conv2 (C → C, k=1), and padded frames set to 0 again.

Steps 1 and 2 act *before* pointwise_conv1, so with a bias b1 the depthwise conv sees
``glu(b1)``, not 0, at padded frames and (causal) at the k-1 frames before the start; only the
non-causal conv's own padding outside [0, T) is 0 after the GLU. ``mask="glu"`` moves steps 1
and 2 after the GLU instead: every padded or out-of-range frame is 0 at the depthwise conv's
input, which makes the output independent of the padding (see ``ConformerConfig.conv_mask``).

Masking makes valid outputs independent of what the padded input frames hold. ESPnet's and
torchaudio's modules do not mask, so on padded batches they differ from this near the end of
each sequence (on full-length batches all three agree).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvolutionModule(nn.Module):
    """WeNet's ConvolutionModule, parameter names ``pointwise_conv1``, ``depthwise_conv``,
    ``norm``, ``pointwise_conv2`` (the same in ESPnet)."""

    def __init__(self, channels: int, kernel_size: int, causal: bool, norm: str, bias: bool,
                 norm_eps: float, mask: str = "input"):
        super().__init__()
        if mask not in ("input", "glu"):
            raise ValueError(f"mask must be 'input' or 'glu', got {mask!r}")
        self.mask_glu = mask == "glu"
        self.lorder = kernel_size - 1 if causal else 0
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1, bias=bias)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size,
                                        padding=0 if causal else (kernel_size - 1) // 2,
                                        groups=channels, bias=bias)
        self.use_layer_norm = norm == "layer_norm"
        self.norm = (nn.LayerNorm(channels, eps=norm_eps) if self.use_layer_norm
                     else nn.BatchNorm1d(channels, eps=norm_eps))
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B, T, C]; valid bool [B, T], True at real frames. Returns [B, T, C]."""
        pad = ~valid.unsqueeze(1)                          # [B, 1, T]
        x = x.transpose(1, 2)                              # [B, C, T]
        if self.mask_glu:
            x = F.glu(self.pointwise_conv1(x), dim=1).masked_fill(pad, 0.0)
            if self.lorder:
                x = F.pad(x, (self.lorder, 0))
        else:
            x = x.masked_fill(pad, 0.0)
            if self.lorder:
                x = F.pad(x, (self.lorder, 0))
            x = F.glu(self.pointwise_conv1(x), dim=1)
        x = self.depthwise_conv(x)
        if self.use_layer_norm:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        else:
            x = self.norm(x)
        x = self.pointwise_conv2(F.silu(x))
        return x.masked_fill(pad, 0.0).transpose(1, 2)


def _matrix(w: torch.Tensor, rows: int, cols: int, name: str) -> torch.Tensor:
    """Accept a 1x1 conv weight [rows, cols, 1] or a matrix [rows, cols]."""
    if w.shape == (rows, cols, 1):
        return w[..., 0]
    if w.shape != (rows, cols):
        raise ValueError(f"{name} must be [{rows}, {cols}] or [{rows}, {cols}, 1], "
                         f"got {tuple(w.shape)}")
    return w


def _vector(b: torch.Tensor | None, n: int, name: str) -> torch.Tensor | None:
    if b is not None and b.shape != (n,):
        raise ValueError(f"{name} must be [{n}] or None, got {tuple(b.shape)}")
    return b


def conv_module_reference(x: torch.Tensor, lengths: torch.Tensor, w1: torch.Tensor,
                          b1: torch.Tensor | None, dw_w: torch.Tensor, dw_b_folded: torch.Tensor,
                          w2: torch.Tensor, b2: torch.Tensor | None,
                          causal: bool, mask: str = "input") -> torch.Tensor:
    """The batch-norm conv module in eval mode with the BatchNorm folded into the depthwise
    conv (see ``fold_batchnorm``), on already layer-normed x [B, T, C].

    Weights: w1 [2C, C] (or the conv's [2C, C, 1]), b1 [2C] or None, dw_w [C, k] (or
    [C, 1, k]) and dw_b_folded [C] *after* folding, w2 [C, C] (or [C, C, 1]), b2 [C] or None.
    Padded frames (``t >= lengths[b]``) and the causal left context are handled as in the
    module: with ``mask="input"`` (WeNet) they are zero *input* frames and reach the depthwise
    conv as ``glu(b1)``; with ``mask="glu"`` they are zero at the depthwise conv's input.
    Outputs at padded frames are 0.
    Works in [B, T, C] with an explicit sliding window rather than conv1d. Returns [B, T, C] in
    x's dtype, computed in float64 for float64 input and float32 otherwise.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, C], got {tuple(x.shape)}")
    b, t, c = x.shape
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [{b}], got {tuple(lengths.shape)}")
    w1 = _matrix(w1, 2 * c, c, "w1")
    w2 = _matrix(w2, c, c, "w2")
    if dw_w.dim() == 3 and dw_w.size(1) == 1:
        dw_w = dw_w[:, 0]
    if dw_w.dim() != 2 or dw_w.size(0) != c:
        raise ValueError(f"dw_w must be [{c}, k] or [{c}, 1, k], got {tuple(dw_w.shape)}")
    kernel = dw_w.size(1)
    if mask not in ("input", "glu"):
        raise ValueError(f"mask must be 'input' or 'glu', got {mask!r}")
    if not causal and kernel % 2 == 0:
        raise ValueError(f"a non-causal depthwise kernel must be odd, got k={kernel}")
    b1, b2 = _vector(b1, 2 * c, "b1"), _vector(b2, c, "b2")
    _vector(dw_b_folded, c, "dw_b_folded")

    out_dtype = x.dtype
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    pad = (torch.arange(t, device=x.device).unsqueeze(0) >= lengths.unsqueeze(1)).unsqueeze(2)
    left = kernel - 1 if causal else (kernel - 1) // 2
    right = kernel - 1 - left
    h = x.to(cd)
    if mask == "input":
        h = h.masked_fill(pad, 0.0)
        if causal:
            h = F.pad(h, (0, 0, left, 0))                # zero *input* frames before the start
    h = h @ w1.to(cd).T
    if b1 is not None:
        h = h + b1.to(cd)
    h = h[..., :c] * torch.sigmoid(h[..., c:])           # GLU
    if mask == "glu":
        h = F.pad(h.masked_fill(pad, 0.0), (0, 0, left, right))
    elif not causal:
        h = F.pad(h, (0, 0, left, right))                # the depthwise conv's own zero padding
    windows = h.unfold(1, kernel, 1)                     # [B, T, C, k]
    h = (windows * dw_w.to(cd)).sum(-1) + dw_b_folded.to(cd)
    h = F.silu(h) @ w2.to(cd).T
    if b2 is not None:
        h = h + b2.to(cd)
    return h.masked_fill(pad, 0.0).to(out_dtype)
