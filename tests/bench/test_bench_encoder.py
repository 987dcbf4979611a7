"""The whole encoder, issue 8's size: 12 layers, d=256, 4 heads, FFN 1024, kernel 31, fp16,
B=32, T=500 frames after subsampling (the layers only: the front end is left out, as
torchaudio's Conformer has none).

* ``fused graphed``: the eager back end (conformer.eager) captured in a CUDA graph;
  ``fused``: the same launched from the host.
* ``reference`` / ``reference compile``: conformer.reference.ConformerEncoder in fp16, eager and
  torch.compile'd; ``torchaudio`` / ``torchaudio compile``: torchaudio.models.Conformer with the
  same weights (absolute-position architecture only).
Baselines are timed as users run them, from the host, synchronised per forward. TFLOP/s count
the GEMMs and attention's T^2 products (K.cost-style least work); bytes count only the input
and output activations, so "of copy BW" is not meaningful here.
"""
import pytest
import torch

from conformer import ConformerConfig, ConformerEncoder
from conformer.eager import EagerEncoder
from kernels.contract import Cost
from tests.test_conformer_reference import _randomize

B, T = 32, 500
SIZE = dict(input_dim=256, d_model=256, num_heads=4, ffn_dim=1024, num_layers=12,
            conv_kernel_size=31, subsampling=None)
VARIANTS = {"rel": dict(pos_enc="rel"), "abs": dict(pos_enc="abs", final_norm=False)}
_models: dict = {}


def _cost(cfg: ConformerConfig) -> Cost:
    m, d, f = B * T, cfg.d_model, cfg.ffn_dim
    ffns = 2 if cfg.macaron else 1
    rel = cfg.pos_enc == "rel"
    per_layer = (ffns * 2 * 2 * m * d * f + 4 * 2 * m * d * d + 2 * m * d * 3 * d
                 + 2 * m * d * cfg.conv_kernel_size + (4 + 2 * rel) * B * T * T * d)
    return Cost(bytes=2 * 2 * m * d, flops=cfg.num_layers * per_layer)


def _model(variant):
    if variant not in _models:
        cfg = ConformerConfig(**SIZE, **VARIANTS[variant])
        enc = _randomize(ConformerEncoder(cfg), seed=1)
        with torch.no_grad():
            for p in enc.parameters():
                p.mul_(0.3)
        _models[variant] = enc.cuda()
    return _models[variant]


def _inputs():
    gen = torch.Generator(device="cuda").manual_seed(0)
    return (torch.randn(B, T, 256, device="cuda", generator=gen, dtype=torch.float16),
            torch.full((B,), T, device="cuda", dtype=torch.int32))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("impl", ["fused graphed", "fused", "reference", "reference compile",
                                  "torchaudio", "torchaudio compile"])
def test_encoder(measure, measure_wall, benchmark, impl, variant):
    enc = _model(variant)
    cfg = enc.config
    cost = _cost(cfg)
    feats, lengths = _inputs()
    benchmark.group = f"encoder 12x{cfg.d_model} {variant}-pos fp16 B{B} T{T}"
    if impl.startswith("fused"):
        fused = EagerEncoder(enc, torch.float16)
        if impl == "fused graphed":     # GraphBench captures the forward, as graphed() does
            measure([lambda: fused(feats, lengths)], cost, role="candidate", impl=impl)
        else:
            with torch.no_grad():
                measure_wall(lambda: fused(feats, lengths), cost, role="candidate", impl=impl)
        return
    if impl.startswith("torchaudio"):
        if variant != "abs":
            pytest.skip("torchaudio's Conformer has absolute-position attention only")
        torchaudio = pytest.importorskip("torchaudio")
        ta = torchaudio.models.Conformer(input_dim=256, num_heads=4, ffn_dim=1024,
                                         num_layers=12, depthwise_conv_kernel_size=31)
        ta = _randomize(ta, seed=1)
        model = ta.cuda().half().eval()
    else:
        model = enc.half()
    run = torch.compile(model) if impl.endswith("compile") else model
    with torch.no_grad():
        measure_wall(lambda: run(feats, lengths.long()), cost, role="baseline", impl=impl)
    if not impl.startswith("torchaudio"):
        enc.float()

