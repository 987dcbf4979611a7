"""Loading WeNet, ESPnet and torchaudio encoder weights into ``ConformerEncoder``, strictly.

Every key of the source state_dict must map onto one of ours and every one of ours must be
filled, with the right shape; otherwise ``CheckpointMismatchError`` lists all the missing,
unexpected and mis-shaped keys at once, in the source's naming. The one exception is a
positional-encoding table saved by some versions (WeNet's ``embed.pos_enc.pe`` buffer, ESPnet
<= 0.5.2's ``embed.out.1.pe``): it is a fixed function of its shape, not a weight, so it is
accepted when present (its shape checked) and not loaded.

Key names come from the projects' module attributes: WeNet wenet/transformer/{encoder,
encoder_layer,attention,convolution,subsampling,positionwise_feed_forward,cmvn}.py; ESPnet
espnet2/asr/encoder/conformer_encoder.py with espnet/nets/pytorch_backend/{conformer,
transformer}/*; torchaudio torchaudio/models/conformer.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .config import ConformerConfig
from .reference import ConformerEncoder

SOURCES = ("wenet", "espnet", "torchaudio")


class CheckpointMismatchError(ValueError):
    """A state_dict does not fit the config. ``missing``/``unexpected`` hold source key names,
    ``misshaped`` holds ``(name, expected_shape, got_shape)`` (None in an expected shape: any
    size); the message lists every one of them."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str],
                 misshaped: list[tuple[str, tuple, tuple]], hints: list[str]):
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
        lines = [f"{source} state_dict does not match the config: {len(missing)} missing, "
                 f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped keys"]
        if missing:
            lines += ["missing keys:"] + [f"  {k}" for k in missing]
        if unexpected:
            lines += ["unexpected keys:"] + [f"  {k}" for k in unexpected]
        if misshaped:
            lines += ["mis-shaped keys:"] + [
                f"  {k}: expected {_fmt(want)}, got {_fmt(got)}" for k, want, got in misshaped]
        lines += [f"hint: {h}" for h in hints]
        super().__init__("\n".join(lines))


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("*" if n is None else str(n) for n in shape) + "]"


@dataclass(frozen=True)
class _Rule:
    """Source key ``src`` of shape ``shape`` (None: any size) fills our keys ``dst``: one key
    as is, several by splitting along dim 0, none for a derived table that is not loaded."""
    src: str
    dst: tuple[str, ...]
    shape: tuple[int | None, ...]
    optional: bool = False


def _renamed(model: ConformerEncoder, rename, skip: tuple[str, ...] = ()) -> list[_Rule]:
    """One-to-one rules for our keys (except those ending in ``skip``), source key
    ``rename(ours)``."""
    return [_Rule(rename(k), (k,), tuple(v.shape)) for k, v in model.state_dict().items()
            if not (skip and k.endswith(skip))]


def _wenet_rules(model: ConformerEncoder) -> list[_Rule]:
    cfg = model.config
    # Conv2dSubsampling4's Linear is out[0]; Conv2dSubsampling6/8 call it `linear`.
    out = "embed.out.0." if cfg.subsampling == 4 else "embed.linear."
    rules = _renamed(model, lambda k: out + k[len("embed.out."):]
                     if k.startswith("embed.out.") else k)
    if cfg.subsampling is not None:
        rules.append(_Rule("embed.pos_enc.pe", (), (1, None, cfg.d_model), optional=True))
    return rules


def _espnet_rules(model: ConformerEncoder) -> list[_Rule]:
    cfg = model.config
    if cfg.cmvn:
        raise ValueError("ESPnet normalises features outside the encoder (the model's "
                         "`normalize`), so an ESPnet encoder has no cmvn: use cmvn=False")
    # Conv2dSubsampling{,6,8}.out = Sequential(Linear, pos_enc).
    rules = _renamed(model, lambda k: "embed.out.0." + k[len("embed.out."):]
                     if k.startswith("embed.out.") else k)
    if cfg.subsampling is not None:
        rules.append(_Rule("embed.out.1.pe", (), (1, None, cfg.d_model), optional=True))
    return rules


# torchaudio ConformerLayer attribute paths, keyed by ours (under encoders.N / conformer_layers.N).
_TORCHAUDIO_LAYER = {
    "norm_ff_macaron": "ffn1.sequential.0",
    "feed_forward_macaron.w_1": "ffn1.sequential.1",
    "feed_forward_macaron.w_2": "ffn1.sequential.4",
    "norm_mha": "self_attn_layer_norm",
    "self_attn.linear_out": "self_attn.out_proj",
    "norm_conv": "conv_module.layer_norm",
    "conv_module.pointwise_conv1": "conv_module.sequential.0",
    "conv_module.depthwise_conv": "conv_module.sequential.2",
    "conv_module.norm": "conv_module.sequential.3",
    "conv_module.pointwise_conv2": "conv_module.sequential.5",
    "norm_ff": "ffn2.sequential.0",
    "feed_forward.w_1": "ffn2.sequential.1",
    "feed_forward.w_2": "ffn2.sequential.4",
    "norm_final": "final_layer_norm",
}
# torchaudio's fixed architecture, as config values.
_TORCHAUDIO_FIXED = dict(subsampling=None, pos_enc="abs", macaron=True, causal=False,
                         conv_norm="batch_norm", final_norm=False, cmvn=False, ln_eps=1e-5,
                         conv_norm_eps=1e-5)


def _torchaudio_rules(model: ConformerEncoder) -> list[_Rule]:
    cfg = model.config
    wrong = [f"{k}={getattr(cfg, k)!r} (torchaudio: {v!r})"
             for k, v in _TORCHAUDIO_FIXED.items() if getattr(cfg, k) != v]
    if wrong:
        raise ValueError("torchaudio.models.Conformer has a fixed architecture; the config "
                         "differs in " + ", ".join(wrong))

    def rename(key: str) -> str:
        _, n, rest = key.split(".", 2)
        module, param = rest.rsplit(".", 1)
        return f"conformer_layers.{n}.{_TORCHAUDIO_LAYER[module]}.{param}"

    qkv = ("linear_q.weight", "linear_q.bias", "linear_k.weight", "linear_k.bias",
           "linear_v.weight", "linear_v.bias")
    rules = _renamed(model, rename, skip=qkv)
    d = cfg.d_model
    for n in range(cfg.num_layers):   # nn.MultiheadAttention packs q, k, v along dim 0
        ours = f"encoders.{n}.self_attn.linear_"
        rules.append(_Rule(f"conformer_layers.{n}.self_attn.in_proj_weight",
                           tuple(f"{ours}{x}.weight" for x in "qkv"), (3 * d, d)))
        rules.append(_Rule(f"conformer_layers.{n}.self_attn.in_proj_bias",
                           tuple(f"{ours}{x}.bias" for x in "qkv"), (3 * d,)))
    return rules


def _select(state_dict, prefix: str) -> dict[str, torch.Tensor]:
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str, got {prefix!r}")
    selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        raise ValueError(f"no key of the state_dict starts with prefix {prefix!r}")
    bad = [k for k, v in selected.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"state_dict values must be tensors; these are not: {bad}")
    return selected


def _shape_fits(want: tuple, got: torch.Size) -> bool:
    return len(want) == len(got) and all(w is None or w == g for w, g in zip(want, got))


def _load(source: str, rules_for, state_dict, config: ConformerConfig,
          prefix: str) -> ConformerEncoder:
    if not isinstance(config, ConformerConfig):
        raise ValueError(f"config must be a ConformerConfig, got {type(config).__name__}")
    sd = _select(state_dict, prefix)
    model = ConformerEncoder(config)
    rules = rules_for(model)
    by_src = {r.src: r for r in rules}
    missing = [r.src for r in rules if r.src not in sd and not r.optional]
    unexpected = [k for k in sd if k not in by_src]
    misshaped = [(r.src, r.shape, tuple(sd[r.src].shape)) for r in rules
                 if r.src in sd and not _shape_fits(r.shape, sd[r.src].shape)]
    if missing or unexpected or misshaped:
        hints = ["infer_config_from_state_dict() reads most of the config from the weights"]
        if any(k.endswith("conv_module.sequential.3.running_mean") for k in missing):
            hints.append("torchaudio use_group_norm=True (GroupNorm over channels and time) "
                         "is not supported")
        raise CheckpointMismatchError(source, missing, unexpected, misshaped, hints)
    ours: dict[str, torch.Tensor] = {}
    for r in rules:
        if r.src in sd and len(r.dst) == 1:
            ours[r.dst[0]] = sd[r.src]
        elif r.src in sd and r.dst:
            ours.update(zip(r.dst, sd[r.src].chunk(len(r.dst), 0)))
    model.load_state_dict(ours, strict=True)
    return model.eval()


def from_wenet(state_dict, config: ConformerConfig, *, prefix: str = "") -> ConformerEncoder:
    """An eval-mode encoder from a WeNet ``ConformerEncoder`` state_dict (the ``encoder.*``
    part of a WeNet checkpoint: pass ``prefix="encoder."`` for a whole-model state_dict; keys
    without the prefix are then ignored). WeNet's own outputs are reproduced with
    ``pos_enc="rel_legacy"`` (WeNet drops rel_shift) and, for checkpoints from before 2022-01,
    ``ln_eps=1e-12``. Raises ``CheckpointMismatchError`` on any key or shape mismatch."""
    return _load("wenet", _wenet_rules, state_dict, config, prefix)


def from_espnet(state_dict, config: ConformerConfig, *, prefix: str = "") -> ConformerEncoder:
    """An eval-mode encoder from an ESPnet2 ``ConformerEncoder`` state_dict (``prefix=
    "encoder."`` for a whole ESPnet2 model). ESPnet's ``rel_pos_type="latest"`` is
    ``pos_enc="rel"``; ESPnet's LayerNorm eps is 1e-12 (``ln_eps=1e-12``). ESPnet's conv module
    does not mask padding and its subsampled lengths can be one longer, so outputs match
    ESPnet's on full-length batches. Raises ``CheckpointMismatchError`` on any mismatch."""
    return _load("espnet", _espnet_rules, state_dict, config, prefix)


def from_torchaudio(state_dict, config: ConformerConfig, *,
                    prefix: str = "") -> ConformerEncoder:
    """An eval-mode encoder from a ``torchaudio.models.Conformer`` state_dict. The config
    must be torchaudio's architecture: ``subsampling=None, pos_enc="abs", final_norm=False``,
    macaron, batch norm, eps 1e-5; ``conv_bias=False`` for releases whose conv module has no
    biases. ``use_group_norm=True`` and ``convolution_first=True`` models are not supported
    (the latter cannot be told from the weights: the caller must not pass one). torchaudio
    does not mask padding in the conv module, so outputs match on full-length batches."""
    return _load("torchaudio", _torchaudio_rules, state_dict, config, prefix)


def _layer_ids(keys, pattern: str) -> int:
    ids = sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})
    if not ids or ids != list(range(len(ids))):
        raise ValueError(f"cannot count layers: keys matching {pattern!r} have layer ids {ids}")
    return len(ids)


def _need(sd: dict, key: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"cannot infer the config: the state_dict has no {key!r}")
    return sd[key]


def infer_config_from_state_dict(state_dict, source: str, *, prefix: str = "",
                                 **overrides) -> ConformerConfig:
    """Read a ``ConformerConfig`` off a state_dict of ``source`` ("wenet", "espnet" or
    "torchaudio"); ``overrides`` (config field names) win over what is read.

    Read from shapes and key presence: d_model, ffn_dim, num_layers, conv_kernel_size,
    subsampling, macaron, conv_norm, conv_bias, final_norm, cmvn, and num_heads and
    rel-vs-abs attention where ``pos_bias_u`` exists. Not in the weights, so defaulted:
    ``causal=False``, ``conv_norm_eps=1e-5``, ``ln_eps`` 1e-12 for ESPnet and 1e-5 otherwise
    (old WeNet used 1e-12), relative attention as "rel_legacy" for WeNet and "rel" for
    ESPnet. Must be passed when not readable: ``num_heads`` for plain attention (torchaudio),
    ``input_dim`` for a subsampling front end without cmvn (the Linear after the convs fixes
    it only up to rounding).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    unknown = set(overrides) - set(ConformerConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown config fields in overrides: {sorted(unknown)}")
    sd = _select(state_dict, prefix)
    if source == "torchaudio":
        layer = "conformer_layers.0."
        d = _need(sd, layer + "ffn1.sequential.0.weight").size(0)
        found = dict(input_dim=d, d_model=d,
                     ffn_dim=_need(sd, layer + "ffn1.sequential.1.weight").size(0),
                     num_layers=_layer_ids(sd, r"conformer_layers\.(\d+)\."),
                     conv_kernel_size=_need(sd, layer + "conv_module.sequential.2.weight")
                     .size(-1),
                     conv_bias=layer + "conv_module.sequential.2.bias" in sd,
                     **_TORCHAUDIO_FIXED)
    else:
        layer = "encoders.0."
        d = _need(sd, layer + "norm_mha.weight").size(0)
        found = dict(d_model=d, ffn_dim=_need(sd, layer + "feed_forward.w_1.weight").size(0),
                     num_layers=_layer_ids(sd, r"encoders\.(\d+)\."),
                     conv_kernel_size=_need(sd, layer + "conv_module.depthwise_conv.weight")
                     .size(-1),
                     conv_bias=layer + "conv_module.depthwise_conv.bias" in sd,
                     conv_norm="batch_norm" if layer + "conv_module.norm.running_mean" in sd
                     else "layer_norm",
                     macaron=layer + "feed_forward_macaron.w_1.weight" in sd,
                     final_norm="after_norm.weight" in sd,
                     cmvn="global_cmvn.mean" in sd,
                     ln_eps=1e-12 if source == "espnet" else 1e-5)
        if layer + "self_attn.pos_bias_u" in sd:
            found["num_heads"] = sd[layer + "self_attn.pos_bias_u"].size(0)
            found["pos_enc"] = "rel" if source == "espnet" else "rel_legacy"
        else:
            found["pos_enc"] = "abs"
        convs = [k for k in ("embed.conv.0.weight", "embed.conv.2.weight",
                             "embed.conv.4.weight") if k in sd]
        if not convs:
            raise ValueError("cannot infer the config: no Conv2d subsampling front end "
                             "(embed.conv.0.weight); only conv2d, conv2d6 and conv2d8 are "
                             "supported")
        found["subsampling"] = 8 if len(convs) == 3 else \
            6 if sd["embed.conv.2.weight"].size(-1) == 5 else 4
        if found["cmvn"]:
            found["input_dim"] = sd["global_cmvn.mean"].size(0)
    found.update(overrides)
    for field, why in (("num_heads", "plain attention has no per-head parameter"),
                       ("input_dim", "the subsampling Linear fixes it only up to rounding")):
        if field not in found:
            raise ValueError(f"pass {field}=...: it cannot be read from a {source} state_dict "
                             f"({why})")
    return ConformerConfig(**found)
