"""Relative-position attention at Conformer shapes (B=32, H=4, d_k=64, fp16, full lengths):
the Triton kernel against what a user would otherwise run — the eager ESPnet formulation, its
torch.compile, SDPA with the position scores materialised as attn_mask — and SDPA without
relative positions (FlashAttention: the speed of light for the same q.k^T and P.v).

The kernel runs its heuristic config (the tuner's winners, once stored, replace it); extra_info
records the config. Every row of the rel-pos group is charged the rel-pos work (K.cost), so its
TFLOP/s read as equivalent rates.
"""
import math

import pytest
import torch

import kernels
from kernels import gpu, launch, timing
from kernels.relpos_attention import reference

K = kernels.get("relpos_attention")
SEQ = (500, 2000)
_compiled = {}


def _shape(t, rel=1):
    return {"B": 32, "T": t, "H": 4, "DK": 64, "chunk": 0, "left_chunks": -1, "packed": 0, "rel": rel}


def _sets(shape, n):
    gen = torch.Generator(device="cuda").manual_seed(0)
    sets = [K.make_inputs(shape, torch.float16, "cuda", gen) for _ in range(n)]
    for s in sets:
        s["lengths"].fill_(shape["T"])
    return sets


def _heads(x, shape):
    b, t, h, dk = shape["B"], shape["T"], shape["H"], shape["DK"]
    return [x[n].view(b, t, h, dk).transpose(1, 2) for n in ("q", "k", "v")]


def _sdpa(x, shape):
    return torch.nn.functional.scaled_dot_product_attention(*_heads(x, shape))


def _sdpa_bias(x, shape):
    """SDPA with matrix_bd (and the key mask) materialised as a [B, H, T, T] additive mask."""
    t, h, dk = shape["T"], shape["H"], shape["DK"]
    q, k, v = _heads(x, shape)
    bd = reference.position_scores(q.transpose(1, 2), x["p"].view(2 * t - 1, h, dk),
                                   x["pos_bias_v"])
    keys = torch.arange(t, device="cuda") < x["lengths"][:, None]
    bias = (bd / math.sqrt(dk)).masked_fill(~keys[:, None, None, :], float("-inf"))
    q_u = q + x["pos_bias_u"][None, :, None, :]
    return torch.nn.functional.scaled_dot_product_attention(q_u, k, v, attn_mask=bias)


def _eager_compiled(shape):
    key = tuple(shape.values())
    if key not in _compiled:
        _compiled[key] = torch.compile(lambda x: K.baseline(x, shape, {}))
    return _compiled[key]


IMPLS = {
    "eager": lambda shape: (lambda x: K.baseline(x, shape, {})),
    "compile": _eager_compiled,
    "sdpa_bias": lambda shape: (lambda x: _sdpa_bias(x, shape)),
}


@pytest.mark.parametrize("t", SEQ)
@pytest.mark.parametrize("impl", ["triton", "cuda", "cuda_wgmma", "sdpa", "sdpa_bias", "eager",
                                  "compile"])
def test_relpos_attention(measure, benchmark, impl, t):
    shape = _shape(t, rel=0 if impl == "sdpa" else 1)
    cost = K.cost(_shape(t), "float16")
    sets = _sets(shape, timing.rotation(cost.bytes))
    benchmark.group = f"relpos_attention fp16 B32 H4 dk64 T{t}"
    if impl in ("triton", "cuda", "cuda_wgmma"):
        config = launch.default_config(K, K.impl(impl), shape, "float16")
        _measure_kernel(measure, sets, shape, cost, config, impl)
        return
    if impl == "sdpa":
        calls = [lambda s=s: _sdpa(s, shape) for s in sets]
        measure(calls, cost, role="speed of light (no rel-pos)", impl=impl)
        return
    fn = IMPLS[impl](shape)
    calls = [lambda s=s: fn(s) for s in sets]
    measure(calls, cost, role="baseline", impl=impl)


@pytest.mark.parametrize("t", SEQ)
@pytest.mark.parametrize("impl", ["triton", "cuda", "cuda_wgmma", "sdpa"])
def test_plain_attention(measure, benchmark, impl, t):
    """rel=0 (torchaudio's Conformer) against SDPA, both on the plain attention's work."""
    shape = _shape(t, rel=0)
    cost = K.cost(shape, "float16")
    sets = _sets(shape, timing.rotation(cost.bytes))
    benchmark.group = f"plain attention fp16 B32 H4 dk64 T{t}"
    if impl == "sdpa":
        measure([lambda s=s: _sdpa(s, shape) for s in sets], cost, role="baseline", impl=impl)
        return
    config = launch.default_config(K, K.impl(impl), shape, "float16")
    _measure_kernel(measure, sets, shape, cost, config, impl)


def _measure_kernel(measure, sets, shape, cost, config, impl):
    chosen = K.impl(impl)
    if not chosen.runs_on(gpu.running().spec):
        pytest.skip(f"{impl} does not run on {gpu.running().spec.name}")
    outs = [launch.empty_outputs(K, shape, "float16", "cuda") for _ in sets]
    calls = [lambda s=s, o=o: launch.run(K, chosen, config, {**s, **o}, shape)
             for s, o in zip(sets, outs)]
    measure(calls, cost, role="candidate", impl=impl, config=config, config_source="heuristic")
