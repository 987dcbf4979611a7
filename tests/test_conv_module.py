"""The conv module's public function, weight preparation and reference: WeNet's module in float64
is the ground truth; padded frames never leak; bad input is refused before anything launches.
Triton implementations run in the interpreter without a GPU (small shapes)."""
import pytest
import torch

from kernels.conv_module import conv_module, fold_batchnorm, prepare_weights
from kernels.conv_module.reference import WenetConvModule, conv_module_functional
from tests.conftest import HAS_GPU

IMPLS = ["triton", "triton_fused"] + (["cuda_dw"] if HAS_GPU else [])


def _module(d=16, k=5, causal=False, seed=0):
    torch.manual_seed(seed)
    m = WenetConvModule(d, k, causal)
    with torch.no_grad():   # BatchNorm with non-trivial statistics
        m.norm.weight.uniform_(0.5, 1.5)
        m.norm.bias.uniform_(-0.5, 0.5)
        m.norm.running_mean.uniform_(-0.5, 0.5)
        m.norm.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _x(b, t, d, device, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, d, generator=g).to(device, dtype)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_wenet_module(device, impl, causal):
    m = _module(causal=causal)
    w = {k: v.to(device) for k, v in prepare_weights(m.state_dict()).items()}
    x, lengths = _x(3, 11, 16, device), torch.tensor([11, 6, 1], dtype=torch.int32)
    y = conv_module(x, lengths.to(device), w, causal=causal, impl=impl)
    assert _rel(y.cpu(), m.double()(x.double().cpu(), lengths)) < 1e-5


def test_reference_is_the_module_with_batchnorm_folded():
    for causal in (False, True):
        m = _module(d=8, k=4 if causal else 3, causal=causal).double()
        x, lengths = _x(2, 6, 8, "cpu", torch.float64), torch.tensor([6, 3])
        w = {k: v.double() for k, v in prepare_weights(m.state_dict()).items()}
        y = conv_module_functional(x, lengths, w["w1"], w["b1"], w["dw_w"], w["dw_b"], w["w2"],
                                   w["b2"], causal)
        assert torch.allclose(y, m(x, lengths), rtol=1e-6, atol=1e-6)


def test_fold_batchnorm_agrees_with_torch():
    m = _module(d=8, k=3)
    bn = m.norm
    w, b = fold_batchnorm(m.depthwise_conv.weight, m.depthwise_conv.bias, bn.weight, bn.bias,
                          bn.running_mean, bn.running_var, bn.eps)
    tw, tb = torch.nn.utils.fusion.fuse_conv_bn_weights(
        m.depthwise_conv.weight, m.depthwise_conv.bias, bn.running_mean, bn.running_var, bn.eps,
        bn.weight, bn.bias)
    assert torch.allclose(w, tw[:, 0].detach(), atol=1e-6)
    assert torch.allclose(b, tb.detach(), atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_padded_frames_never_leak(device, impl):
    """NaN in padded input frames changes nothing; lengths out of [0, T] act as clamped."""
    m = _module()
    w = {k: v.to(device) for k, v in prepare_weights(m.state_dict()).items()}
    x = _x(3, 9, 16, device)
    lengths = torch.tensor([9, 4, 0], dtype=torch.int32, device=device)
    clean = conv_module(x, lengths, w, impl=impl)
    dirty = x.clone()
    dirty[1, 4:] = float("nan")
    dirty[2] = float("inf")
    assert torch.equal(conv_module(dirty, lengths, w, impl=impl), clean)
    assert (clean[1, 4:] == 0).all() and (clean[2] == 0).all()
    clamped = conv_module(x, torch.tensor([99, 4, -5], dtype=torch.int32, device=device), w,
                          impl=impl)
    assert torch.equal(clamped, clean)


@pytest.mark.parametrize("tiles", [1, 2, 8])
def test_every_gemm_tile_is_computed(device, tiles):
    """Several row and column tiles per GEMM, a K loop with a masked last step (D = 40 is not a
    multiple of BK = 16), and, in the persistent pw2, programs that walk several tiles (2 x 3
    tiles over TILES2 = 2 or 8 per program: 3 programs of 2, or one of 6)."""
    m = _module(d=40, k=7)
    w = {k: v.to(device) for k, v in prepare_weights(m.state_dict()).items()}
    x, lengths = _x(3, 11, 40, device), torch.tensor([11, 6, 2], dtype=torch.int32)
    config = {"BM1": 32, "BN1": 16, "BK1": 16, "W1": 4, "S1": 2,
              "BMD": 16, "BCD": 16, "WD": 1,
              "BM2": 32, "BN2": 16, "BK2": 16, "W2": 4, "S2": 2, "TILES2": tiles}
    y = conv_module(x, lengths.to(device), w, impl="triton", config=config)
    assert _rel(y.cpu(), m.double()(x.double().cpu(), lengths)) < 1e-5


@pytest.mark.parametrize("causal", [False, True])
def test_mask_after_glu_makes_output_independent_of_padding(device, causal):
    m = _module(causal=causal)
    w = {k: v.to(device) for k, v in prepare_weights(m.state_dict()).items()}
    x = _x(1, 12, 16, device)
    long = conv_module(x, torch.tensor([7], device=device), w, causal=causal, mask_after_glu=True)
    short = conv_module(x[:, :7].contiguous(), torch.tensor([7], device=device), w,
                        causal=causal, mask_after_glu=True)
    assert torch.allclose(long[:, :7], short, atol=1e-6)


def test_wenet_masking_differs_from_mask_after_glu(device):
    """WeNet feeds padded frames to the depthwise conv as glu(b1), so the last valid frames see
    them; the variant sees zeros (documented semantics, not an accident of the kernels)."""
    m = _module()
    w = {k: v.to(device) for k, v in prepare_weights(m.state_dict()).items()}
    x, lengths = _x(1, 12, 16, device), torch.tensor([7], device=device)
    a = conv_module(x, lengths, w)
    b = conv_module(x, lengths, w, mask_after_glu=True)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)     # windows inside [0, 7)
    assert not torch.allclose(a[:, 5:7], b[:, 5:7], atol=1e-3)


def _weights(device, d=16, k=5, dtype=torch.float32, causal=False):
    state = _module(d, k, causal).state_dict()
    return {n: v.to(device) for n, v in prepare_weights(state, dtype).items()}


@pytest.mark.parametrize("change, error, match", [
    (lambda x, n, w: (x, n, {**w, "dw_w": torch.zeros(16, 4, device=x.device)}), ValueError,
     "odd kernel size, got K=4"),
    (lambda x, n, w: (x, n, {**w, "dw_w": torch.zeros(16, 65, device=x.device)}), ValueError,
     "K=65 is outside"),
    (lambda x, n, w: (x[..., :8].contiguous(), n, w), ValueError, "dw_w must be"),
    (lambda x, n, w: (x, n, {**w, "w1": w["w1"][:, :8].contiguous()}), ValueError,
     "w1 has shape"),
    (lambda x, n, w: (x, n, {**w, "w2": w["w2"].half()}), TypeError, "w2 has dtype"),
    (lambda x, n, w: (x, n, {k: v for k, v in w.items() if k != "b2"}), ValueError,
     "weights must map"),
    (lambda x, n, w: (x[0], n, w), ValueError, r"x must be \[B, T, D\]"),
    (lambda x, n, w: (x, n.float(), w), ValueError, "lengths must be an integer tensor"),
    (lambda x, n, w: (x, n[:1], w), ValueError, "lengths must be an integer tensor"),
    (lambda x, n, w: (x.double(), n, w), TypeError, "dtype torch.float64"),
    (lambda x, n, w: ("x", n, w), TypeError, "torch.Tensor"),
])
def test_bad_input_is_refused(device, change, error, match):
    x, n, w = change(_x(2, 5, 16, device), torch.tensor([5, 3], device=device),
                     _weights(device))
    with pytest.raises(error, match=match):
        conv_module(x, n, w)


def test_check_lengths(device):
    x, w = _x(2, 5, 16, device), _weights(device)
    for bad in ([6, 3], [5, -1]):
        with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=5\]"):
            conv_module(x, torch.tensor(bad, device=device), w, check_lengths=True)
    ok = conv_module(x, torch.tensor([5, 0], device=device), w, check_lengths=True)
    assert (ok[1] == 0).all()


def test_even_kernel_is_fine_when_causal(device):
    y = conv_module(_x(1, 6, 16, device), torch.tensor([6], device=device),
                    _weights(device, k=4, causal=True), causal=True)
    assert torch.isfinite(y).all()


def test_prepare_weights_checks_the_state():
    ln = _module().state_dict()
    for key in ("norm.running_mean", "norm.running_var", "norm.num_batches_tracked"):
        ln.pop(key)
    with pytest.raises(ValueError, match="LayerNorm"):
        prepare_weights(ln)
    with pytest.raises(KeyError, match=r"state has no 'enc\."):
        prepare_weights(_module().state_dict(), prefix="enc.")
    bad = _module().state_dict()
    bad["pointwise_conv1.weight"] = bad["pointwise_conv1.weight"][:8]
    with pytest.raises(ValueError, match="pointwise convs must be"):
        prepare_weights(bad)
    no_bias = {k: v for k, v in _module().state_dict().items() if not k.endswith("conv1.bias")}
    w = prepare_weights(no_bias, torch.float16)
    assert w["b1"].dtype == torch.float16 and (w["b1"] == 0).all()
    assert w["dw_w"].dtype == torch.float32 and w["dw_w"].shape == (16, 5)


def test_pw2_heuristic_fills_the_gpu_with_about_two_programs_per_multiprocessor():
    from kernels import gpu
    from kernels.conv_module import KERNEL
    impl, h100 = KERNEL.impl("cuda_dw"), gpu.by_name("h100")
    shape = {"B": 32, "T": 2000, "D": 256, "K": 31, "causal": 0, "mask_after_glu": 0}
    config = impl.heuristic(shape, "float16", h100)
    tiles = -(-32 * 2000 // config["BM2"]) * -(-256 // config["BN2"])
    programs = -(-tiles // config["TILES2"])
    assert config["TILES2"] > 1 and 1.8 * h100.sms <= programs <= 4 * h100.sms, config
    assert impl.heuristic({**shape, "T": 20}, "float16", h100)["TILES2"] == 1
    assert impl.heuristic(shape, "float16", None)["TILES2"] == 1
