"""The two-LayerNorm pass on the GPU: every dtype, odd hidden sizes, many rows, random valid
configs, each against float64 with poisoned outputs."""

import pytest

from kernels import launch, verify
from kernels.layernorm_chain import KERNEL as K
from tests.gpu.sampling import check_random_configs

pytestmark = pytest.mark.gpu
IMPL = K.impl("triton")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("rows, hidden", [(16000, 256), (65536, 512), (1001, 80), (3, 257),
                                          (777, 1000), (5, 4104)])
def test_real_shapes(dtype, rows, hidden):
    shape = {"rows": rows, "hidden": hidden}
    config = launch.default_config(K, IMPL, shape, dtype)
    v = verify.verify(K, IMPL, config, shape, dtype, "cuda", seed=rows + hidden)
    assert v.ok, f"{dtype} {shape} {config}: {v}"


def test_random_valid_configs():
    check_random_configs(K, "triton", {"rows": 3001, "hidden": 384}, count=10)
