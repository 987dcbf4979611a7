"""The FFN's first Linear with SiLU at Conformer shapes: the fused Triton kernel against what
PyTorch runs (cuBLAS GEMM with bias, then a SiLU kernel), its torch.compile, and cuBLAS's GEMM
alone (no activation) as the bar a fused epilogue has to reach.

Configs are the tuner's winners for this GPU where the cache has them, else the heuristic.
"""
import pytest
import torch
import torch.nn.functional as F

from kernels import launch, timing
from tests.bench.configs import config_for
from kernels.linear_silu import KERNEL as K

SHAPES = [(16000, 1024, 256), (65536, 1024, 256), (16000, 2048, 512), (16000, 576, 144)]
IMPLS = ["cublas_silu", "compile", "cublas_gemm_only", "triton"]


@pytest.mark.parametrize("dims", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("impl", IMPLS)
def test_linear_silu(measure, benchmark, impl, dims):
    shape = dict(zip("MNK", dims))
    cost = K.cost(shape, "float16")
    gen = torch.Generator(device="cuda").manual_seed(0)
    sets = [K.make_inputs(shape, torch.float16, "cuda", gen)
            for _ in range(timing.rotation(cost.bytes))]
    benchmark.group = "linear_silu fp16 " + "x".join(map(str, dims))
    if impl != "triton":
        fn = {"cublas_silu": lambda x, w, b: F.silu(F.linear(x, w, b)),
              "compile": torch.compile(lambda x, w, b: F.silu(F.linear(x, w, b))),
              "cublas_gemm_only": F.linear}[impl]
        calls = [lambda s=s: fn(s["x"], s["weight"], s["bias"]) for s in sets]
        measure(calls, cost, role="baseline", impl=impl)
        return
    config, source = config_for(K, K.impl(impl), shape)
    outs = [launch.empty_outputs(K, shape, "float16", "cuda") for _ in sets]
    calls = [lambda s=s, o=o: launch.run(K, K.impl(impl), config, {**s, **o}, shape)
             for s, o in zip(sets, outs)]
    measure(calls, cost, role="candidate", impl=impl, config=config, config_source=source)
