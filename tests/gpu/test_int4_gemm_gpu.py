"""INT4 weight-only GEMM on the GPU: every implementation and dtype at M = 1 … 16 000, odd N and
K multiples of the group, a sample of the CUDA config space, offsets past 2^31, the public
function, and the packing against a dense float reference."""

import itertools

import pytest
import torch

import kernels
from kernels import gpu, launch, verify
from kernels.int4_gemm import dequantize, int4_linear, prepare
from tests.gpu.sampling import (check_chain_in_graph, check_random_configs, check_split_k,
                                random_valid_configs)

pytestmark = pytest.mark.gpu
K = kernels.get("int4_gemm")
IMPLS = ["cuda", "cuda_wgmma", "triton", "triton_splitk"]
SHAPES = [(1, 4096, 4096, 128, 1, 0), (16, 4096, 4096, 128, 0, 1), (7, 33, 96, 32, 1, 1),
          (300, 1000, 384, 64, 0, 0), (16000, 1024, 256, 128, 1, 1), (4097, 264, 1152, 128, 1, 0)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m, n, k, group, asym, bias", SHAPES,
                         ids=[f"{m}x{n}x{k}g{g}{'a' if a else 's'}" for m, n, k, g, a, _ in SHAPES])
def test_shapes(impl, dtype, m, n, k, group, asym, bias):
    shape = {"M": m, "N": n, "K": k, "group": group, "asym": asym, "with_bias": bias}
    chosen = K.impl(impl)
    config = launch.default_config(K, chosen, shape, dtype)
    _skip_unless_here(chosen)
    v = verify.verify(K, chosen, config, shape, dtype, "cuda", seed=m + n)
    assert v.ok, f"{impl} {dtype} {shape} {config}: {v}"


def _skip_unless_here(impl):
    """cuda_wgmma exists for sm_90 only."""
    if not impl.runs_on(gpu.running().spec):
        pytest.skip(f"{impl.name} does not run on {gpu.running().spec.name}")


@pytest.mark.parametrize("m", [1, 77, 1000])
@pytest.mark.parametrize("impl", ["cuda", "cuda_wgmma"])
def test_sample_of_cuda_configs(impl, m):
    """Random valid configs: ragged M and N tiles, every WARPS_K (cuda), token tile (cuda_wgmma)
    and pipeline depth; K = 640 with groups of 32 (wgmma: two scale rows per stage) or 64."""
    shape = {"M": m, "N": 200, "K": 640, "group": 64 if m < 1000 else 32, "asym": 1, "with_bias": 1}
    chosen = K.impl(impl)
    _skip_unless_here(chosen)
    check_random_configs(K, impl, shape, seed=m)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("group, asym", [(32, 1), (64, 0), (128, 1)])
@pytest.mark.parametrize("m", [1, 13])
def test_small_m_scales_partial_sums_per_group(m, group, asym, dtype):
    """cuda with at most two n8 token tiles per warp (WM <= 2) accumulates q - z per group and
    scales the fp32 partial sums (w4a16.cu's PER_GROUP; fp16's odd nibbles by one fma): random
    such configs, every group size (32: two groups in a warp's 64-wide slice), symmetric and
    not, both dtypes, K = 640 (a ragged last stage for most WARPS_K), N = 200 (a ragged tile)."""
    chosen = K.impl("cuda")
    shape = {"M": m, "N": 200, "K": 640, "group": group, "asym": asym, "with_bias": 1}
    configs = [c for c in random_valid_configs(chosen, shape, dtype, count=60, seed=m + group)
               if c["WM"] <= 2][:10]
    assert len(configs) >= 5, configs
    for i, config in enumerate(configs):
        v = verify.verify(K, chosen, config, shape, dtype, "cuda", seed=i)
        assert v.ok, f"{config} {shape} {dtype}: {v}"


@pytest.mark.parametrize("k", [64, 256, 640])
@pytest.mark.parametrize("bt", [64, 128])
def test_wgmma_token_tiles_per_cta(bt, k):
    """cuda_wgmma with MT > 1: one pipeline over several token tiles, an epilogue at each
    tile's end (K = 64: at every step), the last CTA's tiles ragged (M = 1000 = 3 x 4 x 64 + 232)."""
    chosen = K.impl("cuda_wgmma")
    _skip_unless_here(chosen)
    shape = {"M": 1000, "N": 200, "K": k, "group": 32 if k == 640 else 64, "asym": 1, "with_bias": 1}
    for mt in (2, 4, 8):
        config = {"WG": 2, "BT": bt, "MT": mt, "STAGES": 3, "OVERLAP": 0}
        assert chosen.valid(config, shape, "float16", gpu.running().spec) is None, config
        v = verify.verify(K, chosen, config, shape, "float16", "cuda", seed=mt + k)
        assert v.ok, f"{config} {shape}: {v}"


KRES_SHAPES = [(16000, 1024, 256, 128, 1, 0), (1000, 200, 96, 32, 1, 1), (77, 264, 256, 64, 0, 1),
               (300, 136, 192, 64, 1, 1),
               (1, 128, 64, 64, 1, 0)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m, n, k, group, asym, bias", KRES_SHAPES,
                         ids=[f"{m}x{n}x{k}g{g}" for m, n, k, g, _, _ in KRES_SHAPES])
def test_wgmma_resident_slab_every_config(dtype, m, n, k, group, asym, bias):
    """cuda_wgmma_kres, every config: K a multiple of 64 and not (96: a half panel), ragged N and
    M (a CTA with fewer tiles than MT, one with a single tile), bias or not."""
    chosen = K.impl("cuda_wgmma_kres")
    _skip_unless_here(chosen)
    shape = {"M": m, "N": n, "K": k, "group": group, "asym": asym, "with_bias": bias}
    for values in itertools.product(*chosen.space.values()):
        config = dict(zip(chosen.space, values))
        assert chosen.valid(config, shape, dtype, gpu.running().spec) is None, config
        v = verify.verify(K, chosen, config, shape, dtype, "cuda", seed=m + k)
        assert v.ok, f"{config} {shape} {dtype}: {v}"


@pytest.mark.parametrize("m", [1, 16, 77])
def test_split_k_over_a_cluster(m):
    """K = 640: 10 k-tiles at WARPS_K 1 (SPLIT 4: 3 + 3 + 3 + 1), 5 at WARPS_K 2 (SPLIT 4:
    2 + 2 + 1 + 0); N = 200 leaves a ragged tile; groups of 64, asymmetric, bias."""
    check_split_k(K, {"M": m, "N": 200, "K": 640, "group": 64, "asym": 1, "with_bias": 1})


@pytest.mark.parametrize("impl, m", [("cuda", 1), ("cuda", 16), ("cuda", 300), ("cuda_wgmma", 300),
                                     ("cuda_wgmma_kres", 3000)])
def test_chained_calls_in_a_graph(impl, m):
    """GEMMs chained through their outputs in one CUDA graph: the CUDA kernels fetch their weight
    before waiting for the one ahead (programmatic dependent launch, sm_90+), their x after."""
    nk = 256 if impl == "cuda_wgmma_kres" else 2048   # that kernel takes K <= 256
    shape = {"M": m, "N": nk, "K": nk, "group": 128, "asym": 1, "with_bias": 1}
    chosen = K.impl(impl)
    _skip_unless_here(chosen)
    gen = torch.Generator(device="cuda").manual_seed(m)
    check_chain_in_graph(K, impl, shape, K.make_inputs(shape, torch.float16, "cuda", gen))


@pytest.mark.parametrize("impl", ["cuda", "cuda_wgmma", "cuda_wgmma_kres", "triton"])
def test_offsets_past_2_to_the_31(impl):
    """y has 2^31 + 2^21 elements: its row offsets need 64 bits."""
    m, n, k = (1 << 20) + 1, 2048, 64
    gen = torch.Generator(device="cuda").manual_seed(5)
    w = prepare(torch.randn(n, k, device="cuda", generator=gen), group=32)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=gen)
    _skip_unless_here(K.impl(impl))
    y = int4_linear(x, w, impl=impl)
    rows = torch.cat([torch.arange(64, device="cuda"), torch.arange(m - 64, m, device="cuda")])
    dense = dequantize(w.tensors["qweight"], w.tensors["scales"], w.tensors["zeros"], n, k, 32)
    assert verify.relative_error(y[rows], x[rows].double() @ dense.t()) < 1e-2


@pytest.mark.parametrize("asym", [True, False])
def test_public_function_against_the_float_weight(asym):
    """int4_linear of prepare(W) against x · W^T with the float W: the quantisation error of
    4 bits (relative ~0.1 on Gaussian weights), not more."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    w = torch.randn(512, 1024, device="cuda", generator=gen)
    x = torch.randn(3, 5, 1024, device="cuda", dtype=torch.float16, generator=gen)
    b = torch.randn(512, device="cuda", dtype=torch.float16, generator=gen)
    y = int4_linear(x, prepare(w, group=64, asym=asym), bias=b)
    assert y.shape == (3, 5, 512)
    ref = x.double() @ w.double().t() + b.double()
    assert verify.relative_error(y, ref) < 0.15


def test_activation_dtype_must_match_the_scales():
    w = prepare(torch.randn(64, 128, device="cuda"), group=32, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="dtype"):
        int4_linear(torch.randn(4, 128, device="cuda", dtype=torch.float16), w)


@pytest.mark.parametrize("m, n, k", [(16000, 1024, 256), (6000, 256, 1024), (16, 1024, 1024)])
def test_auto_impl_is_right(m, n, k):
    """The public function's default (``impl="auto"``): whichever implementation it takes here
    (on an H100: the resident slab, the per-stage warpgroup kernel, ``cuda``) is right."""
    gen = torch.Generator(device="cuda").manual_seed(k)
    w = prepare(torch.randn(n, k, device="cuda", generator=gen), group=128)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=gen)
    y = int4_linear(x, w)
    dense = dequantize(w.tensors["qweight"], w.tensors["scales"], w.tensors["zeros"], n, k, 128)
    assert verify.relative_error(y, x.double() @ dense.t()) < 1e-2
