"""Random valid configs of a space on this GPU, and checking each against the reference; a
kernel's launches chained through their outputs in one CUDA graph."""
import random

import pytest
import torch

from kernels import gpu, launch, verify


def random_valid_configs(impl, shape, dtype="float16", count=12, seed=0, tries=5000):
    """``count`` configs drawn at random from ``impl``'s space that its rule accepts on this
    GPU; AssertionError if ``tries`` draws do not find that many."""
    spec, rng, found = gpu.running().spec, random.Random(seed), []
    for _ in range(tries):
        config = {k: rng.choice(v) for k, v in impl.space.items()}
        if impl.valid(config, shape, dtype, spec) is None:
            found.append(config)
            if len(found) == count:
                return found
    raise AssertionError(f"only {len(found)} valid configs in {tries} draws")


def check_random_configs(kernel, impl_name, shape, dtype="float16", count=12, seed=0):
    """Each of ``count`` random valid configs against the reference, poisoned outputs."""
    impl = kernel.impl(impl_name)
    for i, config in enumerate(random_valid_configs(impl, shape, dtype, count, seed)):
        v = verify.verify(kernel, impl, config, shape, dtype, "cuda", seed=i)
        assert v.ok, f"{kernel.name}/{impl_name} {config}: {v}"


def check_chain_in_graph(kernel, impl_name, shape, inputs, steps=4, tol=1e-2, config=None):
    """Calls chained through their outputs (x -> y1 -> y2 ...) in one CUDA graph, the outputs
    poisoned (NaN) first: on sm_90+ every launch declared ``pdl`` is a programmatic dependent
    one, so a kernel that read its input before its wait would see a stale or NaN x and miss
    its step's reference. ``shape`` must map y's shape onto x's; ``config``: the default's."""
    chosen = kernel.impl(impl_name)
    config = config or launch.default_config(kernel, chosen, shape, "float16")
    ys = [inputs["x"]] + [torch.full_like(inputs["x"], float("nan")) for _ in range(steps)]

    def chain():
        for a, b in zip(ys, ys[1:]):
            launch.run(kernel, chosen, config, {**inputs, "x": a, "y": b}, shape)

    chain()                               # compile and load outside the capture
    for y in ys[1:]:
        y.fill_(float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()
    graph.replay()
    torch.cuda.synchronize()
    for i, (a, b) in enumerate(zip(ys, ys[1:])):
        ref = kernel.reference({**inputs, "x": a}, shape, {})["y"]
        assert verify.relative_error(b, ref) < tol, f"{impl_name} {config}: step {i + 1}"


def check_split_k(kernel, shape, dtype="float16"):
    """The GEMM tiles' SPLIT 2 and 4 (a thread-block cluster splitting K, sm_90+) from the
    heuristic's tile at WARPS_K 1 and 2, each against the reference on poisoned outputs (every
    rank's share of the k-tiles, a rank with none where they run out, the cluster's sum), then
    SPLIT 2 chained through its outputs in one graph (shape's N must equal its K for that)."""
    spec = gpu.running().spec
    if spec.cc < (9, 0):
        pytest.skip(f"SPLIT needs thread-block clusters (sm_90+), not {spec.name}")
    impl = kernel.impl("cuda")
    base = impl.heuristic(shape, dtype, spec)
    checked = 0
    for split in (2, 4):
        for warps_k in (1, 2):
            config = {**base, "SPLIT": split, "WARPS_K": warps_k}
            if impl.valid(config, shape, dtype, spec):
                continue
            v = verify.verify(kernel, impl, config, shape, dtype, "cuda", seed=split + warps_k)
            assert v.ok, f"{kernel.name}/cuda {shape} {config}: {v}"
            checked += 1
    assert checked >= 3, f"only {checked} SPLIT configs valid at {shape}"
    chain = {**shape, "N": shape["K"], "with_bias": 0}
    gen = torch.Generator(device="cuda").manual_seed(7)
    check_chain_in_graph(kernel, "cuda", chain, kernel.make_inputs(chain, torch.float16, "cuda", gen),
                         config={**impl.heuristic(chain, dtype, spec), "SPLIT": 2})
