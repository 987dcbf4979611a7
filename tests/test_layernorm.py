"""LayerNorm's public function: results through the Triton interpreter (or the GPU), and bad
input refused with a clear error before anything launches."""
import pytest
import torch

from kernels.layernorm import layer_norm


def _args(device, rows=6, n=96, dtype=torch.float16):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, rows // 2, n, generator=g).to(device, dtype)
    return x, torch.randn(n, generator=g).to(device, dtype), torch.randn(n, generator=g).to(device, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_matches_torch_and_keeps_shape(device, dtype):
    x, w, b = _args(device, dtype=dtype)
    r = torch.randn_like(x)
    y, s = layer_norm(x, w, b, eps=1e-6, residual=r)
    assert y.shape == x.shape and s.shape == x.shape
    ref = torch.nn.functional.layer_norm((x.double() + r.double()), (96,), w.double(), b.double(),
                                         1e-6)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert ((y.double() - ref).norm() / ref.norm()).item() < tol
    assert torch.allclose(s.double(), x.double() + r.double(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("make, error, match", [
    (lambda x, w, b: (x.double(), w, b), TypeError, "dtype torch.float64"),
    (lambda x, w, b: (x.int(), w, b), TypeError, "dtype"),
    (lambda x, w, b: (x, w.float(), b), TypeError, "weight has dtype torch.float32"),
    (lambda x, w, b: (x, w[:-1].clone(), b), ValueError, "weight has shape"),
    (lambda x, w, b: (x.transpose(0, 1), w, b), ValueError, "contiguous"),
    (lambda x, w, b: (x[..., :16].contiguous(), w[:16].clone(), b[:16].clone()), ValueError,
     "hidden=16 is outside"),
    (lambda x, w, b: ("x", w, b), TypeError, "torch.Tensor"),
])
def test_bad_input_is_refused(device, make, error, match):
    x, w, b = make(*_args(device))
    with pytest.raises(error, match=match):
        layer_norm(x, w, b)


def test_mismatched_residual_and_unknown_impl(device):
    x, w, b = _args(device)
    with pytest.raises(ValueError, match="residual must be a tensor of x's shape"):
        layer_norm(x, w, b, residual=x[:1])
    with pytest.raises(ValueError, match="no implementation 'cutlass'"):
        layer_norm(x, w, b, impl="cutlass")


def test_cpu_tensors_are_refused_by_the_cuda_implementation():
    x, w, b = _args("cpu")
    with pytest.raises(ValueError, match="a CUDA tensor is needed"):
        layer_norm(x, w, b, impl="cuda")


def test_misaligned_view_is_refused(device):
    x, w, b = _args(device, rows=8, n=96)
    flat = torch.empty(8 * 96 + 1, dtype=x.dtype, device=device)[1:].view(8, 96)
    with pytest.raises(ValueError, match="16-byte aligned"):
        layer_norm(flat, w, b)
