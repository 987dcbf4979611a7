"""Architecture of a Conformer encoder, as one frozen dataclass.

The fields cover the Conformer variants of WeNet (wenet/transformer/encoder.py
``ConformerEncoder``), ESPnet (espnet2/asr/encoder/conformer_encoder.py) and torchaudio
(torchaudio/models/conformer.py).
Inference only: there is no dropout field, every dropout of those projects is the identity here.
"""
from __future__ import annotations

from dataclasses import dataclass

# The Conv2d stacks of the subsampling front ends, as (kernel, stride) per conv, from WeNet's
# wenet/transformer/subsampling.py (Conv2dSubsampling4/6/8) and ESPnet's
# espnet/nets/pytorch_backend/transformer/subsampling.py (Conv2dSubsampling, 6, 8).
SUBSAMPLING_CONVS: dict[int, tuple[tuple[int, int], ...]] = {
    4: ((3, 2), (3, 2)),
    6: ((3, 2), (5, 3)),
    8: ((3, 2), (3, 2), (3, 2)),
}
POS_ENCODINGS = ("rel", "rel_legacy", "abs")
CONV_NORMS = ("batch_norm", "layer_norm")
CONV_MASKS = ("input", "glu")


def conv_stack_length(n: int, factor: int) -> int:
    """Length of an axis of ``n`` after the unpadded Conv2d stack of subsampling ``factor``
    (``(n - k) // s + 1`` per conv; 0 when the axis is too short for the stack)."""
    for k, s in SUBSAMPLING_CONVS[factor]:
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


@dataclass(frozen=True)
class ConformerConfig:
    """Shape and variant of a Conformer encoder.

    Fields:
        input_dim: feature dim of the encoder input (80 log-mel bins). With ``subsampling=None``
            the features go straight into the layers, so it must equal ``d_model``.
        d_model, num_heads, ffn_dim, num_layers, conv_kernel_size: the usual sizes.
        subsampling: 4, 6 or 8 for WeNet/ESPnet's Conv2dSubsampling front ends, or None for no
            front end at all (torchaudio's ``Conformer``, which takes [B, T, d_model] input).
        pos_enc: how attention sees positions.
            ``"rel"``: ESPnet's current RelPositionalEncoding (pos_emb of length 2T-1, relative
            positions T-1 … -(T-1)) with RelPositionMultiHeadedAttention applying ``rel_shift``
            (espnet/nets/pytorch_backend/transformer/{embedding,attention}.py).
            ``"rel_legacy"``: WeNet's RelPositionalEncoding + RelPositionMultiHeadedAttention
            (pos_emb of length T, positions 0 … T-1, *no* rel_shift: WeNet removed it, see
            wenet/transformer/attention.py). This is what WeNet checkpoints were trained with.
            It is not ESPnet's ``legacy_rel_pos`` (reversed positions plus a length-T shift),
            which is not supported.
            ``"abs"``: plain multi-head attention with no positional term in the block
            (torchaudio's nn.MultiheadAttention). With a subsampling front end the sinusoidal
            absolute encoding is added after it, as WeNet/ESPnet ``abs_pos`` do.
        causal: causal depthwise conv (left pad k-1, WeNet's ``causal=True``) for streaming.
        conv_norm: norm after the depthwise conv, ``"batch_norm"`` or ``"layer_norm"`` (over
            channels, per frame: WeNet's ``cnn_module_norm``).
        conv_mask: where the conv module zeroes padded frames on the way in (it always zeroes
            them on the way out). ``"input"``: the module's input, before pointwise_conv1, as
            WeNet does; padded frames (and, causal, the k-1 frames before the start) then reach
            the depthwise conv as ``glu(b1)``, so with a pointwise_conv1 bias the last valid
            frames of a non-causal model depend on how much padding follows them.
            ``"glu"``: the GLU output, right before the depthwise conv, so padding looks like
            the conv's own zero padding and an utterance's output does not depend on the batch
            it is padded into. Not a WeNet/ESPnet/torchaudio behaviour (ESPnet and torchaudio do
            not mask at all); identical to "input" when conv_bias is False.
        macaron: macaron FFN before attention; both FFNs are then scaled by 0.5, else the one
            FFN by 1.0 (WeNet/ESPnet ``ff_scale``).
        ln_eps: eps of every LayerNorm of the layers and of ``after_norm``. 1e-5 is torch's and
            current WeNet's; ESPnet and WeNet before 2022-01 (wenet-e2e/wenet#907) use 1e-12.
        conv_norm_eps: eps of the conv module's BatchNorm/LayerNorm (WeNet ``conv_norm_eps``).
        conv_bias: biases on the conv module's three convolutions (WeNet ``conv_bias``; old
            torchaudio releases have none).
        final_norm: the encoder's closing LayerNorm ``after_norm`` (WeNet/ESPnet have it,
            torchaudio has not).
        cmvn: WeNet's GlobalCMVN inside the encoder, ``(x - mean) * istd`` before subsampling.
    """

    input_dim: int = 80
    d_model: int = 256
    num_heads: int = 4
    ffn_dim: int = 1024
    num_layers: int = 12
    conv_kernel_size: int = 31
    subsampling: int | None = 4
    pos_enc: str = "rel"
    causal: bool = False
    conv_norm: str = "batch_norm"
    conv_mask: str = "input"
    macaron: bool = True
    ln_eps: float = 1e-5
    conv_norm_eps: float = 1e-5
    conv_bias: bool = True
    final_norm: bool = True
    cmvn: bool = False

    def __post_init__(self):
        for name in ("input_dim", "d_model", "num_heads", "ffn_dim", "num_layers",
                     "conv_kernel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("causal", "macaron", "conv_bias", "final_norm", "cmvn"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("ln_eps", "conv_norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.pos_enc not in POS_ENCODINGS:
            raise ValueError(f"pos_enc must be one of {POS_ENCODINGS}, got {self.pos_enc!r}")
        if self.conv_norm not in CONV_NORMS:
            raise ValueError(f"conv_norm must be one of {CONV_NORMS}, got {self.conv_norm!r}")
        if self.conv_mask not in CONV_MASKS:
            raise ValueError(f"conv_mask must be one of {CONV_MASKS}, got {self.conv_mask!r}")
        if not self.causal and self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size={self.conv_kernel_size} must be odd for the "
                             "non-causal ('same' padded) depthwise conv")
        if self.subsampling is None:
            if self.input_dim != self.d_model:
                raise ValueError(f"subsampling=None feeds the features straight into the "
                                 f"layers: input_dim={self.input_dim} must equal "
                                 f"d_model={self.d_model}")
        elif self.subsampling not in SUBSAMPLING_CONVS:
            raise ValueError(f"subsampling must be None or one of "
                             f"{tuple(SUBSAMPLING_CONVS)}, got {self.subsampling!r}")
        elif conv_stack_length(self.input_dim, self.subsampling) < 1:
            raise ValueError(f"input_dim={self.input_dim} is too small for the subsampling-"
                             f"{self.subsampling} conv stack (no frequency bin is left)")
        if self.uses_sinusoids and self.d_model % 2:
            raise ValueError(f"d_model={self.d_model} must be even for the sinusoidal "
                             "positional encoding")

    @property
    def d_k(self) -> int:
        """Per-head dim."""
        return self.d_model // self.num_heads

    @property
    def subsampling_rate(self) -> int:
        """Input frames per output frame (1 without a front end)."""
        return self.subsampling or 1

    @property
    def min_input_frames(self) -> int:
        """Fewest input frames that give one output frame (the front end's receptive field)."""
        if self.subsampling is None:
            return 1
        frames, stride = 1, 1
        for k, s in SUBSAMPLING_CONVS[self.subsampling]:
            frames += (k - 1) * stride
            stride *= s
        return frames

    @property
    def uses_sinusoids(self) -> bool:
        """Whether a sinusoidal table is used: relative encodings, or "abs" after a front end."""
        return self.pos_enc != "abs" or self.subsampling is not None
