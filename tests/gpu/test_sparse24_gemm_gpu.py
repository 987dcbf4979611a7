"""2:4 sparse GEMM on the GPU: both dtypes from M = 1 to 16 000 with K multiples of 4 that are
not of 8 or 64, a sample of the config space, offsets past 2^31, the public function, and the
kernel against cuSPARSELt on the same pruned weight; the same for ``cuda_wgmma`` (sm_90: K a
multiple of 8) where the GPU has it."""
import itertools

import pytest
import torch

import kernels
from kernels import gpu, launch, verify
from kernels.sparse24_gemm import prepare, prune_24, sparse24_linear
from tests.gpu.sampling import check_chain_in_graph, check_random_configs, check_split_k

pytestmark = pytest.mark.gpu
K = kernels.get("sparse24_gemm")
SHAPES = [(1, 4096, 4096, 0), (16, 33, 36, 1), (300, 1000, 1028, 0), (16000, 1024, 256, 1),
          (16000, 256, 1024, 1), (4097, 264, 200, 0)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m, n, k, bias", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k, _ in SHAPES])
def test_shapes(dtype, m, n, k, bias):
    shape = {"M": m, "N": n, "K": k, "with_bias": bias}
    chosen = K.impl("cuda")
    config = launch.default_config(K, chosen, shape, dtype)
    v = verify.verify(K, chosen, config, shape, dtype, "cuda", seed=m + n)
    assert v.ok, f"{dtype} {shape} {config}: {v}"


WGMMA_SHAPES = [(1, 64, 64, 1), (77, 200, 200, 1), (1000, 264, 520, 0), (16000, 1024, 256, 1),
                (16000, 256, 1024, 0), (4096, 4096, 4096, 0)]


def _wgmma():
    chosen = K.impl("cuda_wgmma")
    if not chosen.runs_on(gpu.running().spec):
        pytest.skip(f"cuda_wgmma does not run on {gpu.running().spec.name}")
    return chosen


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m, n, k, bias", WGMMA_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k, _ in WGMMA_SHAPES])
def test_wgmma_shapes(dtype, m, n, k, bias):
    """The heuristic's config: ragged M and N tiles (N = 200, 264: not a multiple of 64), K a
    multiple of 8 and not of 64 (200, 520: a ragged last stage), the FFN shapes and 4096³."""
    chosen = _wgmma()
    shape = {"M": m, "N": n, "K": k, "with_bias": bias}
    config = launch.default_config(K, chosen, shape, dtype)
    v = verify.verify(K, chosen, config, shape, dtype, "cuda", seed=m + n)
    assert v.ok, f"{dtype} {shape} {config}: {v}"


@pytest.mark.parametrize("m", [77, 1000, 5000])
def test_wgmma_sample_of_configs(m):
    """Random valid configs (WG, BT, MT, STAGES, OVERLAP) at K = 456 (seven full stages and a
    ragged eighth), N = 200."""
    _wgmma()
    check_random_configs(K, "cuda_wgmma", {"M": m, "N": 200, "K": 456, "with_bias": 1}, count=16, seed=m)


KRES_SHAPES = [(16000, 1024, 256, 1, "float16"), (1000, 200, 96, 1, "float16"),
               (77, 264, 200, 0, "bfloat16"), (300, 136, 192, 1, "float16"), (1, 128, 64, 0, "float16")]


@pytest.mark.parametrize("m, n, k, bias, dtype", KRES_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k, _, _ in KRES_SHAPES])
def test_wgmma_resident_slab_every_config(m, n, k, bias, dtype):
    """cuda_wgmma_kres, every config that fits: K a multiple of 64 and not (96: half a panel;
    200: a ragged k32 step), ragged N and M (a CTA with fewer tiles than MT, one with a single
    tile)."""
    chosen = K.impl("cuda_wgmma_kres")
    if not chosen.runs_on(gpu.running().spec):
        pytest.skip(f"cuda_wgmma_kres does not run on {gpu.running().spec.name}")
    shape = {"M": m, "N": n, "K": k, "with_bias": bias}
    spec = gpu.running().spec
    configs = [dict(zip(chosen.space, v)) for v in itertools.product(*chosen.space.values())]
    configs = [c for c in configs if chosen.valid(c, shape, dtype, spec) is None]
    assert len(configs) >= 12, configs   # at K > 192, 128-token tiles in 3 buffers leave no room for the slab
    for i, config in enumerate(configs):
        v = verify.verify(K, chosen, config, shape, dtype, "cuda", seed=i)
        assert v.ok, f"{config} {shape} {dtype}: {v}"


def test_wgmma_chained_calls_in_a_graph():
    _wgmma()
    shape = {"M": 3000, "N": 1024, "K": 1024, "with_bias": 1}
    gen = torch.Generator(device="cuda").manual_seed(3)
    check_chain_in_graph(K, "cuda_wgmma", shape, K.make_inputs(shape, torch.float16, "cuda", gen))


def test_wgmma_public_function_and_k_not_a_multiple_of_8():
    _wgmma()
    gen = torch.Generator(device="cuda").manual_seed(4)
    w = prune_24(torch.randn(300, 1024, device="cuda", generator=gen)).half()
    x = torch.randn(5, 100, 1024, device="cuda", dtype=torch.float16, generator=gen)
    y = sparse24_linear(x, prepare(w), impl="cuda_wgmma")
    assert verify.relative_error(y, x.double() @ w.double().t()) < 1e-2
    with pytest.raises(ValueError, match="multiple of 8"):
        sparse24_linear(x[..., :1020].contiguous(), prepare(w[:, :1020].contiguous()), impl="cuda_wgmma")


@pytest.mark.parametrize("m", [1, 77, 1000])
def test_sample_of_configs(m):
    check_random_configs(K, "cuda", {"M": m, "N": 200, "K": 452, "with_bias": 1}, seed=m)


@pytest.mark.parametrize("m", [1, 16, 77])
def test_split_k_over_a_cluster(m):
    """K = 580 (a multiple of 4, not of 8): 10 k-tiles at WARPS_K 1, 5 at WARPS_K 2 (SPLIT 4:
    2 + 2 + 1 + 0); N = 200 leaves a ragged tile."""
    check_split_k(K, {"M": m, "N": 200, "K": 580, "with_bias": 1})


@pytest.mark.parametrize("m", [1, 16, 300])
def test_chained_calls_in_a_graph(m):
    """GEMMs chained through their outputs in one CUDA graph (weight fetched before the wait for
    the kernel ahead, x after it)."""
    shape = {"M": m, "N": 2048, "K": 2048, "with_bias": 1}
    gen = torch.Generator(device="cuda").manual_seed(m)
    check_chain_in_graph(K, "cuda", shape, K.make_inputs(shape, torch.float16, "cuda", gen))


def test_offsets_past_2_to_the_31():
    m, n, k = (1 << 20) + 1, 2048, 64
    gen = torch.Generator(device="cuda").manual_seed(5)
    w = prune_24(torch.randn(n, k, device="cuda", generator=gen)).half()
    x = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=gen)
    y = sparse24_linear(x, prepare(w))
    rows = torch.cat([torch.arange(64, device="cuda"), torch.arange(m - 64, m, device="cuda")])
    assert verify.relative_error(y[rows], x[rows].double() @ w.double().t()) < 1e-2


def test_public_function_and_cusparselt_agree():
    gen = torch.Generator(device="cuda").manual_seed(2)
    w = prune_24(torch.randn(512, 1024, device="cuda", generator=gen)).half()
    x = torch.randn(2, 64, 1024, device="cuda", dtype=torch.float16, generator=gen)
    b = torch.randn(512, device="cuda", dtype=torch.float16, generator=gen)
    y = sparse24_linear(x, prepare(w), bias=b)
    ref = x.double() @ w.double().t() + b.double()
    assert verify.relative_error(y, ref) < 1e-2
    try:
        from torch.sparse import to_sparse_semi_structured
        ws = to_sparse_semi_structured(w)
    except (ImportError, RuntimeError) as exc:   # no cuSPARSELt / CUTLASS kernels in this build
        pytest.skip(f"torch semi-structured sparsity unavailable: {exc}")
    theirs = torch.nn.functional.linear(x.reshape(-1, 1024), ws, b).reshape(y.shape)
    assert verify.relative_error(y, theirs.double()) < 1e-2


def test_dense_weight_is_refused():
    with pytest.raises(ValueError, match="not 2:4"):
        prepare(torch.randn(64, 128, device="cuda"))


@pytest.mark.parametrize("m, n, k", [(16000, 1024, 256), (6000, 256, 1024), (64, 512, 1024)])
def test_auto_impl_is_right(m, n, k):
    """The public function's default (``impl="auto"``): whichever implementation it takes here
    (on an H100: the resident slab, the per-stage warpgroup kernel, ``cuda``) is right."""
    gen = torch.Generator(device="cuda").manual_seed(k)
    w = prune_24(torch.randn(n, k, device="cuda", generator=gen)).half()
    x = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=gen)
    b = torch.randn(n, device="cuda", dtype=torch.float16, generator=gen)
    y = sparse24_linear(x, prepare(w), bias=b)
    assert verify.relative_error(y, x.double() @ w.double().t() + b.double()) < 1e-2


@pytest.mark.parametrize("wg, bt", [(1, 64), (1, 128), (2, 64), (2, 128)])
def test_wgmma_two_row_blocks_per_warpgroup(wg, bt):
    """RBLK 2 (each warpgroup two m64 row blocks, BN = 128 WG): N = 200 and 330 (ragged in the
    second row block, and across CTAs), M = 1000 over two token tiles per CTA, K = 456, with and
    without OVERLAP, bias."""
    chosen = _wgmma()
    for n in (200, 330):
        shape = {"M": 1000, "N": n, "K": 456, "with_bias": 1}
        for overlap in (0, 1):
            config = {"WG": wg, "BT": bt, "MT": 2, "STAGES": 3, "OVERLAP": overlap, "RBLK": 2}
            assert chosen.valid(config, shape, "float16", gpu.running().spec) is None, config
            v = verify.verify(K, chosen, config, shape, "float16", "cuda", seed=n + overlap)
            assert v.ok, f"{config} {shape}: {v}"
