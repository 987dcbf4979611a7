"""Every implementation of every kernel against its float64 reference, on the kernel's small odd
example shapes, with poisoned outputs and fresh random inputs. On a machine without a GPU this
runs the Triton implementations in Triton's interpreter; on a GPU, all implementations."""
import random

import pytest

import kernels
from kernels import contract, gpu, verify
from tests.conftest import HAS_GPU

CASES = [(k.name, i.name, dt) for k in kernels.registry().values() for i in k.impls
         for dt in k.dtypes_of(i)]


def _configs(impl, shape, dtype, spec, n_random=2, seed=0):
    """The heuristic config plus a few random valid ones from the space (none where the impl
    refuses the shape, e.g. a head dim it leaves to another)."""
    heuristic = contract.check_config(impl, impl.heuristic(shape, dtype, spec))
    if impl.valid(heuristic, shape, dtype, spec or gpu.by_name("h100")):
        return
    yield heuristic
    rng = random.Random(seed)
    found = 0
    for _ in range(200):
        if found == n_random:
            return
        config = {k: rng.choice(v) for k, v in impl.space.items()}
        if impl.valid(config, shape, dtype, spec or gpu.by_name("h100")) is None:
            found += 1
            yield config


@pytest.mark.parametrize("name, impl_name, dtype", CASES)
def test_examples_match_reference(name, impl_name, dtype, device):
    k = kernels.get(name)
    impl = k.impl(impl_name)
    if impl.lang != "triton" and not HAS_GPU:
        pytest.skip("CUDA launches need a GPU (their compilation is tested in test_nvrtc)")
    spec = gpu.running().spec if HAS_GPU else None
    if not impl.runs_on(spec):
        pytest.skip(f"{impl_name} does not run on {spec.name if spec else 'this machine'}")
    checked = 0
    for i, shape in enumerate(k.examples):
        for config in _configs(impl, shape, dtype, spec, seed=i):
            v = verify.verify(k, impl, config, shape, dtype, device, seed=1000 + i)
            assert v.ok, f"{name}/{impl_name} {dtype} {shape} {config}: {v}"
            checked += 1
    assert checked, f"{name}/{impl_name} takes none of the examples"
