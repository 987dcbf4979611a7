"""Conv2d subsampling front ends (time and frequency by 4, 6 or 8).

WeNet wenet/transformer/subsampling.py ``Conv2dSubsampling4/6/8`` and ESPnet
espnet/nets/pytorch_backend/transformer/subsampling.py: unpadded Conv2d + ReLU stages on the
[T, F] feature plane (1 channel in, d_model out), the result flattened channel-major per frame
(``x.transpose(1, 2).view(b, t, c * f)``) and projected by a Linear to d_model.

Output validity follows WeNet's mask slicing (``x_mask[:, :, 2::2][:, :, 2::2]`` for factor 4,
``[2::2][4::3]`` for 6): a stage with kernel k and stride s keeps ``valid[:, k-1::s]``, i.e. an
output frame is valid when the last input frame it reads is. ESPnet slices ``[:-2:2]`` instead,
which can count one more frame for padded utterances; we follow WeNet.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import SUBSAMPLING_CONVS, conv_stack_length


class Conv2dSubsampling(nn.Module):
    """Front end of subsampling ``factor``; parameters ``conv.{0,2,4}`` (Conv2d, with ReLUs at
    the odd indices, as WeNet/ESPnet's Sequential) and ``out`` (Linear)."""

    def __init__(self, input_dim: int, d_model: int, factor: int):
        super().__init__()
        if factor not in SUBSAMPLING_CONVS:
            raise ValueError(f"subsampling factor must be one of {tuple(SUBSAMPLING_CONVS)}, "
                             f"got {factor!r}")
        self.stages = SUBSAMPLING_CONVS[factor]
        layers: list[nn.Module] = []
        channels = 1
        for kernel, stride in self.stages:
            layers += [nn.Conv2d(channels, d_model, kernel, stride), nn.ReLU()]
            channels = d_model
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(d_model * conv_stack_length(input_dim, factor), d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, F], valid bool [B, T] → ([B, T', d_model], valid [B, T'])."""
        x = self.conv(x.unsqueeze(1))                     # [B, d, T', F']
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        for kernel, stride in self.stages:
            valid = valid[:, kernel - 1::stride]
        return x, valid
