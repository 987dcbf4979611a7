"""LayerNorm on the GPU: both implementations, every dtype, odd hidden sizes, every valid config
of one shape, and a row count whose element offsets pass 2^31."""
import pytest
import torch

import kernels
from kernels import gpu, launch, verify
from kernels.layernorm import layer_norm

pytestmark = pytest.mark.gpu
K = kernels.get("layernorm")


@pytest.mark.parametrize("impl", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("hidden", [32, 80, 144, 256, 257, 512, 1000, 1024, 4104, 8192])
@pytest.mark.parametrize("residual", [0, 1])
def test_odd_hidden_sizes(impl, dtype, hidden, residual):
    shape = {"rows": 3001, "hidden": hidden, "with_residual": residual}
    chosen = K.impl(impl)
    config = launch.default_config(K, chosen, shape, dtype)
    v = verify.verify(K, chosen, config, shape, dtype, "cuda", seed=hidden)
    assert v.ok, f"{impl} {dtype} {shape} {config}: {v}"


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_every_valid_config(impl):
    import itertools

    chosen = K.impl(impl)
    spec = gpu.running().spec
    shape = {"rows": 4097, "hidden": 256, "with_residual": 1}
    checked = 0
    for values in itertools.product(*chosen.space.values()):
        config = dict(zip(chosen.space, values))
        if chosen.valid(config, shape, "float16", spec) is None:
            v = verify.verify(K, chosen, config, shape, "float16", "cuda", seed=checked)
            assert v.ok, f"{impl} {config}: {v}"
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_offsets_past_2_to_the_31(impl):
    rows, hidden = 17_000_000, 128            # 2.18e9 elements per tensor
    gen = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.float16, generator=gen)
    r = torch.randn(rows, hidden, device="cuda", dtype=torch.float16, generator=gen)
    w = torch.rand(hidden, device="cuda", dtype=torch.float16, generator=gen) + 0.5
    b = torch.randn(hidden, device="cuda", dtype=torch.float16, generator=gen)
    y, s = layer_norm(x, w, b, residual=r, impl=impl)
    assert not torch.isnan(y).any() and not torch.isnan(s).any()
    pick = torch.cat([torch.arange(1000, device="cuda"),
                      torch.randint(0, rows, (10000,), device="cuda", generator=gen),
                      torch.arange(rows - 1000, rows, device="cuda")])
    sd = x[pick].double() + r[pick].double()
    ref = torch.nn.functional.layer_norm(sd, (hidden,), w.double(), b.double(), 1e-5)
    assert verify.relative_error(y[pick], ref) < 1e-2
    assert verify.relative_error(s[pick], sd) < 1e-3


def test_tensors_on_two_devices_are_refused():
    x = torch.randn(4, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="CUDA tensor is needed|different devices"):
        layer_norm(x, torch.ones(64, dtype=torch.float16), torch.zeros(64, dtype=torch.float16),
                   impl="cuda")
