"""The encoder written once, as a sequence of ops on a small builder interface.

``prepare(encoder)`` turns a reference :class:`~conformer.reference.ConformerEncoder` (loaded
from WeNet, ESPnet or torchaudio weights by :mod:`conformer.weights`) into named float32 weights
in the layout the fused kernels take; ``emit(builder, weights, config, feats, lengths)`` then
issues the encoder op by op. A back end implements :class:`Builder`: the eager one
(:mod:`conformer.eager`) runs each op at once on torch tensors, the TensorRT one
(:mod:`conformer.tensorrt_backend`) adds a layer per op to a network. So the weight mapping and
the order of the fused kernels are written here and nowhere else.

What the recipe folds and fuses, relative to the reference:

* every residual add goes into the next LayerNorm (``LN(x + r)`` and ``x + r`` in one pass);
* a block's final LayerNorm and the next LayerNorm (the next block's first, or the encoder's
  ``after_norm``) run as one op, ``layer_norm_chain``;
* the macaron scale ½ goes into each FFN's second Linear, ``sqrt(d_model)`` into the front
  end's output Linear;
* the conv module's BatchNorm goes into its depthwise conv, and the module is one fused op;
* each FFN's first Linear and its SiLU are one op (the activation in the GEMM's epilogue);
* the q, k and v projections are one Linear (weights stacked q | k | v), and attention is one
  fused op that reads the three from its packed output; the projected position
  table ``linear_pos(pos_table(T))`` depends only on T and the weights, so back ends compute it
  once per T (eager) or once for the profile's longest T and slice it (TensorRT).

Not covered (refused by :func:`check_supported` with the reason): the LayerNorm conv-module
norm (the fused conv kernel folds a BatchNorm).
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

from kernels.conv_module import prepare_weights as prepare_conv_weights

from .config import SUBSAMPLING_CONVS, ConformerConfig
from .reference import ConformerEncoder

Tensor = Any   # a back end's tensor handle


class Builder(Protocol):
    """The ops the recipe needs. Weights are passed by name (keys of ``prepare``'s dict); x is
    [B, T, C] unless an op says otherwise, ``lengths`` is int32 [B]."""

    def linear(self, x: Tensor, weight: str, bias: str | None) -> Tensor: ...
    def linear_silu(self, x: Tensor, weight: str, bias: str) -> Tensor:
        """SiLU(linear(x)): the FFN's first Linear and its activation, one op."""
    def relu(self, x: Tensor) -> Tensor: ...
    def cmvn(self, x: Tensor, mean: str, istd: str) -> Tensor: ...       # (x - mean) * istd

    def layer_norm(self, x: Tensor, weight: str, bias: str, eps: float,
                   residual: Tensor | None) -> tuple[Tensor, Tensor]:
        """(LN(x + residual), x + residual); without a residual, (LN(x), x)."""

    def layer_norm_chain(self, x: Tensor, residual: Tensor, first: str, second: str,
                         eps: float) -> tuple[Tensor, Tensor]:
        """(y, LN_second(y)) for y = LN_first(x + residual); norms by name prefix
        (``first + ".weight"`` ...), one eps."""

    def conv2d(self, x: Tensor, weight: str, bias: str, stride: int) -> Tensor:
        """[B, C, T, F] -> [B, C', T', F'], unpadded."""

    def to_image(self, x: Tensor) -> Tensor: ...         # [B, T, F] -> [B, 1, T, F]
    def to_frames(self, x: Tensor) -> Tensor: ...        # [B, C, T, F] -> [B, T, C*F]
    def subsample_lengths(self, lengths: Tensor, kernel: int, stride: int) -> Tensor: ...
    def add_abs_pos(self, x: Tensor) -> Tensor: ...      # x + abs_pos_table(T)

    def rel_pos(self, x: Tensor, weight: str, legacy: bool) -> Tensor:
        """linear_pos(rel_pos_table(T)) [2T-1, d] for x's T, with the layer's ``weight``;
        ``legacy`` (WeNet): linear_pos(abs_pos_table(T)) [T, d]."""

    def attention(self, qkv: Tensor, lengths: Tensor, heads: int,
                  p: Tensor | None, pos_bias_u: str | None, pos_bias_v: str | None,
                  chunk_size: int | None, num_left_chunks: int, legacy: bool) -> Tensor:
        """Relative-position attention with ``p`` (``legacy``: WeNet's un-shifted position
        term), plain attention without; ``qkv`` [B, T, 3d] is q | k | v from one projection."""

    def conv_module(self, x: Tensor, lengths: Tensor, prefix: str, causal: bool,
                    mask_after_glu: bool) -> Tensor:
        """The fused module with weights ``prefix + {w1, b1, dw_w, dw_b, w2, b2}``."""


def check_supported(config: ConformerConfig) -> None:
    """ValueError naming what the fused recipe does not implement for this config."""
    if config.conv_norm != "batch_norm":
        raise ValueError("conv_norm='layer_norm' is not implemented by the fused conv module "
                         "(it folds a BatchNorm into the depthwise conv)")


def prepare(encoder: ConformerEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights, folded as the module docstring says, float32 (the conv module's
    folded depthwise weights stay float32 in every back end)."""
    config = encoder.config
    check_supported(config)
    sd = {k: v.detach() for k, v in encoder.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    if config.cmvn:
        out["cmvn.mean"], out["cmvn.istd"] = sd["global_cmvn.mean"], sd["global_cmvn.istd"]
    if config.subsampling is not None:
        for i in range(len(SUBSAMPLING_CONVS[config.subsampling])):
            for p in ("weight", "bias"):
                out[f"embed.conv.{i}.{p}"] = sd[f"embed.conv.{2 * i}.{p}"]
        scale = config.d_model ** 0.5
        out["embed.out.weight"] = sd["embed.out.weight"] * scale
        out["embed.out.bias"] = sd["embed.out.bias"] * scale
    for i, layer in enumerate(encoder.encoders):
        pre = f"encoders.{i}."
        ffns = (("feed_forward_macaron", "ffm"),) if config.macaron else ()
        for src, dst in (*ffns, ("feed_forward", "ff")):
            out[f"{i}.{dst}.w1.weight"] = sd[pre + src + ".w_1.weight"]
            out[f"{i}.{dst}.w1.bias"] = sd[pre + src + ".w_1.bias"]
            out[f"{i}.{dst}.w2.weight"] = sd[pre + src + ".w_2.weight"] * layer.ff_scale
            out[f"{i}.{dst}.w2.bias"] = sd[pre + src + ".w_2.bias"] * layer.ff_scale
        norms = ("norm_ff_macaron",) if config.macaron else ()
        for norm in (*norms, "norm_mha", "norm_conv", "norm_ff", "norm_final"):
            for p in ("weight", "bias"):
                out[f"{i}.{norm}.{p}"] = sd[f"{pre}{norm}.{p}"]
        for p in ("weight", "bias"):   # q, k and v: one projection, its rows q | k | v
            out[f"{i}.att.qkv.{p}"] = torch.cat([sd[f"{pre}self_attn.linear_{proj}.{p}"]
                                                 for proj in ("q", "k", "v")])
            out[f"{i}.att.out.{p}"] = sd[f"{pre}self_attn.linear_out.{p}"]
        if config.pos_enc != "abs":
            out[f"{i}.att.pos.weight"] = sd[pre + "self_attn.linear_pos.weight"]
            out[f"{i}.att.u"] = sd[pre + "self_attn.pos_bias_u"]
            out[f"{i}.att.v"] = sd[pre + "self_attn.pos_bias_v"]
        conv = prepare_conv_weights(sd, dtype=torch.float32, eps=config.conv_norm_eps,
                                    prefix=pre + "conv_module.")
        out.update({f"{i}.conv.{k}": v for k, v in conv.items()})
    if config.final_norm:
        out["after_norm.weight"], out["after_norm.bias"] = sd["after_norm.weight"], \
            sd["after_norm.bias"]
    return {k: v.float().contiguous() for k, v in out.items()}


def emit(b: Builder, config: ConformerConfig, feats: Tensor, lengths: Tensor,
         chunk_size: int | None = None, num_left_chunks: int = -1) -> tuple[Tensor, Tensor]:
    """Issue the encoder on ``b``: feats [B, T_in, input_dim], lengths int32 [B] -> (out
    [B, T, d_model], out_lengths [B]). Frames past out_lengths are padding."""
    check_supported(config)
    x = feats
    if config.cmvn:
        x = b.cmvn(x, "cmvn.mean", "cmvn.istd")
    if config.subsampling is not None:
        x = b.to_image(x)
        for i, (kernel, stride) in enumerate(SUBSAMPLING_CONVS[config.subsampling]):
            x = b.relu(b.conv2d(x, f"embed.conv.{i}.weight", f"embed.conv.{i}.bias", stride))
            lengths = b.subsample_lengths(lengths, kernel, stride)
        x = b.linear(b.to_frames(x), "embed.out.weight", "embed.out.bias")
        if config.pos_enc == "abs":
            x = b.add_abs_pos(x)
    eps = config.ln_eps    # pending, below: the residual branch not yet added to x

    def norm(name, x, pending):
        return b.layer_norm(x, f"{name}.weight", f"{name}.bias", eps, pending)

    def ffn(h, name):
        h = b.linear_silu(h, f"{name}.w1.weight", f"{name}.w1.bias")
        return b.linear(h, f"{name}.w2.weight", f"{name}.w2.bias")

    def first_norm(i):   # the norm a block starts with
        return f"{i}.norm_ff_macaron" if config.macaron else f"{i}.norm_mha"

    h, x = norm(first_norm(0), x, None)
    for i in range(config.num_layers):
        # here h = first_norm(i)(x), x is the residual stream
        if config.macaron:
            pending = ffn(h, f"{i}.ffm")
            h, x = norm(f"{i}.norm_mha", x, pending)
        qkv = b.linear(h, f"{i}.att.qkv.weight", f"{i}.att.qkv.bias")
        rel, legacy = config.pos_enc != "abs", config.pos_enc == "rel_legacy"
        ctx = b.attention(qkv, lengths, config.num_heads,
                          b.rel_pos(h, f"{i}.att.pos.weight", legacy) if rel else None,
                          f"{i}.att.u" if rel else None, f"{i}.att.v" if rel else None,
                          chunk_size, num_left_chunks, legacy)
        pending = b.linear(ctx, f"{i}.att.out.weight", f"{i}.att.out.bias")
        h, x = norm(f"{i}.norm_conv", x, pending)
        pending = b.conv_module(h, lengths, f"{i}.conv.", config.causal,
                                config.conv_mask == "glu")
        h, x = norm(f"{i}.norm_ff", x, pending)
        pending = ffn(h, f"{i}.ff")
        after = first_norm(i + 1) if i + 1 < config.num_layers else (
            "after_norm" if config.final_norm else None)
        if after is None:
            x, _ = norm(f"{i}.norm_final", x, pending)
        else:   # this block's final norm and the next norm in one pass
            x, h = b.layer_norm_chain(x, pending, f"{i}.norm_final", after, eps)
    if config.final_norm:
        x = h
    return x, lengths
