"""The PyTorch reference Conformer (conformer/): rel_shift, masks, the functional references
against the modules, padding and causality invariants, BatchNorm folding, subsampling lengths,
and strict checkpoint loading from WeNet/ESPnet/torchaudio key names. CPU, small sizes."""
import math

import pytest
import torch
import torch.nn.functional as F

from conformer import (CheckpointMismatchError, ConformerConfig, ConformerEncoder,
                       ConvolutionModule, RelPositionMultiHeadedAttention, abs_pos_table,
                       attention_mask, chunk_attention_mask, conv_module_reference,
                       fold_batchnorm, from_espnet, from_torchaudio, from_wenet,
                       infer_config_from_state_dict, make_pad_mask, rel_pos_attention_reference,
                       rel_pos_table, rel_shift)
from conformer.config import conv_stack_length

SMALL = dict(input_dim=40, d_model=32, num_heads=2, ffn_dim=64, num_layers=2,
             conv_kernel_size=7)


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights, and BatchNorm running statistics far from identity, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module.eval()


def _encoder(seed: int = 0, **overrides) -> ConformerEncoder:
    return _randomize(ConformerEncoder(ConformerConfig(**{**SMALL, **overrides})), seed)


# ---- rel_shift -------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [1, 2, 5, 30])
def test_rel_shift_matches_index_formula(t):
    x = torch.randn(2, 3, t, 2 * t - 1)
    i = torch.arange(t).unsqueeze(1)
    j = torch.arange(t).unsqueeze(0)
    assert torch.equal(rel_shift(x), x[..., i, t - 1 - i + j])
    assert torch.equal(rel_shift(x[0, 0]), x[0, 0, i, t - 1 - i + j])   # no leading dims


def test_rel_shift_rejects_wrong_width():
    with pytest.raises(ValueError, match="2T-1"):
        rel_shift(torch.zeros(1, 4, 4))


# ---- masks -----------------------------------------------------------------------------------

def test_make_pad_mask_wenet_example():
    expected = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(make_pad_mask(torch.tensor([5, 3, 2])), expected)
    assert make_pad_mask(torch.tensor([2]), 4).tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("lengths, max_len, match", [
    (torch.tensor([1.0]), None, "integer"),
    (torch.tensor([5]), 4, "exceeds"),
    (torch.tensor([-1]), None, ">= 0"),
    (torch.tensor([[1]]), None, "1-D"),
])
def test_make_pad_mask_rejects_bad_lengths(lengths, max_len, match):
    with pytest.raises(ValueError, match=match):
        make_pad_mask(lengths, max_len)


def _wenet_chunk_loop(size, chunk, left):
    """WeNet's subsequent_chunk_mask, as its loop states it (wenet/utils/mask.py)."""
    ret = torch.zeros(size, size, dtype=torch.bool)
    for i in range(size):
        start = 0 if left < 0 else max((i // chunk - left) * chunk, 0)
        ret[i, start:min((i // chunk + 1) * chunk, size)] = True
    return ret


@pytest.mark.parametrize("size, chunk, left", [(4, 2, -1), (10, 3, -1), (10, 3, 0), (10, 3, 1),
                                               (9, 4, 2), (7, 1, 0), (5, 8, -1)])
def test_chunk_mask_matches_wenet(size, chunk, left):
    assert torch.equal(chunk_attention_mask(size, chunk, left),
                       _wenet_chunk_loop(size, chunk, left))


def test_chunk_mask_example_and_combined_mask():
    assert chunk_attention_mask(4, 2).int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0],
                                                        [1, 1, 1, 1], [1, 1, 1, 1]]
    m = attention_mask(torch.tensor([4, 3]), 4, chunk_size=2, num_left_chunks=0)
    assert m.shape == (2, 4, 4)
    assert m[1].int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    assert attention_mask(torch.tensor([4, 3]), 4).shape == (2, 1, 4)


@pytest.mark.parametrize("kwargs", [dict(chunk_size=0), dict(chunk_size=2.0),
                                    dict(chunk_size=2, num_left_chunks=None)])
def test_chunk_mask_rejects_bad_args(kwargs):
    with pytest.raises(ValueError):
        chunk_attention_mask(4, **kwargs)


# ---- attention -------------------------------------------------------------------------------

def _attention_case(legacy, t=13, seed=0):
    torch.manual_seed(seed)
    att = _randomize(RelPositionMultiHeadedAttention(32, 4, legacy=legacy), seed)
    x = torch.randn(3, t, 32)
    pos_emb = (abs_pos_table if legacy else rel_pos_table)(t, 32)
    return att, x, pos_emb


def _projections(att, x, pos_emb):
    b, t, _ = x.shape
    heads = lambda y: y.view(y.size(0), -1, att.h, att.d_k)   # noqa: E731
    return (heads(att.linear_q(x)), heads(att.linear_k(x)), heads(att.linear_v(x)),
            heads(att.linear_pos(pos_emb).unsqueeze(0))[0])


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("chunk, left", [(None, -1), (4, -1), (3, 0), (2, 1)])
def test_attention_reference_equals_module(legacy, chunk, left):
    att, x, pos_emb = _attention_case(legacy)
    lengths = torch.tensor([13, 9, 4])
    with torch.no_grad():
        module_out = att(x, attention_mask(lengths, 13, chunk, left), pos_emb)
        q, k, v, p = _projections(att, x, pos_emb)
        ctx = rel_pos_attention_reference(q, k, v, p, att.pos_bias_u, att.pos_bias_v, lengths,
                                          chunk, left)
        ref_out = att.linear_out(ctx.reshape(3, 13, 32))
    assert ctx.shape == (3, 13, 4, 8)
    torch.testing.assert_close(module_out, ref_out, atol=1e-5, rtol=1e-5)


def test_attention_reference_half_inputs():
    att, x, pos_emb = _attention_case(legacy=False)
    lengths = torch.tensor([13, 9, 4])
    with torch.no_grad():
        q, k, v, p = _projections(att, x, pos_emb)
        full = rel_pos_attention_reference(q, k, v, p, att.pos_bias_u, att.pos_bias_v, lengths)
        half = rel_pos_attention_reference(q.half(), k.half(), v.half(), p.half(),
                                           att.pos_bias_u.half(), att.pos_bias_v.half(), lengths)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), full, atol=2e-2, rtol=2e-2)


def test_rows_without_keys_give_zeros_not_nan():
    att, x, pos_emb = _attention_case(legacy=False, t=8)
    lengths = torch.tensor([8, 0, 3])   # a length-0 sequence: no key at all
    with torch.no_grad():
        q, k, v, p = _projections(att, x, pos_emb)
        ctx = rel_pos_attention_reference(q, k, v, p, att.pos_bias_u, att.pos_bias_v, lengths)
        # chunk 2, no history: queries 4.. of sequence 2 (length 3) see only padded keys
        chunked = rel_pos_attention_reference(q, k, v, p, att.pos_bias_u, att.pos_bias_v,
                                              lengths, chunk_size=2, num_left_chunks=0)
        module_out = att(x, attention_mask(lengths, 8, 2, 0), pos_emb)
    assert torch.isfinite(ctx).all() and torch.isfinite(chunked).all()
    assert torch.equal(ctx[1], torch.zeros_like(ctx[1]))
    assert torch.equal(chunked[2, 4:], torch.zeros_like(chunked[2, 4:]))
    assert chunked[2, :3].abs().sum() > 0
    # the module's fully masked rows are its output bias alone (zero context, projected)
    torch.testing.assert_close(module_out[1], att.linear_out.bias.expand(8, -1))
    enc = _encoder(subsampling=4)
    out, out_lengths = enc(torch.randn(2, 40, 40), torch.tensor([40, 0]))
    assert out_lengths.tolist() == [9, 0] and torch.isfinite(out).all()


# ---- convolution module ----------------------------------------------------------------------

def _conv_module(causal, norm="batch_norm", bias=True, mask="input", seed=0):
    k = 4 if causal else 5
    return _randomize(ConvolutionModule(16, k, causal, norm, bias, 1e-5, mask), seed)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("norm", ["batch_norm", "layer_norm"])
@pytest.mark.parametrize("mask", ["input", "glu"])
def test_conv_module_ignores_padded_frames(causal, norm, mask):
    conv = _conv_module(causal, norm, mask=mask)
    lengths = torch.tensor([20, 12, 5])
    x = torch.randn(3, 20, 16)
    valid = ~make_pad_mask(lengths, 20)
    noisy = torch.where(valid.unsqueeze(2), x, 1e3 * torch.randn(3, 20, 16))
    with torch.no_grad():
        a, b = conv(x, valid), conv(noisy, valid)
    assert torch.equal(a, b)
    assert torch.equal(a[~valid], torch.zeros_like(a[~valid]))


def test_causal_conv_does_not_look_ahead():
    conv = _conv_module(causal=True)
    x = torch.randn(1, 20, 16)
    y = x.clone()
    y[:, 11] += 5.0
    valid = torch.ones(1, 20, dtype=torch.bool)
    with torch.no_grad():
        a, b = conv(x, valid), conv(y, valid)
    assert torch.equal(a[:, :11], b[:, :11])
    assert not torch.allclose(a[:, 11], b[:, 11])
    # the symmetric conv does look ahead, by (k-1)/2 frames
    sym = _conv_module(causal=False)
    with torch.no_grad():
        a, b = sym(x, valid), sym(y, valid)
    assert torch.equal(a[:, :9], b[:, :9]) and not torch.allclose(a[:, 9], b[:, 9])


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_batchnorm_equals_conv_then_batchnorm(with_bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(16, 16, 7, padding=3, groups=16, bias=with_bias)
    bn = _randomize(torch.nn.BatchNorm1d(16, eps=1e-3))
    x = torch.randn(2, 16, 25)
    w, b = fold_batchnorm(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                          bn.running_var, bn.eps)
    assert w.shape == (16, 7) and b.shape == (16,)
    with torch.no_grad():
        torch.testing.assert_close(F.conv1d(x, w[:, None], b, padding=3, groups=16), bn(conv(x)),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mask", ["input", "glu"])
def test_conv_module_reference_equals_module(causal, bias, mask):
    conv = _conv_module(causal, bias=bias, mask=mask)
    lengths = torch.tensor([20, 12, 5])
    x = torch.randn(3, 20, 16)
    dw = conv.depthwise_conv
    with torch.no_grad():
        w, b = fold_batchnorm(dw.weight, dw.bias, conv.norm.weight, conv.norm.bias,
                              conv.norm.running_mean, conv.norm.running_var, conv.norm.eps)
        ref = conv_module_reference(x, lengths, conv.pointwise_conv1.weight,
                                    conv.pointwise_conv1.bias, w[:, None], b,
                                    conv.pointwise_conv2.weight, conv.pointwise_conv2.bias,
                                    causal, mask)
        out = conv(x, ~make_pad_mask(lengths, 20))
        ref64 = conv_module_reference(x.double(), lengths, conv.pointwise_conv1.weight[..., 0],
                                      conv.pointwise_conv1.bias, w, b,
                                      conv.pointwise_conv2.weight[..., 0],
                                      conv.pointwise_conv2.bias, causal, mask)
    torch.testing.assert_close(ref, out, atol=1e-5, rtol=1e-5)
    assert ref64.dtype == torch.float64
    torch.testing.assert_close(ref64.float(), out, atol=1e-5, rtol=1e-5)


def test_conv_module_reference_rejects_bad_shapes():
    x, lengths = torch.zeros(1, 4, 8), torch.tensor([4])
    with pytest.raises(ValueError, match="w1"):
        conv_module_reference(x, lengths, torch.zeros(8, 8), None, torch.zeros(8, 3),
                              torch.zeros(8), torch.zeros(8, 8), None, False)


# ---- subsampling and encoder -----------------------------------------------------------------

@pytest.mark.parametrize("factor", [4, 6, 8])
def test_subsampling_output_lengths(factor):
    """A frame is valid when its receptive field lies in the valid input (WeNet's mask
    slicing), and those frames do not depend on padded input."""
    enc = _encoder(subsampling=factor)
    t_in = 50
    lengths = torch.arange(t_in + 1)
    feats = torch.randn(len(lengths), t_in, 40)
    with torch.no_grad():
        out, out_lengths = enc(feats, lengths)
        noisy, _ = enc(torch.where(~make_pad_mask(lengths, t_in).unsqueeze(2), feats,
                                   torch.randn_like(feats)), lengths)
    field = enc.config.min_input_frames
    expected = [sum(1 for j in range(out.size(1)) if j * factor + field - 1 < n)
                for n in lengths.tolist()]
    assert out.size(1) == conv_stack_length(t_in, factor)
    assert out_lengths.tolist() == expected
    for i, n in enumerate(out_lengths.tolist()):
        assert torch.equal(out[i, :n], noisy[i, :n])


def test_too_short_input_raises():
    enc = _encoder(subsampling=8)
    with pytest.raises(ValueError, match="at least 15"):
        enc(torch.randn(1, 14, 40), torch.tensor([14]))


def _alone_and_in_batch(enc):
    feats = torch.randn(2, 70, 40)
    with torch.no_grad():
        batch, lengths = enc(feats, torch.tensor([70, 45]))
        alone, alone_len = enc(feats[1:, :45], torch.tensor([45]))
    assert lengths[1] == alone_len[0] == alone.size(1)
    return batch[1, :alone.size(1)], alone[0]


@pytest.mark.parametrize("pos_enc", ["rel", "rel_legacy", "abs"])
@pytest.mark.parametrize("overrides", [dict(conv_mask="glu"), dict(conv_bias=False),
                                       dict(causal=True, conv_kernel_size=8)])
def test_encoder_batch_padding_invariance(pos_enc, overrides):
    """An utterance gives the same valid outputs alone and padded inside a batch, unless
    WeNet's conv masking meets a pointwise_conv1 bias in a non-causal model (next test)."""
    in_batch, alone = _alone_and_in_batch(_encoder(pos_enc=pos_enc, **overrides))
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=1e-5)


def test_wenet_conv_masking_depends_on_padding():
    """WeNet zeroes padded conv-module *inputs*, which become glu(b1) != 0 at the depthwise
    conv, while the conv's own padding after the last frame is 0: the last valid frames of a
    non-causal model see the difference."""
    in_batch, alone = _alone_and_in_batch(_encoder())
    assert not torch.allclose(in_batch[-1], alone[-1], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=30, num_heads=4), "divisible"),
    (dict(conv_kernel_size=8), "odd"),
    (dict(subsampling=None), "input_dim"),
    (dict(subsampling=2), "subsampling"),
    (dict(pos_enc="rope"), "pos_enc"),
    (dict(conv_norm="group_norm"), "conv_norm"),
    (dict(conv_mask="output"), "conv_mask"),
    (dict(input_dim=6), "too small"),
    (dict(ln_eps=0.0), "ln_eps"),
    (dict(num_layers=True), "num_layers"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConformerConfig(**{**SMALL, **kwargs})


# ---- checkpoints -----------------------------------------------------------------------------

def _wenet_names(sd, cfg):
    """Our state_dict under WeNet's names (Conv2dSubsampling4's Linear is `out.0`, 6/8's is
    `linear`), plus the `pe` buffer WeNet registers."""
    named = {}
    for key, value in sd.items():
        if key.startswith("embed.out."):
            key = ("embed.out.0." if cfg.subsampling == 4 else "embed.linear.") + \
                key.split(".")[-1]
        named[key] = value
    named["embed.pos_enc.pe"] = abs_pos_table(5000, cfg.d_model).unsqueeze(0)
    return named


def _espnet_names(sd):
    return {("embed.out.0." + k.split(".")[-1]) if k.startswith("embed.out.") else k: v
            for k, v in sd.items()}


def _same_outputs(a, b, feats, lengths):
    with torch.no_grad():
        (x, xl), (y, yl) = a(feats, lengths), b(feats, lengths)
    return torch.equal(x, y) and torch.equal(xl, yl)


@pytest.mark.parametrize("overrides", [
    dict(subsampling=4, pos_enc="rel_legacy", cmvn=True),
    dict(subsampling=6, pos_enc="rel_legacy", conv_norm="layer_norm"),
    dict(subsampling=8, pos_enc="abs", macaron=False, conv_bias=False),
])
def test_wenet_round_trip(overrides):
    enc = _encoder(seed=1, **overrides)
    if enc.config.cmvn:
        enc.global_cmvn.mean.normal_()
        enc.global_cmvn.istd.uniform_(0.5, 2.0)
    cfg = enc.config
    sd = _wenet_names(enc.state_dict(), cfg)
    loaded = from_wenet(sd, cfg)
    assert not loaded.training
    assert _same_outputs(enc, loaded, torch.randn(2, 60, 40), torch.tensor([60, 41]))
    input_dim = {} if cfg.cmvn else dict(input_dim=40)
    heads = dict(num_heads=2) if cfg.pos_enc == "abs" else {}
    assert infer_config_from_state_dict(sd, "wenet", **input_dim, **heads) == cfg
    whole = {**{"encoder." + k: v for k, v in sd.items()}, "decoder.embed.0.weight": torch.ones(1)}
    assert _same_outputs(enc, from_wenet(whole, cfg, prefix="encoder."),
                         torch.randn(1, 30, 40), torch.tensor([30]))


def test_espnet_round_trip():
    enc = _encoder(seed=2, pos_enc="rel", ln_eps=1e-12)
    sd = _espnet_names(enc.state_dict())
    assert _same_outputs(enc, from_espnet(sd, enc.config), torch.randn(2, 50, 40),
                         torch.tensor([50, 23]))
    assert infer_config_from_state_dict(sd, "espnet", input_dim=40) == enc.config
    with pytest.raises(ValueError, match="cmvn"):
        from_espnet(sd, ConformerConfig(**SMALL, cmvn=True))


def test_mismatch_report_lists_every_problem():
    enc = _encoder()
    sd = _wenet_names(enc.state_dict(), enc.config)
    del sd["after_norm.weight"], sd["encoders.1.self_attn.pos_bias_u"]
    sd["encoders.2.norm_ff.weight"] = torch.ones(32)
    sd["ctc.ctc_lo.weight"] = torch.ones(3)
    sd["encoders.0.feed_forward.w_1.weight"] = torch.ones(32, 64)
    sd["encoders.1.conv_module.depthwise_conv.weight"] = torch.ones(32, 1, 5)
    with pytest.raises(CheckpointMismatchError) as info:
        from_wenet(sd, enc.config)
    err = info.value
    assert isinstance(err, ValueError)
    assert sorted(err.missing) == ["after_norm.weight", "encoders.1.self_attn.pos_bias_u"]
    assert sorted(err.unexpected) == ["ctc.ctc_lo.weight", "encoders.2.norm_ff.weight"]
    assert sorted(err.misshaped) == [
        ("encoders.0.feed_forward.w_1.weight", (64, 32), (32, 64)),
        ("encoders.1.conv_module.depthwise_conv.weight", (32, 1, 7), (32, 1, 5))]
    message = str(err)
    for text in ("2 missing, 2 unexpected, 2 mis-shaped", "after_norm.weight",
                 "encoders.1.self_attn.pos_bias_u", "ctc.ctc_lo.weight",
                 "encoders.2.norm_ff.weight", "expected [64, 32], got [32, 64]",
                 "expected [32, 1, 7], got [32, 1, 5]"):
        assert text in message


TORCHAUDIO = dict(SMALL, input_dim=32, subsampling=None, pos_enc="abs", final_norm=False)
# torchaudio.models.Conformer's key names under conformer_layers.N (torchaudio 2.x).
TORCHAUDIO_LAYER_KEYS = [
    "ffn1.sequential.0.weight", "ffn1.sequential.0.bias", "ffn1.sequential.1.weight",
    "ffn1.sequential.1.bias", "ffn1.sequential.4.weight", "ffn1.sequential.4.bias",
    "self_attn_layer_norm.weight", "self_attn_layer_norm.bias", "self_attn.in_proj_weight",
    "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
    "conv_module.layer_norm.weight", "conv_module.layer_norm.bias",
    "conv_module.sequential.0.weight", "conv_module.sequential.0.bias",
    "conv_module.sequential.2.weight", "conv_module.sequential.2.bias",
    "conv_module.sequential.3.weight", "conv_module.sequential.3.bias",
    "conv_module.sequential.3.running_mean", "conv_module.sequential.3.running_var",
    "conv_module.sequential.3.num_batches_tracked", "conv_module.sequential.5.weight",
    "conv_module.sequential.5.bias", "ffn2.sequential.0.weight", "ffn2.sequential.0.bias",
    "ffn2.sequential.1.weight", "ffn2.sequential.1.bias", "ffn2.sequential.4.weight",
    "ffn2.sequential.4.bias", "final_layer_norm.weight", "final_layer_norm.bias",
]
_OURS_FOR_TORCHAUDIO = {
    "ffn1.sequential.0": "norm_ff_macaron", "ffn1.sequential.1": "feed_forward_macaron.w_1",
    "ffn1.sequential.4": "feed_forward_macaron.w_2", "self_attn_layer_norm": "norm_mha",
    "self_attn.out_proj": "self_attn.linear_out", "conv_module.layer_norm": "norm_conv",
    "conv_module.sequential.0": "conv_module.pointwise_conv1",
    "conv_module.sequential.2": "conv_module.depthwise_conv",
    "conv_module.sequential.3": "conv_module.norm",
    "conv_module.sequential.5": "conv_module.pointwise_conv2", "ffn2.sequential.0": "norm_ff",
    "ffn2.sequential.1": "feed_forward.w_1", "ffn2.sequential.4": "feed_forward.w_2",
    "final_layer_norm": "norm_final",
}


def _torchaudio_names(sd, num_layers):
    named = {}
    for n in range(num_layers):
        for key in TORCHAUDIO_LAYER_KEYS:
            module, param = key.rsplit(".", 1)
            if module == "self_attn" and param.startswith("in_proj_"):
                which = "weight" if param == "in_proj_weight" else "bias"
                value = torch.cat([sd[f"encoders.{n}.self_attn.linear_{x}.{which}"]
                                   for x in "qkv"])
            else:
                value = sd[f"encoders.{n}.{_OURS_FOR_TORCHAUDIO[module]}.{param}"]
            named[f"conformer_layers.{n}.{key}"] = value
    return named


def test_torchaudio_names_round_trip():
    enc = _randomize(ConformerEncoder(ConformerConfig(**TORCHAUDIO)), seed=3)
    sd = _torchaudio_names(enc.state_dict(), 2)
    assert _same_outputs(enc, from_torchaudio(sd, enc.config), torch.randn(2, 30, 32),
                         torch.tensor([30, 30]))
    assert infer_config_from_state_dict(sd, "torchaudio", num_heads=2) == enc.config
    del sd["conformer_layers.0.conv_module.sequential.3.running_mean"]
    with pytest.raises(CheckpointMismatchError, match="use_group_norm"):
        from_torchaudio(sd, enc.config)
    with pytest.raises(ValueError, match="final_norm=True"):
        from_torchaudio(sd, ConformerConfig(**{**TORCHAUDIO, "final_norm": True}))


def _torchaudio():
    try:
        import torchaudio
    except (ImportError, OSError) as err:   # OSError: its C++ extension does not match torch
        pytest.skip(f"torchaudio is not importable here ({type(err).__name__}: {err})")
    return torchaudio


def test_matches_torchaudio_conformer():
    torchaudio = _torchaudio()
    torch.manual_seed(0)
    ta = torchaudio.models.Conformer(input_dim=32, num_heads=2, ffn_dim=64, num_layers=2,
                                     depthwise_conv_kernel_size=7)
    ta = _randomize(ta, seed=4)
    sd = ta.state_dict()
    assert {k.split(".", 2)[2] for k in sd if k.startswith("conformer_layers.0.")} <= \
        set(TORCHAUDIO_LAYER_KEYS)
    cfg = infer_config_from_state_dict(sd, "torchaudio", num_heads=2)
    ours = from_torchaudio(sd, cfg)
    feats, lengths = torch.randn(3, 30, 32), torch.full((3,), 30)   # torchaudio masks no padding
    with torch.no_grad():
        (a, al), (b, bl) = ta(feats, lengths), ours(feats, lengths)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert torch.equal(al, bl)


def test_sinusoid_tables_follow_their_sources():
    d = 32
    t = 6
    pos = torch.arange(t - 1, -t, -1, dtype=torch.float32).unsqueeze(1)
    freqs = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    table = rel_pos_table(t, d)
    assert table.shape == (2 * t - 1, d)
    torch.testing.assert_close(table[:, 0::2], torch.sin(pos * freqs))
    torch.testing.assert_close(table[:, 1::2], torch.cos(pos * freqs))
    assert torch.equal(table[:t].flip(0), abs_pos_table(t, d))   # rows T-1 … 0: positions 0 … T-1
