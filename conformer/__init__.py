"""PyTorch reference Conformer encoder (WeNet/ESPnet/torchaudio semantics), the numerical
reference for conformer-trt's fused kernels and TensorRT back end.

    from conformer import ConformerConfig, ConformerEncoder, from_wenet
    enc = from_wenet(ckpt, ConformerConfig(pos_enc="rel_legacy", cmvn=True), prefix="encoder.")
    out, out_lengths = enc(feats, lengths)          # feats [B, T, 80], lengths [B]

Modules: ``config`` (ConformerConfig), ``reference`` (encoder, layer, FFN), ``attention``
(rel_shift, attention modules and ``rel_pos_attention_reference``), ``convolution`` (conv
module and ``conv_module_reference``), ``subsampling``, ``positional`` (sinusoid tables),
``masks``, ``weights`` (checkpoint loading); ``fold_batchnorm`` is the conv kernel's.

Source files are cited as WeNet wenet/transformer/*.py (moved to wenet/models/transformer/ in
wenet-e2e/wenet#2779), ESPnet espnet/nets/pytorch_backend/{transformer,conformer}/*.py and
espnet2/asr/encoder/conformer_encoder.py, torchaudio torchaudio/models/conformer.py.
"""
from kernels.conv_module import fold_batchnorm

from .attention import (MultiHeadedAttention, RelPositionMultiHeadedAttention, rel_shift,
                        rel_pos_attention_reference)
from .config import ConformerConfig
from .convolution import ConvolutionModule, conv_module_reference
from .masks import attention_mask, chunk_attention_mask, make_pad_mask
from .positional import abs_pos_table, rel_pos_table
from .reference import ConformerEncoder, ConformerEncoderLayer, PositionwiseFeedForward
from . import recipe
from .subsampling import Conv2dSubsampling
from .weights import (CheckpointMismatchError, from_espnet, from_torchaudio,
                      from_wenet, infer_config_from_state_dict)

__all__ = [
    "CheckpointMismatchError", "ConformerConfig", "ConformerEncoder", "ConformerEncoderLayer",
    "Conv2dSubsampling", "ConvolutionModule", "MultiHeadedAttention", "PositionwiseFeedForward",
    "RelPositionMultiHeadedAttention", "abs_pos_table", "attention_mask", "chunk_attention_mask",
    "conv_module_reference", "fold_batchnorm", "from_espnet", "from_torchaudio", "from_wenet",
    "infer_config_from_state_dict", "make_pad_mask", "rel_pos_attention_reference",
    "recipe", "rel_pos_table", "rel_shift",
]
