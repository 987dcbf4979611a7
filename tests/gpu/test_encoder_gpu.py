"""The eager back end on the GPU at Conformer sizes: against the reference encoder (float32 on
the GPU), ragged lengths, a chunk mask; the CUDA-graph capture gives the same outputs; with
torchaudio's weights it matches torchaudio's Conformer."""
import pytest
import torch

from conformer import ConformerConfig, ConformerEncoder, from_torchaudio, infer_config_from_state_dict
from conformer.eager import EagerEncoder
from tests.test_conformer_reference import _randomize

pytestmark = pytest.mark.gpu
SIZE = dict(d_model=256, num_heads=4, ffn_dim=1024, num_layers=4, conv_kernel_size=31)
TOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _rel_err(got, want, lengths):
    num = sum((got[b, :n].double() - want[b, :n].double()).norm() ** 2 for b, n in enumerate(lengths))
    den = sum(want[b, :n].double().norm() ** 2 for b, n in enumerate(lengths))
    return (num / den).sqrt().item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("overrides, chunk", [(dict(), None), (dict(causal=True), 16),
                                              (dict(pos_enc="abs", conv_mask="glu"), None),
                                              (dict(pos_enc="rel_legacy"), None)],
                         ids=["rel", "rel-causal-chunk16", "abs-glu", "rel_legacy"])
def test_eager_encoder_matches_the_reference(dtype, overrides, chunk):
    enc = _randomize(ConformerEncoder(ConformerConfig(**SIZE, **overrides)), seed=3).cuda()
    with torch.no_grad():     # scale the random weights like a trained model's (residual stream ~1)
        for p in enc.parameters():
            p.mul_(0.3)
    feats = torch.randn(5, 803, 80, device="cuda")
    lengths = torch.tensor([803, 640, 417, 33, 799], device="cuda")
    with torch.no_grad():
        ref, ref_len = enc(feats, lengths, chunk)
    fused = EagerEncoder(enc, dtype)
    out, out_len = fused(feats, lengths, chunk)
    assert torch.equal(out_len.long(), ref_len)
    assert torch.isfinite(out).all()
    err = _rel_err(out, ref, ref_len.tolist())
    assert err < TOL[dtype], err
    graphed = fused.graphed(5, 803, chunk)
    g_out, g_len = graphed(feats, lengths)
    torch.testing.assert_close(g_out, out, atol=0, rtol=0)
    graphed(torch.randn_like(feats), lengths)          # the graph recomputes from new inputs
    assert not torch.equal(graphed.out, out)
    with pytest.raises(ValueError, match="captured for feats"):
        graphed(feats[:, :100], lengths)


def test_matches_torchaudio():
    torchaudio = pytest.importorskip("torchaudio")
    ta = torchaudio.models.Conformer(input_dim=256, num_heads=4, ffn_dim=1024, num_layers=3,
                                     depthwise_conv_kernel_size=31)
    ta = _randomize(ta, seed=5).cuda()
    with torch.no_grad():
        for p in ta.parameters():
            p.mul_(0.3)
    sd = ta.state_dict()
    ours = from_torchaudio(sd, infer_config_from_state_dict(sd, "torchaudio", num_heads=4)).cuda()
    feats = torch.randn(4, 300, 256, device="cuda")
    lengths = torch.full((4,), 300, device="cuda")     # torchaudio masks no padding in the conv
    with torch.no_grad():
        want, _ = ta(feats, lengths)
    got, got_len = EagerEncoder(ours, torch.float16)(feats, lengths)
    assert got_len.tolist() == [300] * 4
    err = _rel_err(got, want, [300] * 4)
    assert err < 1e-2, err
