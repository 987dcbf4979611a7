"""Two LayerNorms in one pass, without a GPU: the public function through Triton's interpreter
(or on the GPU where there is one) against float64 and against our LayerNorm run twice, and bad
input refused before anything launches."""
import pytest
import torch

from kernels.layernorm import layer_norm
from kernels.layernorm_chain import layer_norm_chain
from tests.conftest import HAS_GPU

DEV = "cuda" if HAS_GPU else "cpu"


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x, r = torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g)
    ws = [1 + 0.1 * torch.randn(n, generator=g) for _ in range(2)]
    bs = [0.1 * torch.randn(n, generator=g) for _ in range(2)]
    return [t.to(DEV, dtype) for t in (x, r, ws[0], bs[0], ws[1], bs[1])]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
def test_matches_float64_and_two_layernorms(dtype, tol):
    x, r, w1, b1, w2, b2 = _inputs((3, 7, 80), dtype)
    y, y2 = layer_norm_chain(x, r, w1, b1, w2, b2, 1e-5, 1e-3)
    f = torch.nn.functional.layer_norm
    ref = f(x.double() + r.double(), (80,), w1.double(), b1.double(), 1e-5)
    ref2 = f(ref, (80,), w2.double(), b2.double(), 1e-3)
    for got, want in ((y, ref), (y2, ref2)):
        assert got.shape == x.shape and got.dtype == dtype
        assert ((got.double() - want).norm() / want.norm()).item() < tol
    twice, _ = layer_norm(x, w1, b1, 1e-5, residual=r)
    assert torch.equal(y, twice)
    assert torch.allclose(y2, layer_norm(twice, w2, b2, 1e-3), atol=1e-2 if tol > 1e-5 else 1e-5)


def test_bad_input_is_refused_before_launch():
    x, r, w1, b1, w2, b2 = _inputs((4, 32), torch.float32)
    with pytest.raises(ValueError, match="share a shape"):
        layer_norm_chain(x, r[:2], w1, b1, w2, b2)
    with pytest.raises(ValueError, match="contiguous"):
        layer_norm_chain(x.T, r.T, w1[:4], b1[:4], w2[:4], b2[:4])
    with pytest.raises(TypeError, match="dtype"):
        layer_norm_chain(x, r, w1, b1, w2.half(), b2)
    with pytest.raises(ValueError, match="weight2 has shape"):
        layer_norm_chain(x, r, w1, b1, w2[:8], b2)
    with pytest.raises(TypeError, match="torch.Tensors"):
        layer_norm_chain(x, None, w1, b1, w2, b2)
