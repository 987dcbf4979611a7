"""The conv module on the GPU at real shapes: every implementation and dtype against the float64
reference (ragged lengths, odd T, T shorter than the kernel, causal and "same", poisoned
outputs), the contract's small odd examples, random valid configs of each space, WeNet's fp16
module, and offsets past 2^31."""

import pytest
import torch

from kernels import launch, verify
from kernels.conv_module import KERNEL as K
from kernels.conv_module import conv_module, prepare_weights
from kernels.conv_module.reference import WenetConvModule, reference
from tests.gpu.sampling import check_chain_in_graph, check_random_configs

pytestmark = pytest.mark.gpu
IMPLS = [i.name for i in K.impls]
SHAPES = [(32, 500, 256, 31, 0, 0), (32, 500, 256, 31, 1, 0), (3, 777, 144, 15, 0, 0),
          (4, 7, 256, 31, 0, 0), (4, 7, 256, 31, 1, 1), (5, 301, 512, 31, 0, 1),
          (2, 1000, 176, 3, 1, 0), (7, 65, 80, 33, 0, 0)]


def _shape(b, t, d, k, causal, mask):
    return {"B": b, "T": t, "D": d, "K": k, "causal": causal, "mask_after_glu": mask}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("dims", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_real_shapes(impl, dtype, dims):
    shape = _shape(*dims)
    chosen = K.impl(impl)
    config = launch.default_config(K, chosen, shape, dtype)
    v = verify.verify(K, chosen, config, shape, dtype, "cuda", seed=sum(dims))
    assert v.ok, f"{impl} {dtype} {shape} {config}: {v}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_examples(impl, dtype):
    chosen = K.impl(impl)
    for i, shape in enumerate(K.examples):
        config = launch.default_config(K, chosen, shape, dtype)
        v = verify.verify(K, chosen, config, shape, dtype, "cuda", seed=i)
        assert v.ok, f"{impl} {dtype} {shape} {config}: {v}"


@pytest.mark.parametrize("impl", IMPLS)
def test_random_valid_configs(impl):
    check_random_configs(K, impl, _shape(3, 133, 256, 31, 0, 0), seed=IMPLS.index(impl))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [False, True])
def test_wenet_module_fp16(impl, causal):
    torch.manual_seed(0)
    m = WenetConvModule(256, 31, causal).cuda().eval()
    with torch.no_grad():
        m.norm.running_mean.uniform_(-0.5, 0.5)
        m.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(8, 500, 256, device="cuda")
    lengths = torch.randint(1, 501, (8,), device="cuda")
    ref = m.double()(x.double(), lengths)
    w = prepare_weights(m.state_dict(), torch.float16)
    y = conv_module(x.half(), lengths, w, causal=causal, impl=impl, check_lengths=True)
    assert verify.relative_error(y, ref) < 1e-2


@pytest.mark.parametrize("impl", IMPLS)
def test_offsets_past_2_to_the_31(impl):
    shape = _shape(65, 130_000, 256, 3, 0, 0)          # 2.16e9 elements per activation
    gen = torch.Generator(device="cuda").manual_seed(5)
    inputs = K.make_inputs(shape, torch.float16, "cuda", gen)
    inputs["lengths"][-1] = shape["T"]
    y = launch.call(K, inputs, shape, impl)["y"]
    last = {k: (v[-2:] if k in ("x", "lengths") else v) for k, v in inputs.items()}
    ref = reference(last, {**shape, "B": 2}, {})["y"]
    assert verify.relative_error(y[-2:], ref) < 1e-2


@pytest.mark.parametrize("impl", IMPLS)
def test_chained_calls_in_a_graph(impl):
    """Modules chained through their outputs in one CUDA graph (programmatic dependent launches
    on sm_90+): each step against its reference."""
    shape = _shape(8, 301, 256, 31, 0, 0)
    gen = torch.Generator(device="cuda").manual_seed(11)
    check_chain_in_graph(K, impl, shape, K.make_inputs(shape, torch.float16, "cuda", gen))
