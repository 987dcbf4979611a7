"""A block's final LayerNorm and the next block's first in one pass, at Conformer shapes,
against the two ways of running them separately: torch.nn.functional.layer_norm twice, and our
LayerNorm kernel twice (residual add fused into the first), as the recipe ran them before.

Configs are the tuner's winners for this GPU where the cache has them, else the heuristic.
"""
import pytest
import torch

from kernels import launch, timing
from kernels.layernorm import KERNEL as LN
from kernels.layernorm import layer_norm
from kernels.layernorm_chain import KERNEL as K
from tests.bench.configs import config_for

SHAPES = [(16000, 256), (65536, 256), (16000, 512)]


@pytest.mark.parametrize("rows, hidden", SHAPES, ids=[f"{r}x{h}" for r, h in SHAPES])
@pytest.mark.parametrize("impl", ["torch twice", "layernorm kernel twice", "chain"])
def test_layernorm_chain(measure, benchmark, impl, rows, hidden):
    shape = {"rows": rows, "hidden": hidden}
    cost = K.cost(shape, "float16")
    gen = torch.Generator(device="cuda").manual_seed(0)
    sets = [K.make_inputs(shape, torch.float16, "cuda", gen)
            for _ in range(timing.rotation(cost.bytes))]
    benchmark.group = f"layernorm_chain fp16 {rows}x{hidden}"
    scalars = dict(K.scalars)
    if impl == "torch twice":
        calls = [lambda s=s: K.baseline(s, shape, scalars) for s in sets]
        measure(calls, cost, role="baseline", impl=impl)
        return
    if impl == "layernorm kernel twice":
        first = config_for(LN, LN.impl("triton"), {**shape, "with_residual": 1})[0]
        second = config_for(LN, LN.impl("triton"), {**shape, "with_residual": 0})[0]

        def twice(s):
            y, _ = layer_norm(s["x"], s["weight"], s["bias"], residual=s["residual"],
                              config=first)
            return layer_norm(y, s["weight2"], s["bias2"], config=second)

        measure([lambda s=s: twice(s) for s in sets], cost, role="baseline", impl=impl)
        return
    config, source = config_for(K, K.impl("triton"), shape)
    outs = [launch.empty_outputs(K, shape, "float16", "cuda") for _ in sets]
    calls = [lambda s=s, o=o: launch.run(K, K.impl("triton"), config, {**s, **o}, shape)
             for s, o in zip(sets, outs)]
    measure(calls, cost, role="candidate", impl=impl, config=config, config_source=source)
