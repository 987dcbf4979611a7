"""2:4 sparse GEMM against cuBLAS dense fp16 (the same pruned weight, dense) and torch's
semi-structured sparse tensors (cuSPARSELt, and its CUTLASS backend): 4096³ and the Conformer
feed-forward GEMMs at M = 16 000. Flops in the records are the non-zero products (M N K, half
the dense 2 M N K).

Configs come from launch.default_config: the tuner's winner where the winners store has one,
else the heuristic.
"""
import pytest
import torch

import kernels
from kernels import timing
from kernels.sparse24_gemm import dense_weight
from tests.bench.test_bench_int4_gemm import measure_impl

K = kernels.get("sparse24_gemm")
SHAPES = [(4096, 4096, 4096), (16000, 1024, 256), (16000, 256, 1024), (16, 4096, 4096)]


def _semi_structured_calls(sets, shape, backend):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    try:   # one call too: torch's CUTLASS kernels compress on sm_90 but refuse to multiply
        weights = [to_sparse_semi_structured(dense_weight(s, shape)) for s in sets]
        torch.nn.functional.linear(sets[0]["x"], weights[0])
    except (RuntimeError, ValueError) as exc:
        pytest.skip(f"semi-structured {backend} unavailable here: {exc}")
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return [lambda s=s, w=w: torch.nn.functional.linear(s["x"], w) for s, w in zip(sets, weights)]


@pytest.mark.parametrize("m, n, k", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
@pytest.mark.parametrize("impl", ["cublas", "cusparselt", "cutlass", "cuda", "cuda_wgmma", "cuda_wgmma_kres"])
def test_sparse24_gemm(measure, benchmark, impl, m, n, k):
    shape = {"M": m, "N": n, "K": k, "with_bias": 0}
    cost = K.cost(shape, "float16")
    gen = torch.Generator(device="cuda").manual_seed(0)
    sets = [K.make_inputs(shape, torch.float16, "cuda", gen)
            for _ in range(timing.rotation(cost.bytes, max_sets=24))]
    benchmark.group = f"sparse24_gemm fp16 M={m} N={n} K={k}"
    if impl == "cublas":
        measure([lambda s=s: K.baseline(s, shape, {}) for s in sets], cost, role="baseline",
                impl=impl)
        return
    if impl in ("cusparselt", "cutlass"):
        measure(_semi_structured_calls(sets, shape, impl), cost, role="baseline", impl=impl)
        return
    measure_impl(measure, K, impl, shape, sets, cost)
