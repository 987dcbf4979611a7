"""The TensorRT back end's network on a machine without TensorRT: ``build_engine`` runs against a
stand-in for the tensorrt package (tests/fake_tensorrt.py) that records the network, checks
every layer's shapes and every ct_* plugin's fields and inputs against the kernel contract, and
evaluates it on the CPU with the kernels' float64 references in place of the plugins. So the
recipe, the weight mapping and the back end's use of the network API are checked against the
float64 reference encoder; TensorRT itself (the engine, the generated plugins, fp16 execution)
only where it imports."""
import sys

import pytest
import torch

from conformer import ConformerConfig, ConformerEncoder
from conformer import tensorrt_backend as trtb
from tests.fake_tensorrt import FakeTensorRT
from tests.test_conformer_reference import _randomize

TINY = dict(input_dim=20, d_model=64, num_heads=2, ffn_dim=96, num_layers=2, conv_kernel_size=7)
TOL = 3e-3     # fp16 weights, float64 activations: about 3e-4 measured in the first case


@pytest.fixture
def fake(monkeypatch):
    f = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", f)
    return f


def _build(fake, tmp_path, config, t_in, chunk=None, left=-1, seed=0):
    enc = _randomize(ConformerEncoder(config), seed).double()
    lib = tmp_path / "libconformer_trt.so"
    lib.write_bytes(b"")
    profile = trtb.Profile(1, 2, 4, config.min_input_frames, t_in, 2 * t_in)
    return enc, trtb.build_engine(enc, lib, profile, torch.float16, chunk, left)


@pytest.mark.parametrize("overrides, lengths, t_in, chunk, left", [
    (dict(), [41, 30, 17], 41, None, -1),                                  # ESPnet rel-pos
    (dict(pos_enc="rel_legacy", causal=True), [45, 45], 45, 2, -1),        # WeNet, streaming
    (dict(cmvn=True, conv_mask="glu"), [37, 20], 37, None, -1),
    (dict(causal=True, subsampling=6), [50, 33], 50, 2, 1),
    (dict(pos_enc="abs", subsampling=8, macaron=False, conv_bias=False), [70, 45], 70, None, -1),
    (dict(pos_enc="abs", subsampling=None, input_dim=64, final_norm=False), [13, 6], 13, None, -1),
])
def test_network_matches_the_reference(fake, tmp_path, overrides, lengths, t_in, chunk, left):
    config = ConformerConfig(**{**TINY, **overrides})
    enc, engine = _build(fake, tmp_path, config, t_in, chunk, left)
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(len(lengths), t_in, config.input_dim, generator=gen).half()
    lengths = torch.tensor(lengths, dtype=torch.int32)
    out, out_len = fake.run(engine, {"feats": feats, "lengths": lengths})
    ref, ref_len = enc(feats.double(), lengths.long(), chunk, left)
    assert out.shape == ref.shape and out_len.tolist() == ref_len.tolist()
    for b, n in enumerate(ref_len.tolist()):      # frames past the length are padding
        err = ((out[b, :n] - ref[b, :n]).norm() / ref[b, :n].norm()).item()
        assert err < TOL, (b, err)
    plugins = {layer.plugin.kernel.name for layer in fake.networks[engine][0].layers
               if layer.kind == "plugin"}
    assert plugins == {"layernorm", "relpos_attention", "conv_module"}


def test_inputs_beyond_the_profile_are_refused(fake, tmp_path):
    _, engine = _build(fake, tmp_path, ConformerConfig(**TINY), 30)
    with pytest.raises(ValueError, match="outside the profile"):
        fake.run(engine, {"feats": torch.zeros(2, 61, 20).half(),
                          "lengths": torch.tensor([61, 61], dtype=torch.int32)})


def test_a_plugin_without_a_field_its_kernel_needs_is_caught(fake, tmp_path, monkeypatch):
    """The stand-in's checks bite: attention without its ``packed`` field, as a back end that
    forgot it would emit, is refused the way the generated creator refuses it."""
    plugin = trtb.TrtBuilder._plugin

    def drop_packed(self, kernel, inputs, fields):
        return plugin(self, kernel, inputs, {k: v for k, v in fields.items() if k != "packed"})

    monkeypatch.setattr(trtb.TrtBuilder, "_plugin", drop_packed)
    with pytest.raises(AssertionError, match=r"fields missing \['packed'\]"):
        _build(fake, tmp_path, ConformerConfig(**TINY), 30)
