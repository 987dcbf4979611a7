"""The build recipe through the eager back end against the float64 reference encoder, at tiny
sizes (on the GPU where there is one, else with the kernels in Triton's interpreter), and what
the recipe refuses."""
import pytest
import torch

from conformer import ConformerConfig, ConformerEncoder, recipe
from conformer.eager import EagerEncoder
from tests.test_conformer_reference import _randomize

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TINY = dict(input_dim=20, d_model=64, num_heads=2, ffn_dim=96, num_layers=2, conv_kernel_size=7)
FP16_TOL = 2e-2     # two layers of fp16 activations against float64


def _compare(config, lengths, t_in, chunk=None, left=-1, seed=0):
    enc = _randomize(ConformerEncoder(config), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    feats = torch.randn(len(lengths), t_in, config.input_dim, generator=gen)
    lengths = torch.tensor(lengths)
    ref, ref_len = enc.double()(feats.double(), lengths, chunk, left)
    out, out_len = EagerEncoder(enc, torch.float16, DEV)(feats, lengths, chunk, left)
    assert out.dtype == torch.float16 and out.shape == ref.shape
    assert out_len.cpu().tolist() == ref_len.tolist()
    for b, n in enumerate(ref_len.tolist()):      # frames past the length are padding
        got, want = out[b, :n].double().cpu(), ref[b, :n]
        assert torch.isfinite(got).all()
        err = ((got - want).norm() / want.norm()).item()
        assert err < FP16_TOL, (b, err)


@pytest.mark.parametrize("overrides, lengths, t_in, chunk, left", [
    (dict(), [41, 30, 17], 41, None, -1),                                  # ESPnet rel-pos
    (dict(pos_enc="rel_legacy"), [39, 25], 39, None, -1),                  # WeNet's un-shifted
    (dict(pos_enc="rel_legacy", causal=True), [45, 45], 45, 2, -1),
    (dict(cmvn=True, ln_eps=1e-12, conv_mask="glu"), [37, 37], 37, None, -1),
    (dict(causal=True, subsampling=6), [50, 33], 50, 2, 1),                # streaming
    (dict(pos_enc="abs", subsampling=8, macaron=False, conv_bias=False), [70, 45], 70, None, -1),
    (dict(pos_enc="abs", subsampling=None, input_dim=64, final_norm=False), [13, 6], 13, None, -1),
])
def test_eager_recipe_matches_the_reference(overrides, lengths, t_in, chunk, left):
    _compare(ConformerConfig(**{**TINY, **overrides}), lengths, t_in, chunk, left)


@pytest.mark.parametrize("overrides, match", [
    (dict(conv_norm="layer_norm"), "conv_norm='layer_norm'"),
])
def test_unsupported_variants_are_refused(overrides, match):
    enc = ConformerEncoder(ConformerConfig(**{**TINY, **overrides}))
    with pytest.raises(ValueError, match=match):
        recipe.prepare(enc)
    with pytest.raises(ValueError, match=match):
        EagerEncoder(enc, torch.float16, DEV)


def test_prepare_folds_the_scales():
    config = ConformerConfig(**TINY)
    enc = _randomize(ConformerEncoder(config))
    w = recipe.prepare(enc)
    sd = enc.state_dict()
    assert torch.equal(w["0.ffm.w2.weight"], sd["encoders.0.feed_forward_macaron.w_2.weight"] * 0.5)
    assert torch.allclose(w["embed.out.bias"], sd["embed.out.bias"] * 8.0)     # sqrt(64)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in w.values())


@pytest.mark.parametrize("feats, lengths, error, match", [
    (torch.zeros(2, 30, 19), torch.tensor([30, 30]), ValueError, r"\[B, T, 20\]"),
    (torch.zeros(2, 30, 20), torch.tensor([30.0, 30.0]), ValueError, "lengths must be integers"),
    (torch.zeros(2, 30, 20), torch.tensor([30]), ValueError, r"shape \[2\]"),
    (torch.zeros(2, 5, 20), torch.tensor([5, 5]), ValueError, "too short"),
])
def test_bad_inputs_are_refused(feats, lengths, error, match):
    enc = EagerEncoder(ConformerEncoder(ConformerConfig(**TINY)), torch.float16, DEV)
    with pytest.raises(error, match=match):
        enc(feats, lengths)


def test_float32_is_refused():
    with pytest.raises(TypeError, match="float16 or torch.bfloat16"):
        EagerEncoder(ConformerEncoder(ConformerConfig(**TINY)), torch.float32, DEV)
