"""The fused FFN Linear + SiLU without a GPU: the public function through Triton's interpreter
(or on the GPU where there is one) against float64, batched inputs, and bad input refused before
anything launches."""
import pytest
import torch

from kernels.linear_silu import KERNEL, linear_silu
from tests.conftest import HAS_GPU

DEV = "cuda" if HAS_GPU else "cpu"


def _inputs(m, n, k, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    b = torch.randn(n, generator=g)
    return x.to(DEV, dtype), w.to(DEV, dtype), b.to(DEV, dtype)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2),
                                        (torch.bfloat16, 1e-2)])
def test_matches_float64(dtype, tol):
    x, w, b = _inputs(2 * 33, 48, 40, dtype)
    y = linear_silu(x.reshape(2, 33, 40), w, b)
    ref = torch.nn.functional.silu(x.double() @ w.double().T + b.double())
    assert y.shape == (2, 33, 48) and y.dtype == dtype
    assert _rel(y.reshape(-1, 48).cpu(), ref.cpu()) < tol


def test_every_config_dimension_reaches_the_kernel():
    x, w, b = _inputs(70, 40, 48)
    ref = torch.nn.functional.silu(x.double() @ w.double().T + b.double())
    for config in ({"BM": 32, "BN": 32, "BK": 16, "GROUP_M": 1, "num_warps": 4, "num_stages": 2,
                    "TILES": 1},
                   {"BM": 32, "BN": 16, "BK": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3,
                    "TILES": 8},      # 3 x 3 tiles over 2 programs: one does 5, one 4
                   {"BM": 64, "BN": 64, "BK": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3,
                    "TILES": 2}):
        assert _rel(linear_silu(x, w, b, config=config).cpu(), ref.cpu()) < 1e-5, config


def test_bad_input_is_refused_before_launch():
    x, w, b = _inputs(8, 16, 32)
    with pytest.raises(ValueError, match="disagree"):
        linear_silu(x[:, :16].contiguous(), w, b)
    with pytest.raises(ValueError, match="contiguous"):
        linear_silu(x.T, w[:, :8].contiguous(), b)
    with pytest.raises(TypeError, match="dtype"):
        linear_silu(x, w.half(), b)
    with pytest.raises(ValueError, match="bias has shape"):
        linear_silu(x, w, b[:8].contiguous())
    with pytest.raises(TypeError, match="torch.Tensors"):
        linear_silu(x, w, None)
    with pytest.raises(ValueError, match="not one of"):
        linear_silu(x, w, b, config={"BM": 48, "BN": 32, "BK": 16, "GROUP_M": 1,
                                     "num_warps": 4, "num_stages": 2, "TILES": 1})


def test_validity_rule_refuses_what_cannot_fit():
    impl = KERNEL.impl("triton")
    from kernels import gpu
    a10, h100 = gpu.by_name("a10"), gpu.by_name("h100")
    shape = {"M": 16000, "N": 1024, "K": 256}
    big = {"BM": 256, "BN": 256, "BK": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 5,
           "TILES": 1}
    assert "shared memory" in impl.valid({**big, "BM": 128}, shape, "float16", h100)
    assert "spill" in impl.valid({**big, "num_warps": 4}, shape, "float16", h100)
    assert "larger than" in impl.valid({**big, "BN": 256}, {**shape, "N": 100}, "float16", h100)
    tuned_h100 = {"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3,
                  "TILES": 4}
    assert impl.valid(tuned_h100, shape, "float16", h100) is None
    assert "shared memory" in impl.valid(tuned_h100, shape, "float16", a10)
    assert impl.valid(impl.heuristic(shape, "float16", a10), shape, "float16", a10) is None


def test_heuristic_fills_the_gpu_with_about_two_programs_per_multiprocessor():
    from kernels import gpu
    impl, shape = KERNEL.impl("triton"), {"M": 16000, "N": 1024, "K": 256}
    h100 = gpu.by_name("h100")
    config = impl.heuristic(shape, "float16", h100)
    tiles = -(-16000 // config["BM"]) * -(-1024 // config["BN"])
    programs = -(-tiles // config["TILES"])
    assert config["TILES"] > 1 and 1.8 * h100.sms <= programs <= 4 * h100.sms, config
    assert impl.heuristic({**shape, "M": 64}, "float16", h100)["TILES"] == 1
    assert impl.heuristic(shape, "float16", None)["TILES"] == 1
