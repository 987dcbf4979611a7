"""W4A16 GEMM against cuBLAS fp16 (F.linear with the dequantised weight) and torch's int4
tinygemm (torch._weight_int4pack_mm): the decode-like N = K = 4096 at M = 1 and 16 (the
bandwidth-bound case), and the Conformer feed-forward GEMMs at M = 16 000.

Configs come from launch.default_config: the tuner's winner where the winners store has one,
else the implementation's heuristic.
"""
import pytest
import torch

import kernels
from kernels import gpu, launch, timing

K = kernels.get("int4_gemm")
SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (16000, 1024, 256), (16000, 256, 1024)]
GROUP = 128


def _shape(m, n, k):
    return {"M": m, "N": n, "K": k, "group": GROUP, "asym": 1, "with_bias": 0}


def _tinygemm_calls(shape, n_sets):
    """torch's int4 kernel on random packed weights (values do not change its speed); it takes
    bf16 activations, and fp16 too in recent versions: bf16 is what it is timed with."""
    if not hasattr(torch, "_weight_int4pack_mm"):
        pytest.skip("this torch has no _weight_int4pack_mm")
    m, n, k = shape["M"], shape["N"], shape["K"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    calls = []
    for _ in range(n_sets):
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda", generator=gen)
        packed = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
        sz = torch.rand(k // GROUP, n, 2, device="cuda", generator=gen).to(torch.bfloat16)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        calls.append(lambda x=x, p=packed, sz=sz: torch._weight_int4pack_mm(x, p, GROUP, sz))
    return calls


@pytest.mark.parametrize("m, n, k", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
@pytest.mark.parametrize("impl", ["cublas", "tinygemm", "cuda", "cuda_wgmma", "triton", "triton_splitk"])
def test_int4_gemm(measure, benchmark, impl, m, n, k):
    shape = _shape(m, n, k)
    cost = K.cost(shape, "float16")
    n_sets = timing.rotation(cost.bytes, max_sets=24)
    benchmark.group = f"int4_gemm fp16 M={m} N={n} K={k} group {GROUP}"
    if impl == "tinygemm":
        measure(_tinygemm_calls(shape, n_sets), cost, role="baseline", impl=impl, dtype="bfloat16")
        return
    gen = torch.Generator(device="cuda").manual_seed(0)
    sets = [K.make_inputs(shape, torch.float16, "cuda", gen) for _ in range(n_sets)]
    if impl == "cublas":
        calls = [lambda s=s: K.baseline(s, shape, {}) for s in sets]
        measure(calls, cost, role="baseline", impl=impl)
        return
    measure_impl(measure, K, impl, shape, sets, cost)


def measure_impl(measure, kernel, impl, shape, sets, cost):
    """Time an implementation of ``kernel`` at its default config on the rotated ``sets``."""
    chosen = kernel.impl(impl)
    config = launch.default_config(kernel, chosen, shape, "float16")
    reason = chosen.valid(config, shape, "float16", gpu.running().spec)
    if reason:
        pytest.skip(f"{impl}: {reason}")
    outs = [launch.empty_outputs(kernel, shape, "float16", "cuda") for _ in sets]
    calls = [lambda s=s, o=o: launch.run(kernel, chosen, config, {**s, **o}, shape)
             for s, o in zip(sets, outs)]
    measure(calls, cost, role="candidate", impl=impl, config=config)
