"""Relative-position attention on the GPU: T from 1 to 2000 and odd, every head dim and dtype,
all three position forms (ESPnet, WeNet legacy, plain),
ragged lengths with an empty sequence, chunk masks, a sample of the config space, plain attention
against SDPA, and a batch whose element offsets pass 2^31."""

import pytest
import torch

import kernels
from kernels import launch, verify
from tests.gpu.sampling import random_valid_configs

pytestmark = pytest.mark.gpu
K = kernels.get("relpos_attention")
TRITON = K.impl("triton")


def _shape(b=3, t=500, h=2, dk=64, chunk=0, left=-1, rel=1, packed=0):
    return {"B": b, "T": t, "H": h, "DK": dk, "chunk": chunk, "left_chunks": left,
            "packed": packed, "rel": rel}


def _check(shape, dtype, config=None, seed=0):
    config = config or launch.default_config(K, TRITON, shape, dtype)
    v = verify.verify(K, TRITON, config, shape, dtype, "cuda", seed=seed)
    assert v.ok, f"{shape} {dtype} {config}: {v}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("dk", [32, 64, 128])
@pytest.mark.parametrize("t", [1, 333, 500, 2000])
def test_lengths_and_head_dims(t, dk, dtype):
    _check(_shape(t=t, dk=dk), dtype, seed=t + dk)


@pytest.mark.parametrize("t", [77, 500, 2000])
def test_plain_attention(t):
    _check(_shape(t=t, rel=0), "float16")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("dk", [32, 64, 128])
@pytest.mark.parametrize("t", [1, 333, 2000])
def test_wenet_legacy_form(t, dk, dtype):
    _check(_shape(t=t, dk=dk, rel=2), dtype, seed=t + dk)


@pytest.mark.parametrize("rel", [0, 1, 2])
@pytest.mark.parametrize("t", [1, 333, 1000])
def test_float32(t, rel):
    _check(_shape(t=t, rel=rel), "float32", seed=t + rel)


@pytest.mark.parametrize("rel", [1, 0, 2])
@pytest.mark.parametrize("chunk, left", [(1, -1), (16, -1), (16, 0), (16, 2), (64, 1), (300, -1)])
def test_chunk_masks(chunk, left, rel):
    _check(_shape(t=257, chunk=chunk, left=left, rel=rel), "float16", seed=chunk)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("rel", [1, 2, 0])
@pytest.mark.parametrize("t, dk, chunk", [(1, 64, 0), (500, 64, 0), (333, 32, 16), (1000, 128, 0)])
def test_packed_qkv(t, dk, chunk, rel, dtype):
    """q | k | v in one [B, T, 3*H*d_k] tensor, as the encoder's fused projection makes it."""
    _check(_shape(t=t, dk=dk, chunk=chunk, rel=rel, packed=1), dtype, seed=t + rel)


@pytest.mark.parametrize("rel, dtype", [(1, "float16"), (2, "float16"), (1, "float32")])
def test_sample_of_the_config_space(rel, dtype):
    shape = _shape(t=300, rel=rel)
    for i, config in enumerate(random_valid_configs(TRITON, shape, count=24, dtype=dtype)):
        _check(shape, dtype, config, seed=i)


def test_plain_attention_equals_sdpa():
    shape = _shape(b=4, t=640, h=4, rel=0)
    gen = torch.Generator(device="cuda").manual_seed(5)
    x = K.make_inputs(shape, torch.float16, "cuda", gen)
    x["lengths"].fill_(640)
    out = launch.call(K, x, shape, "triton")["out"]
    heads = [x[n].view(4, 640, 4, 64).transpose(1, 2) for n in ("q", "k", "v")]
    sdpa = torch.nn.functional.scaled_dot_product_attention(*heads).transpose(1, 2)
    assert verify.relative_error(out, sdpa.reshape(4, 640, 256)) < 2e-3


def test_offsets_past_2_to_the_31():
    shape = _shape(b=4100, t=1024, h=4, dk=128)        # 2.15e9 elements in q, k, v and out
    gen = torch.Generator(device="cuda").manual_seed(11)
    x = K.make_inputs(shape, torch.float16, "cuda", gen)
    out = launch.call(K, x, shape, "triton")["out"]
    pick = torch.tensor([0, 1, 2, 2049, 4098, 4099], device="cuda")
    small = {k: (t[pick].contiguous() if k in ("q", "k", "v", "lengths") else t)
             for k, t in x.items()}
    ref = K.reference(small, {**shape, "B": len(pick)}, {})["out"]
    assert verify.relative_error(out[pick], ref) < K.tolerance["float16"]
