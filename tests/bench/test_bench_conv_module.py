"""The Conformer convolution module at Conformer shapes: the three implementations against WeNet's
module in PyTorch eager (nn.Conv1d, GLU, BatchNorm1d, SiLU) and its torch.compile. Full-length
batches (every frame valid), so no implementation gains from skipping padding.

Configs are the tuner's winners for this GPU where the cache has them (``autotune run``), else the
implementation's heuristic; extra_info records which.
"""
import pytest
import torch

from kernels import launch, timing
from tests.bench.configs import config_for
from kernels.conv_module import KERNEL as K
from kernels.conv_module import prepare_weights
from kernels.conv_module.reference import WenetConvModule

SHAPES = [(32, 500, 256, 31, 0), (32, 500, 256, 31, 1), (32, 500, 144, 15, 0),
          (32, 500, 512, 31, 0)]
IMPLS = ["eager", "compile"] + [i.name for i in K.impls]


def _shape(b, t, d, k, causal):
    return {"B": b, "T": t, "D": d, "K": k, "causal": causal, "mask_after_glu": 0}


@pytest.mark.parametrize("dims", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("impl", IMPLS)
def test_conv_module(measure, benchmark, impl, dims):
    shape = _shape(*dims)
    cost = K.cost(shape, "float16")
    torch.manual_seed(0)
    module = WenetConvModule(shape["D"], shape["K"], bool(shape["causal"])).cuda().half().eval()
    weights = prepare_weights(module.state_dict())
    n_sets = timing.rotation(cost.bytes)
    xs = [torch.randn(shape["B"], shape["T"], shape["D"], device="cuda", dtype=torch.float16)
          for _ in range(n_sets)]
    lengths = torch.full((shape["B"],), shape["T"], device="cuda", dtype=torch.int32)
    benchmark.group = "conv_module fp16 " + "x".join(map(str, dims))
    if impl in ("eager", "compile"):
        fn = module if impl == "eager" else torch.compile(module)
        with torch.no_grad():
            calls = [lambda x=x: fn(x, lengths) for x in xs]
            measure(calls, cost, role="baseline", impl=impl)
        return
    chosen = K.impl(impl)
    config, source = config_for(K, chosen, shape)
    outs = [launch.empty_outputs(K, shape, "float16", "cuda") for _ in xs]
    calls = [lambda x=x, o=o: launch.run(K, chosen, config,
                                         {"x": x, "lengths": lengths, **weights, **o}, shape)
             for x, o in zip(xs, outs)]
    measure(calls, cost, role="candidate", impl=impl, config=config, config_source=source)

