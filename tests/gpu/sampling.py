"""Random valid configs of a space on this GPU, and checking each against the reference."""
import random

from kernels import gpu, verify


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
