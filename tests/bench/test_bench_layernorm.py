"""LayerNorm (+ residual) at Conformer shapes: Triton, CUDA and torch.nn.functional.layer_norm,
and for reference torch's device copy of the same bytes in the same harness (it pays the fixed
costs of a launch of that size, which the copy bandwidth of a 1 GiB buffer does not).

Configs are the tuner's winners for this GPU where the cache has them (``autotune run``), else the
implementation's heuristic; extra_info records which.
"""
import pytest
import torch

import kernels
from kernels import launch, timing
from tests.bench.configs import config_for

K = kernels.get("layernorm")
SHAPES = [(rows, hidden) for rows in (16000, 65536) for hidden in (144, 256, 512, 1024)]


def _inputs(shape, n_sets, dtype=torch.float16):
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [K.make_inputs(shape, dtype, "cuda", gen) for _ in range(n_sets)]


@pytest.mark.parametrize("residual", [1, 0], ids=["residual", "plain"])
@pytest.mark.parametrize("rows, hidden", SHAPES, ids=[f"{r}x{h}" for r, h in SHAPES])
@pytest.mark.parametrize("impl", ["torch", "triton", "cuda", "copy"])
def test_layernorm(measure, benchmark, impl, rows, hidden, residual):
    shape = {"rows": rows, "hidden": hidden, "with_residual": residual}
    cost = K.cost(shape, "float16")
    sets = _inputs(shape, timing.rotation(cost.bytes))
    benchmark.group = f"layernorm fp16 {rows}x{hidden} {'residual' if residual else 'plain'}"
    eps = {"eps": 1e-5}
    if impl == "copy":   # read and write cost.bytes / 2 each, one kernel per call
        half = cost.bytes // 2
        bufs = [(torch.empty(half, dtype=torch.uint8, device="cuda"),
                 torch.empty(half, dtype=torch.uint8, device="cuda")) for _ in sets]
        measure([lambda a=a, b=b: b.copy_(a) for a, b in bufs], cost,
                role="reference (a torch copy of the same bytes)", impl=impl)
        return
    if impl == "torch":
        calls = [lambda s=s: K.baseline(s, shape, eps) for s in sets]
        measure(calls, cost, role="baseline", impl=impl)
        return
    chosen = K.impl(impl)
    config, source = config_for(K, chosen, shape)
    outs = [launch.empty_outputs(K, shape, "float16", "cuda") for _ in sets]
    calls = [lambda s=s, o=o: launch.run(K, chosen, config, {**s, **o}, shape, eps)
             for s, o in zip(sets, outs)]
    measure(calls, cost, role="candidate", impl=impl, config=config, config_source=source)

