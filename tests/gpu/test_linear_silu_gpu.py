"""The fused Linear + SiLU on the GPU at real and odd shapes, every dtype, random valid configs
of the space, and row offsets past 2^31, each against float64 with poisoned outputs."""

import pytest
import torch

from kernels import launch, verify
from kernels.linear_silu import KERNEL as K
from tests.gpu.sampling import check_random_configs

pytestmark = pytest.mark.gpu
IMPL = K.impl("triton")
SHAPES = [(16000, 1024, 256), (16000, 256, 1024), (1, 1024, 256), (777, 1000, 257),
          (4099, 2048, 512), (33, 24, 8)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("dims", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_real_shapes(dtype, dims):
    shape = dict(zip("MNK", dims))
    config = launch.default_config(K, IMPL, shape, dtype)
    v = verify.verify(K, IMPL, config, shape, dtype, "cuda", seed=sum(dims))
    assert v.ok, f"{dtype} {shape} {config}: {v}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_random_valid_configs(dtype):
    check_random_configs(K, "triton", {"M": 1000, "N": 520, "K": 264}, dtype)


def test_rows_past_2_to_the_31():
    shape = {"M": 2**31 // 64 + 100, "N": 64, "K": 16}      # y has 2^31 + 6400 elements
    gen = torch.Generator(device="cuda").manual_seed(3)
    inputs = K.make_inputs(shape, torch.float16, "cuda", gen)
    y = launch.call(K, inputs, shape, "triton")["y"]
    tail = {**inputs, "x": inputs["x"][-300:]}
    ref = K.reference(tail, {**shape, "M": 300}, {})["y"]
    assert verify.relative_error(y[-300:], ref) < 1e-2
