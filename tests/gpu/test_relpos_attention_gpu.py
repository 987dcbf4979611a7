"""Relative-position attention on the GPU, every implementation (the CUDA ones for fp16/bf16;
cuda_wgmma on sm_90 at d_k 64 and 128, skipped with its rule's reason elsewhere):
T from 1 to 2000 and odd, every head dim and dtype, all three position forms (ESPnet, WeNet
legacy, plain), ragged lengths with an empty sequence, chunk masks, a sample of the config space,
plain attention against SDPA, and a batch whose element offsets pass 2^31."""

import itertools

import pytest
import torch

import kernels
from kernels import gpu, launch, verify
from tests.gpu.sampling import random_valid_configs

pytestmark = pytest.mark.gpu
K = kernels.get("relpos_attention")
IMPLS = ["triton", "cuda", "cuda_wgmma"]


def _shape(b=3, t=500, h=2, dk=64, chunk=0, left=-1, rel=1, packed=0):
    return {"B": b, "T": t, "H": h, "DK": dk, "chunk": chunk, "left_chunks": left,
            "packed": packed, "rel": rel}


def _taken(impl, shape, dtype="float16"):
    """The impl and its default config for ``shape``; skips where cuda_wgmma's rule refuses the
    shape or this GPU (every other impl takes every shape)."""
    chosen = K.impl(impl)
    config = launch.default_config(K, chosen, shape, dtype)
    reason = chosen.valid(config, shape, dtype, gpu.running().spec)
    if reason and impl == "cuda_wgmma":
        pytest.skip(f"{impl}: {reason}")
    return chosen, config


def _check(impl, shape, dtype, config=None, seed=0):
    chosen, default = _taken(impl, shape, dtype)
    config = config or default
    v = verify.verify(K, chosen, config, shape, dtype, "cuda", seed=seed)
    assert v.ok, f"{impl} {shape} {dtype} {config}: {v}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("dk", [32, 64, 128])
@pytest.mark.parametrize("t", [1, 333, 500, 2000])
@pytest.mark.parametrize("impl", IMPLS)
def test_lengths_and_head_dims(impl, t, dk, dtype):
    _check(impl, _shape(t=t, dk=dk), dtype, seed=t + dk)


@pytest.mark.parametrize("t", [77, 500, 2000])
@pytest.mark.parametrize("impl", IMPLS)
def test_plain_attention(impl, t):
    _check(impl, _shape(t=t, rel=0), "float16")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("dk", [32, 64, 128])
@pytest.mark.parametrize("t", [1, 333, 2000])
@pytest.mark.parametrize("impl", IMPLS)
def test_wenet_legacy_form(impl, t, dk, dtype):
    _check(impl, _shape(t=t, dk=dk, rel=2), dtype, seed=t + dk)


@pytest.mark.parametrize("rel", [0, 1, 2])
@pytest.mark.parametrize("t", [1, 333, 1000])
def test_float32(t, rel):
    _check("triton", _shape(t=t, rel=rel), "float32", seed=t + rel)


@pytest.mark.parametrize("rel", [1, 0, 2])
@pytest.mark.parametrize("chunk, left", [(1, -1), (16, -1), (16, 0), (16, 2), (64, 1), (300, -1)])
@pytest.mark.parametrize("impl", IMPLS)
def test_chunk_masks(impl, chunk, left, rel):
    _check(impl, _shape(t=257, chunk=chunk, left=left, rel=rel), "float16", seed=chunk)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("rel", [1, 2, 0])
@pytest.mark.parametrize("t, dk, chunk", [(1, 64, 0), (500, 64, 0), (333, 32, 16), (1000, 128, 0)])
@pytest.mark.parametrize("impl", IMPLS)
def test_packed_qkv(impl, t, dk, chunk, rel, dtype):
    """q | k | v in one [B, T, 3*H*d_k] tensor, as the encoder's fused projection makes it."""
    _check(impl, _shape(t=t, dk=dk, chunk=chunk, rel=rel, packed=1), dtype, seed=t + rel)


@pytest.mark.parametrize("impl, rel, dtype", [("triton", 1, "float16"), ("triton", 2, "float16"),
                                              ("triton", 1, "float32"), ("cuda", 1, "float16"),
                                              ("cuda", 2, "bfloat16"), ("cuda", 0, "float16"),
                                              ("cuda_wgmma", 1, "float16"), ("cuda_wgmma", 2, "bfloat16"),
                                              ("cuda_wgmma", 0, "float16")])
def test_sample_of_the_config_space(impl, rel, dtype):
    shape = _shape(t=300, rel=rel)
    _taken(impl, shape, dtype)
    count = 24 if impl == "triton" else 12
    for i, config in enumerate(random_valid_configs(K.impl(impl), shape, count=count, dtype=dtype)):
        _check(impl, shape, dtype, config, seed=i)


def _every_config(impl, shape, dtype, keep):
    """Every config of ``impl`` that ``keep`` selects and its rule accepts, each against the
    float64 reference (fresh inputs per config)."""
    chosen, _ = _taken(impl, shape, dtype)
    spec = gpu.running().spec
    every = [dict(zip(chosen.space, v)) for v in itertools.product(*chosen.space.values())]
    configs = [c for c in every if keep(c) and chosen.valid(c, shape, dtype, spec) is None]
    if not configs:
        pytest.skip(f"{impl}: no such valid config at {shape}")
    for i, config in enumerate(configs):
        _check(impl, shape, dtype, config, seed=i)


@pytest.mark.parametrize("t, chunk, left, dtype", [(1, 0, -1, "float16"), (77, 0, -1, "float16"),
                                                   (333, 16, 2, "float16"), (333, 0, -1, "bfloat16"),
                                                   (1000, 0, -1, "float16")])
@pytest.mark.parametrize("dk", [32, 64, 128])
@pytest.mark.parametrize("impl", ["cuda", "cuda_wgmma"])
def test_register_skew_every_config(impl, dk, t, chunk, left, dtype):
    """SKEW 1 (the ESPnet band skewed by lane shuffles; cuda carries each m16 tile's last two
    band tiles to the next block, and with MT 2 a warp's two m16 tiles share every B fragment):
    every valid config, T not a multiple of any block, chunk masks, ragged lengths with an
    empty sequence."""
    _every_config(impl, _shape(t=t, dk=dk, chunk=chunk, left=left), dtype, lambda c: c["SKEW"])


@pytest.mark.parametrize("rel", [0, 2])
@pytest.mark.parametrize("dk", [32, 64, 128])
def test_two_m16_tiles_per_warp_every_config(dk, rel):
    """cuda's MT 2 in the plain and WeNet forms (no band): every valid config."""
    _every_config("cuda", _shape(t=333, dk=dk, rel=rel), "float16", lambda c: c["MT"] == 2)


@pytest.mark.parametrize("impl", IMPLS)
def test_chained_calls_in_a_graph(impl):
    """Each call's output is the next one's q, in one CUDA graph with the outputs poisoned: on
    sm_90+ the launches are programmatic dependent ones, so a read of q (or of the lengths)
    before the wait would see NaN or a stale value and miss the step's reference."""
    shape = _shape(t=300, h=2, dk=64)
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = K.make_inputs(shape, torch.float16, "cuda", gen)
    chosen, config = _taken(impl, shape)
    qs = [x["q"]] + [torch.full_like(x["q"], float("nan")) for _ in range(4)]

    def chain():
        for a, b in zip(qs, qs[1:]):
            launch.run(K, chosen, config, {**x, "q": a, "out": b}, shape)

    chain()                               # compile and load outside the capture
    for q in qs[1:]:
        q.fill_(float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()
    graph.replay()
    torch.cuda.synchronize()
    for i, (a, b) in enumerate(zip(qs, qs[1:])):
        ref = K.reference({**x, "q": a}, shape, {})["out"]
        assert verify.relative_error(b, ref) < K.tolerance["float16"], f"{impl}: step {i + 1}"


@pytest.mark.parametrize("impl", IMPLS)
def test_plain_attention_equals_sdpa(impl):
    shape = _shape(b=4, t=640, h=4, rel=0)
    _taken(impl, shape)
    gen = torch.Generator(device="cuda").manual_seed(5)
    x = K.make_inputs(shape, torch.float16, "cuda", gen)
    x["lengths"].fill_(640)
    out = launch.call(K, x, shape, impl)["out"]
    heads = [x[n].view(4, 640, 4, 64).transpose(1, 2) for n in ("q", "k", "v")]
    sdpa = torch.nn.functional.scaled_dot_product_attention(*heads).transpose(1, 2)
    assert verify.relative_error(out, sdpa.reshape(4, 640, 256)) < 2e-3


@pytest.mark.parametrize("impl", IMPLS)
def test_offsets_past_2_to_the_31(impl):
    shape = _shape(b=4100, t=1024, h=4, dk=128)        # 2.15e9 elements in q, k, v and out
    _taken(impl, shape)
    gen = torch.Generator(device="cuda").manual_seed(11)
    x = K.make_inputs(shape, torch.float16, "cuda", gen)
    out = launch.call(K, x, shape, impl)["out"]
    pick = torch.tensor([0, 1, 2, 2049, 4098, 4099], device="cuda")
    small = {k: (t[pick].contiguous() if k in ("q", "k", "v", "lengths") else t)
             for k, t in x.items()}
    ref = K.reference(small, {**shape, "B": len(pick)}, {})["out"]
    assert verify.relative_error(out[pick], ref) < K.tolerance["float16"]
