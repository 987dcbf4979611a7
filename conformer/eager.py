"""The eager back end: the recipe run at once on torch tensors with the fused kernels.

    enc = EagerEncoder(from_espnet(sd, config), dtype=torch.float16, device="cuda")
    out, out_lengths = enc(feats, lengths)              # feats [B, T_in, F], lengths [B]
    graphed = enc.graphed(batch=32, frames=2000)        # the same, captured in a CUDA graph
    out, out_lengths = graphed(feats, lengths)

LayerNorm, the FFN's Linear + SiLU, the conv module and attention run through the kernels' Python launchers (tuned
winners from the store where ``autotune run`` made them, else each kernel's heuristic);
Linear and the front end's Conv2d are cuBLAS/cuDNN through torch. Every op runs on the current
stream and nothing reads device values on the host, so a whole forward can be captured.
Without a GPU, Triton's interpreter runs the kernels on CPU tensors (slow: tiny shapes only).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from kernels.conv_module import WEIGHTS as CONV_WEIGHTS
from kernels.conv_module import conv_module
from kernels.layernorm import layer_norm
from kernels.layernorm_chain import layer_norm_chain
from kernels.linear_silu import linear_silu
from kernels.relpos_attention import rel_pos_attention

from . import recipe
from .positional import abs_pos_table, rel_pos_table
from .reference import ConformerEncoder


class EagerBuilder:
    """:class:`conformer.recipe.Builder` over torch tensors; ``weights`` are on the device,
    in the activation dtype except the conv module's float32 depthwise weights."""

    def __init__(self, weights: Mapping[str, torch.Tensor], dtype: torch.dtype):
        self.w, self.dtype = weights, dtype
        self._pos: dict[tuple[str, int], torch.Tensor] = {}

    def linear(self, x, weight, bias):
        return F.linear(x, self.w[weight], None if bias is None else self.w[bias])

    def linear_silu(self, x, weight, bias):
        return linear_silu(x, self.w[weight], self.w[bias])

    def relu(self, x):
        return F.relu(x)

    def cmvn(self, x, mean, istd):
        return (x - self.w[mean]) * self.w[istd]

    def layer_norm(self, x, weight, bias, eps, residual):
        if residual is None:
            return layer_norm(x, self.w[weight], self.w[bias], eps), x
        return layer_norm(x, self.w[weight], self.w[bias], eps, residual=residual)

    def layer_norm_chain(self, x, residual, first, second, eps):
        return layer_norm_chain(x, residual, self.w[first + ".weight"], self.w[first + ".bias"],
                                self.w[second + ".weight"], self.w[second + ".bias"], eps, eps)

    def conv2d(self, x, weight, bias, stride):
        return F.conv2d(x, self.w[weight], self.w[bias], stride)

    def to_image(self, x):
        return x.unsqueeze(1)

    def to_frames(self, x):
        b, c, t, f = x.shape
        return x.transpose(1, 2).reshape(b, t, c * f)

    def subsample_lengths(self, lengths, kernel, stride):
        return torch.clamp(torch.div(lengths - kernel, stride, rounding_mode="floor") + 1,
                           min=0).to(torch.int32)

    def add_abs_pos(self, x):
        return x + self._table("abs", x.size(1), lambda t: abs_pos_table(t, x.size(2), x.device))

    def rel_pos(self, x, weight, legacy):
        d = x.size(2)
        table = abs_pos_table if legacy else rel_pos_table
        return self._table((weight, legacy), x.size(1), lambda t: F.linear(
            table(t, d, x.device).to(x.dtype), self.w[weight]).contiguous())

    def _table(self, key, t, make):
        """Position tables depend on T and the weights only: made once per T (before a graph
        capture, by its warm-up run), then reused."""
        if (key, t) not in self._pos:
            self._pos[(key, t)] = make(t).to(self.dtype)
        return self._pos[(key, t)]

    def attention(self, qkv, lengths, heads, p, pos_bias_u, pos_bias_v, chunk_size,
                  num_left_chunks, legacy):
        rel = p is not None
        return rel_pos_attention(qkv, None, None, lengths, heads, p,
                                 self.w[pos_bias_u] if rel else None,
                                 self.w[pos_bias_v] if rel else None,
                                 chunk_size, num_left_chunks, legacy=legacy)

    def conv_module(self, x, lengths, prefix, causal, mask_after_glu):
        return conv_module(x, lengths, {n: self.w[prefix + n] for n in CONV_WEIGHTS},
                           causal=causal, mask_after_glu=mask_after_glu)


class EagerEncoder:
    """The fused encoder as a callable; ``dtype`` is float16 or bfloat16 (the attention kernel's
    dtypes)."""

    def __init__(self, encoder: ConformerEncoder, dtype: torch.dtype = torch.float16,
                 device: str | torch.device = "cuda"):
        if dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        self.config = encoder.config
        self.dtype, self.device = dtype, torch.device(device)
        weights = {k: v.to(self.device, torch.float32 if k.endswith((".dw_w", ".dw_b"))
                           else dtype) for k, v in recipe.prepare(encoder).items()}
        self.builder = EagerBuilder(weights, dtype)

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor,
                 chunk_size: int | None = None, num_left_chunks: int = -1):
        cfg = self.config
        if feats.dim() != 3 or feats.size(2) != cfg.input_dim:
            raise ValueError(f"feats must be [B, T, {cfg.input_dim}], got {tuple(feats.shape)}")
        if lengths.shape != (feats.size(0),) or lengths.dtype.is_floating_point:
            raise ValueError(f"lengths must be integers of shape [{feats.size(0)}], got "
                             f"{lengths.dtype} {tuple(lengths.shape)}")
        if feats.size(1) < cfg.min_input_frames:
            raise ValueError(f"T={feats.size(1)} input frames is too short: the front end "
                             f"needs at least {cfg.min_input_frames}")
        feats = feats.to(self.device, self.dtype).contiguous()
        lengths = lengths.to(self.device, torch.int32)
        return recipe.emit(self.builder, cfg, feats, lengths, chunk_size, num_left_chunks)

    def graphed(self, batch: int, frames: int, chunk_size: int | None = None,
                num_left_chunks: int = -1) -> "GraphedEncoder":
        """This encoder captured in a CUDA graph for inputs of exactly [batch, frames, F]."""
        return GraphedEncoder(self, batch, frames, chunk_size, num_left_chunks)


class GraphedEncoder:
    """A CUDA graph of one forward over static input buffers: a call copies feats and lengths
    in, replays, and returns the static outputs (overwritten by the next call: clone to keep)."""

    def __init__(self, encoder: EagerEncoder, batch: int, frames: int,
                 chunk_size: int | None, num_left_chunks: int):
        dev = encoder.device
        self.feats = torch.randn(batch, frames, encoder.config.input_dim, device=dev,
                                 dtype=encoder.dtype)
        self.lengths = torch.full((batch,), frames, device=dev, dtype=torch.int32)

        def forward():
            return encoder(self.feats, self.lengths, chunk_size, num_left_chunks)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):       # compile kernels, fill the position tables
            forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out, self.out_lengths = forward()

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor):
        if feats.shape != self.feats.shape or lengths.shape != self.lengths.shape:
            raise ValueError(f"this graph was captured for feats {tuple(self.feats.shape)} and "
                             f"lengths {tuple(self.lengths.shape)}; got {tuple(feats.shape)} "
                             f"and {tuple(lengths.shape)}")
        self.feats.copy_(feats)
        self.lengths.copy_(lengths)
        self.graph.replay()
        return self.out, self.out_lengths
