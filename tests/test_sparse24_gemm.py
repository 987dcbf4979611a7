"""2:4 sparse GEMM without a GPU: pruning, the compressed format (values and the metadata words
a lane hands mma.sp), and bad input refused before launch."""
import pytest
import torch

from kernels import launch
from kernels.sparse24_gemm import (KERNEL, compress, decompress, is_24, prepare, prune_24,
                                   sparse24_linear)


def test_pruning_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.0, 0.0, 5.0, -0.5]])
    assert torch.equal(prune_24(w), torch.tensor([[0.0, -4.0, 3.0, 0.0, 0.0, 0.0, 5.0, -0.5]]))
    w = torch.randn(33, 68, generator=torch.Generator().manual_seed(1))
    p = prune_24(w)
    assert is_24(p) and not is_24(w)
    kept = p.reshape(33, 17, 4).abs().sum(-1)
    best2 = w.reshape(33, 17, 4).abs().topk(2, dim=-1).values.sum(-1)
    assert torch.allclose(kept, best2)


@pytest.mark.parametrize("n, k", [(1, 4), (33, 36), (64, 200), (48, 64)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compress_round_trip(n, k, dtype):
    w = prune_24(torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)))
    c = compress(w, dtype)
    assert c["values"].shape == (-(-n // 16) * 16, -(-k // 64) * 32) and c["values"].dtype == dtype
    assert c["meta"].shape == (-(-n // 16) * 8, -(-k // 64) * 4) and c["meta"].dtype == torch.int32
    assert torch.equal(decompress(c["values"], c["meta"], n, k), w.to(dtype))
    nibbles = torch.stack([c["meta"].view(torch.uint8) & 15, c["meta"].view(torch.uint8) >> 4], -1)
    assert ((nibbles & 3) < (nibbles >> 2)).all()      # two distinct positions, ascending


def test_metadata_word_layout():
    """Row pair (n, n + 8), k16 block: bits 0..15 row n, 16..31 row n + 8, group 0 lowest,
    first kept position in the low 2 bits; empty groups keep positions 0 and 1."""
    w = torch.zeros(16, 64)
    w[0, 1], w[0, 3] = 1, 2          # row 0, group 0: positions 1, 3 -> 0b1101
    w[8, 0], w[8, 2] = 3, 4          # row 8, group 0: positions 0, 2 -> 0b1000
    w[3, 21] = 5                     # row 3, k16 block 1, group 1: positions 1 (and 0)
    c = compress(w)
    assert c["meta"][0, 0].item() & 0xFFFFFFFF == 0x4448444D
    assert c["meta"][3, 1].item() & 0xFFFFFFFF == 0x44444444
    assert c["values"][0, :2].tolist() == [1, 2] and c["values"][8, :2].tolist() == [3, 4]
    assert c["values"][3, 10:12].tolist() == [0, 5]


@pytest.mark.parametrize("make, error, match", [
    (lambda: compress(torch.randn(8, 16)), ValueError, "not 2:4 sparse"),
    (lambda: prepare(torch.randn(8, 16)), ValueError, "prune it with prune_24"),
    (lambda: prune_24(torch.randn(8, 18)), ValueError, "multiple of 4"),
    (lambda: compress(torch.zeros(8, 18)), ValueError, "multiple of 4"),
    (lambda: compress(torch.zeros(8, 16), torch.float32), TypeError, "fp16 or bf16"),
    (lambda: prune_24(torch.zeros(8, 16, dtype=torch.int32)), TypeError, "floating-point"),
])
def test_bad_weights_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def _weight(n=40, k=64):
    return prepare(torch.randn(n, k, generator=torch.Generator().manual_seed(0)), prune=True)


@pytest.mark.parametrize("args, error, match", [
    (lambda w: (torch.randn(4, 60).half(), w), ValueError, r"\[\.\.\., K=64\]"),
    (lambda w: (torch.randn(4, 64).half(), w.tensors), TypeError, "Sparse24Weight"),
    (lambda w: (torch.randn(4, 64).half(), w), ValueError, "CUDA tensor is needed"),
])
def test_bad_calls_are_refused_before_launch(args, error, match):
    with pytest.raises(error, match=match):
        sparse24_linear(*args(_weight()))


@pytest.mark.parametrize("field, change, error, match", [
    ("meta", lambda t: t[:-1].clone(), ValueError, "meta has shape"),
    ("meta", lambda t: t.view(torch.float32), TypeError, "meta has dtype"),
    ("values", lambda t: t[:, :-8].clone(), ValueError, "values has shape"),
    ("values", lambda t: t.bfloat16(), TypeError, "values has dtype"),
    ("x", lambda t: t.t().contiguous().t(), ValueError, "x must be contiguous"),
])
def test_wrong_packing_is_refused_by_the_contract(field, change, error, match):
    """What the launcher checks for every implementation before a launch (on the GPU where there
    is one, else through the CPU path the interpreter allows)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    w = _weight()
    tensors = {k: t.to(dev) for k, t in {"x": torch.randn(4, 64).half(), **w.tensors}.items()}
    tensors[field] = change(tensors[field])
    with pytest.raises(error, match=match):
        launch.bind(KERNEL, tensors, {"M": 4, "N": 40, "K": 64, "with_bias": 0}, "float16", "triton")


def test_k_not_a_multiple_of_4_is_refused_by_the_contract():
    impl = KERNEL.impl("cuda")
    shape = {"M": 4, "N": 40, "K": 66, "with_bias": 0}
    config = impl.heuristic({**shape, "K": 64}, "float16", None)
    assert "multiple of 4" in impl.valid(config, shape, "float16", None)
    with pytest.raises(ValueError, match="multiple of 4"):
        impl.constants(config, shape, "float16")


@pytest.mark.parametrize("m, n, k, gpu_name, want", [
    (16000, 1024, 256, "h100", "cuda_wgmma_kres"),    # the FFN's first GEMM: the resident slab
    (16000, 256, 1024, "h100", "cuda_wgmma"),         # K too large for the slab
    (4096, 4096, 4096, "h100", "cuda_wgmma"),
    (16000, 1024, 252, "h100", "cuda"),               # K % 8: neither warpgroup kernel takes it
    (16, 4096, 4096, "h100", "cuda"),                 # small M: the grid would not cover the SMs
    (16000, 1024, 256, "a100", "cuda"),               # no warpgroup MMA before sm_90
    (16000, 1024, 256, "l4", "cuda"),
])
def test_auto_impl_by_shape_and_gpu(m, n, k, gpu_name, want):
    from kernels import gpu
    from kernels.int4_gemm import tiles

    shape = {"M": m, "N": n, "K": k, "with_bias": 1}
    assert tiles.auto_impl(KERNEL, shape, "float16", gpu.by_name(gpu_name)) == want
    assert tiles.auto_impl(KERNEL, shape, "float16", gpu.by_name(gpu_name), tuned="cuda") == "cuda"


@pytest.mark.parametrize("bt, rblk, stages, bias", [(256, 1, 4, 1), (128, 1, 3, 0), (128, 2, 5, 1), (64, 2, 4, 0)])
def test_overlap_keeps_one_stage_in_flight(bt, rblk, stages, bias):
    """cuda_wgmma with OVERLAP 1 and MT 1, in the SASS (sm_90a): each stage waits for all but its
    own MMAs (two stage variants, DEPBAR 0x1) and only the drain after the loop waits for all (one
    DEPBAR 0x0) -- a read of the accumulators on a path inside the loop had ptxas inject a second,
    full wait at the loop's back edge, which serialised the overlap; and no instruction writes the
    registers a running wgmma reads (its kept values and metadata: kernels/sass.py, the
    check that int4_gemm's OVERLAP fails)."""
    from tests.sass import sass_of
    from kernels.sass import overlap_register_hazards

    config = {"WG": 2, "BT": bt, "MT": 1, "STAGES": stages, "OVERLAP": 1, "RBLK": rblk}
    sass = sass_of("sparse24_gemm", "cuda_wgmma", config, {"M": 4096, "N": 4096, "K": 4096, "with_bias": bias})
    assert sass.count("WARPGROUP.DEPBAR.LE gsb0, 0x1") == 2, config
    assert sass.count("WARPGROUP.DEPBAR.LE gsb0, 0x0") == 1, config
    assert overlap_register_hazards(sass) == [], config


@pytest.mark.parametrize("m, n, k, want", [
    (4096, 4096, 4096, {"BT": 256, "MT": 1, "STAGES": 4, "OVERLAP": 1, "RBLK": 1}),
    (16000, 256, 1024, {"BT": 128, "MT": 1, "STAGES": 5, "OVERLAP": 1, "RBLK": 2}),
    (9000, 256, 1024, {"BT": 256, "MT": 1, "STAGES": 4, "OVERLAP": 1, "RBLK": 1}),   # M / 128 < 90 % of the SMs
    (16000, 1024, 256, {"BT": 128, "MT": 4, "STAGES": 3, "OVERLAP": 0, "RBLK": 1}),
])
def test_wgmma_heuristic_takes_the_measured_configs(m, n, k, want):
    """cuda_wgmma's default on an H100 at the shapes BENCHMARKS.md measured (eighth session:
    OVERLAP 1 at K > 256; RBLK 2 where N <= 256 and M / 128 CTAs fill the SMs), each valid."""
    from kernels import gpu

    impl = KERNEL.impl("cuda_wgmma")
    shape = {"M": m, "N": n, "K": k, "with_bias": 0}
    config = impl.heuristic(shape, "float16", gpu.by_name("h100"))
    assert config == {"WG": 2, **want}
    assert impl.valid(config, shape, "float16", gpu.by_name("h100")) is None


def test_wgmma_heuristic_drops_overlap_where_the_binary_is_refused(monkeypatch):
    """Where this machine's compiler gives an OVERLAP binary that the register check refuses
    (forced here: the check reports a hazard), launching that config is a clear error before any
    launch and the default falls back to the same tiles without OVERLAP."""
    from kernels import gpu, launch, sass

    impl = KERNEL.impl("cuda_wgmma")
    shape = {"M": 4096, "N": 4096, "K": 4096, "with_bias": 0}
    h100 = gpu.by_name("h100")
    monkeypatch.setattr(sass, "overlap_register_hazards", lambda text: ["0x1000 IMAD writes R152 (forced)"])
    launch._cuda_binary.cache_clear()
    try:
        config = impl.heuristic(shape, "float16", h100)
        assert config == {"WG": 2, "BT": 256, "MT": 1, "STAGES": 4, "OVERLAP": 0, "RBLK": 1}
        with pytest.raises(launch.BinaryRefused, match="OVERLAP 1 would give wrong results"):
            launch.cuda_cubin(impl, impl.constants({**config, "OVERLAP": 1}, shape, "float16"), "float16", "sm_90")
    finally:
        launch._cuda_binary.cache_clear()   # no refused or unchecked binary outlives the stub
