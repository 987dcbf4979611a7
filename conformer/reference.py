"""Plain-PyTorch Conformer encoder: the numerical reference for the fast kernels and the
TensorRT back end.

Structure and parameter names are WeNet's (wenet/transformer/encoder.py ``ConformerEncoder``,
encoder_layer.py ``ConformerEncoderLayer``, positionwise_feed_forward.py), which ESPnet shares
for the layers: ``global_cmvn`` (optional), ``embed`` (subsampling), ``encoders.N.*``,
``after_norm``. Each layer, pre-LayerNorm, with ``ff_scale`` 0.5 (macaron) or 1.0::

    x = x + ff_scale * FFN_macaron(norm_ff_macaron(x))      # macaron only
    x = x + MHSA(norm_mha(x), pos_emb, mask)
    x = x + Conv(norm_conv(x), valid)
    x = x + ff_scale * FFN(norm_ff(x))
    x = norm_final(x)

Inference only (eval mode, no dropout); call ``.eval()`` before use so BatchNorm uses its
running statistics (the loaders in ``conformer.weights`` return eval-mode encoders).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .attention import MultiHeadedAttention, RelPositionMultiHeadedAttention
from .config import ConformerConfig
from .convolution import ConvolutionModule
from .masks import attention_mask, make_pad_mask
from .positional import abs_pos_table, rel_pos_table
from .subsampling import Conv2dSubsampling


class PositionwiseFeedForward(nn.Module):
    """``w_2(SiLU(w_1(x)))``, d → ffn → d (WeNet/ESPnet, activation "swish")."""

    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.w_1 = nn.Linear(d_model, ffn_dim)
        self.w_2 = nn.Linear(ffn_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.nn.functional.silu(self.w_1(x)))


class GlobalCMVN(nn.Module):
    """WeNet's wenet/transformer/cmvn.py ``GlobalCMVN``: ``(x - mean) * istd`` per feature,
    with buffers ``mean`` and ``istd`` (inverse std)."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("istd", torch.ones(input_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.istd


class ConformerEncoderLayer(nn.Module):
    """One pre-LN Conformer block (see the module docstring for its equation)."""

    def __init__(self, config: ConformerConfig):
        super().__init__()
        d, eps = config.d_model, config.ln_eps
        if config.pos_enc == "abs":
            self.self_attn = MultiHeadedAttention(d, config.num_heads)
        else:
            self.self_attn = RelPositionMultiHeadedAttention(
                d, config.num_heads, legacy=config.pos_enc == "rel_legacy")
        self.feed_forward = PositionwiseFeedForward(d, config.ffn_dim)
        self.feed_forward_macaron = (PositionwiseFeedForward(d, config.ffn_dim)
                                     if config.macaron else None)
        self.conv_module = ConvolutionModule(d, config.conv_kernel_size, config.causal,
                                             config.conv_norm, config.conv_bias,
                                             config.conv_norm_eps, config.conv_mask)
        self.norm_ff = nn.LayerNorm(d, eps=eps)
        self.norm_mha = nn.LayerNorm(d, eps=eps)
        self.norm_ff_macaron = nn.LayerNorm(d, eps=eps) if config.macaron else None
        self.norm_conv = nn.LayerNorm(d, eps=eps)
        self.norm_final = nn.LayerNorm(d, eps=eps)
        self.ff_scale = 0.5 if config.macaron else 1.0

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor | None,
                valid: torch.Tensor) -> torch.Tensor:
        """x [B, T, d]; mask bool [B, 1 or T, T] (True = may attend); pos_emb as the attention
        needs it (None for "abs"); valid bool [B, T] for the conv module's padding."""
        if self.feed_forward_macaron is not None:
            x = x + self.ff_scale * self.feed_forward_macaron(self.norm_ff_macaron(x))
        x = x + self.self_attn(self.norm_mha(x), mask, pos_emb)
        x = x + self.conv_module(self.norm_conv(x), valid)
        x = x + self.ff_scale * self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    """Features → (cmvn) → subsampling → positional encoding → layers → ``after_norm``.

    After a subsampling front end, x is scaled by sqrt(d_model) and, for "abs", the absolute
    sinusoidal table is added (WeNet/ESPnet ``PositionalEncoding``/``RelPositionalEncoding``,
    which live in the front end). Without a front end (``subsampling=None``, torchaudio's
    layout) the input enters the layers unscaled; "rel"/"rel_legacy" still get their tables.
    """

    def __init__(self, config: ConformerConfig):
        super().__init__()
        self.config = config
        self.global_cmvn = GlobalCMVN(config.input_dim) if config.cmvn else None
        self.embed = (Conv2dSubsampling(config.input_dim, config.d_model, config.subsampling)
                      if config.subsampling is not None else None)
        self.encoders = nn.ModuleList(ConformerEncoderLayer(config)
                                      for _ in range(config.num_layers))
        self.after_norm = (nn.LayerNorm(config.d_model, eps=config.ln_eps)
                           if config.final_norm else None)

    def _check_inputs(self, feats: torch.Tensor, lengths: torch.Tensor):
        cfg = self.config
        if feats.dim() != 3 or feats.size(2) != cfg.input_dim:
            raise ValueError(f"feats must be [B, T, {cfg.input_dim}], got {tuple(feats.shape)}")
        if lengths.shape != (feats.size(0),):
            raise ValueError(f"lengths must be [{feats.size(0)}], got {tuple(lengths.shape)}")
        if feats.size(1) < cfg.min_input_frames:
            raise ValueError(f"T={feats.size(1)} input frames is too short: subsampling "
                             f"{cfg.subsampling} needs at least {cfg.min_input_frames}")

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor,
                chunk_size: int | None = None, num_left_chunks: int = -1
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, T_in, input_dim], lengths [B] (ints, <= T_in) → (out [B, T, d_model],
        out_lengths [B]).

        ``chunk_size`` (output frames) restricts attention to U2 chunks with
        ``num_left_chunks`` of history (< 0: all); None is full attention. Output frames past
        ``out_lengths`` are padding: finite, but meaningless.
        """
        self._check_inputs(feats, lengths)
        valid = ~make_pad_mask(lengths, feats.size(1))                       # [B, T_in]
        x = feats if self.global_cmvn is None else self.global_cmvn(feats)
        cfg = self.config
        if self.embed is not None:
            x, valid = self.embed(x, valid)
            x = x * math.sqrt(cfg.d_model)
        t = x.size(1)
        pos_emb = None
        if cfg.pos_enc == "rel":
            pos_emb = rel_pos_table(t, cfg.d_model, x.device).to(x.dtype)
        elif cfg.pos_enc == "rel_legacy":
            pos_emb = abs_pos_table(t, cfg.d_model, x.device).to(x.dtype)
        elif self.embed is not None:
            x = x + abs_pos_table(t, cfg.d_model, x.device).to(x.dtype)
        out_lengths = valid.sum(1)
        mask = attention_mask(out_lengths, t, chunk_size, num_left_chunks)
        for layer in self.encoders:
            x = layer(x, mask, pos_emb, valid)
        if self.after_norm is not None:
            x = self.after_norm(x)
        return x, out_lengths
