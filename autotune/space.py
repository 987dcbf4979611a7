"""What is tuned: one task per (kernel, implementation, dtype, shape bucket), and its configs.

Everything here is read from the kernel contract (``kernels.registry()``), nothing is specific to
a kernel: shapes come from each kernel's ``tune_shapes(ModelDims)``, buckets from
:func:`kernels.contract.bucket_of`, configs from the implementation's ``space`` filtered by its
``valid`` rule for the target GPU (so an invalid config never reaches a compiler).
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import random
from dataclasses import dataclass

import kernels
from cache.models import bucket_key
from kernels import contract, launch
from kernels.contract import Impl, ModelDims
from kernels.gpu import GpuSpec


NAMESPACE = "ct"       # study name prefix of `autotune run`
GRID_MAX = 32          # valid configs up to which every one is measured
DEFAULT_TRIALS = 16    # configs measured per sampled study


@dataclass(frozen=True)
class Budget:
    """Per study: ``trials`` configs to measure (an int, or a float in (0, 1) for a fraction of
    the valid ones; None: all), and/or ``seconds`` of measuring."""
    trials: int | float | None = DEFAULT_TRIALS
    seconds: float | None = None

    def trials_for(self, n_valid: int) -> int:
        if self.trials is None:
            return n_valid
        if isinstance(self.trials, float) and 0 < self.trials < 1:
            return max(1, math.floor(self.trials * n_valid))
        return min(int(self.trials), n_valid)


@dataclass(frozen=True)
class Task:
    """One study: ``shape`` is the shape measured (the first requested one in its bucket)."""
    kernel: str
    impl: str
    dtype: str
    shape: tuple[tuple[str, int], ...]
    bucket: tuple[tuple[str, int], ...]

    @property
    def label(self) -> str:
        return f"{self.kernel}/{self.impl} {self.dtype} {bucket_key(dict(self.bucket))}"

    def study_name(self, gpu: str, namespace: str = NAMESPACE) -> str:
        """gpu, kernel, impl, dtype, bucket and source hash: a changed source starts afresh,
        the same one resumes."""
        source = launch.source_hash(kernels.get(self.kernel).impl(self.impl))
        return ":".join((namespace, gpu, self.kernel, self.impl, self.dtype,
                         bucket_key(dict(self.bucket)), source))


def tasks(kernel_names: list[str], dtypes: list[str], dims: list[ModelDims]) -> list[Task]:
    """Tasks for every kernel x implementation x supported dtype x bucket of the shapes that the
    ``dims`` give; shapes falling in one bucket are tuned once, at the first of them."""
    out: dict[tuple, Task] = {}
    for name in kernel_names:
        k = kernels.get(name)
        for dtype in (d for d in dtypes if d in k.dtypes):
            for shape in (s for d in dims for s in k.tune_shapes(d)):
                shape = contract.check_shape(k, shape)
                bucket = tuple(contract.bucket_of(k, shape).items())
                for impl in k.impls_for(dtype):
                    out.setdefault((name, impl.name, dtype, bucket),
                                   Task(name, impl.name, dtype, tuple(shape.items()), bucket))
    return list(out.values())


ENUMERATE_MAX = 200_000   # spaces up to this size are listed in full; larger ones are sampled
SAMPLES = 4096            # configs drawn to estimate the valid share of a larger space


@dataclass(frozen=True)
class ValidSpace:
    """The valid configs of a task: listed (``configs``) where the space has at most
    :data:`ENUMERATE_MAX` configs, else only counted, approximately, from a seeded sample (a
    multi-stage kernel's product space, e.g. the conv module's 10^8 configs, cannot be listed)."""
    configs: tuple[dict[str, int], ...] | None
    count: int

    @property
    def exact(self) -> bool:
        return self.configs is not None


def space_size(impl: Impl) -> int:
    return math.prod(len(v) for v in impl.space.values())


@functools.lru_cache(maxsize=256)
def valid_space(task: Task, spec: GpuSpec) -> ValidSpace:
    impl = kernels.get(task.kernel).impl(task.impl)
    shape = dict(task.shape)
    size = space_size(impl)
    if size <= ENUMERATE_MAX:
        configs = (dict(zip(impl.space, values))
                   for values in itertools.product(*impl.space.values()))
        found = tuple(c for c in configs if impl.valid(c, shape, task.dtype, spec) is None)
        return ValidSpace(found, len(found))
    rng = random.Random(f"{task.label}:{spec.name}")
    hits = sum(impl.valid({k: rng.choice(v) for k, v in impl.space.items()}, shape,
                          task.dtype, spec) is None for _ in range(SAMPLES))
    return ValidSpace(None, max(1, round(size * hits / SAMPLES)) if hits else 0)


def valid_configs(task: Task, spec: GpuSpec) -> list[dict[str, int]]:
    """Every config of the task's space that its ``valid`` rule accepts on ``spec``, in the
    space's order (ValueError for a space too large to list)."""
    vs = valid_space(task, spec)
    if not vs.exact:
        raise ValueError(f"{task.label}: the space has {space_size(kernels.get(task.kernel).impl(task.impl))} "
                         "configs, too many to list")
    return [dict(c) for c in vs.configs]


def nearest(impl: Impl, anchor, accept, rng: random.Random, max_steps: int = 3):
    """The config closest to ``anchor`` (steps along the ordered values) that ``accept`` takes,
    ties broken by ``rng``; None when none lies within ``max_steps`` steps. Searches outwards
    from the anchor, so it works in spaces too large to list."""
    names = list(impl.space)

    def config(index):
        return {p: impl.space[p][i] for p, i in zip(names, index)}

    frontier = {tuple(impl.space[p].index(anchor[p]) for p in names)}
    seen = set(frontier)
    for _ in range(max_steps + 1):
        found = sorted(c for c in frontier if accept(config(c)))
        if found:
            return config(rng.choice(found))
        ring = set()
        for c in frontier:
            for i, p in enumerate(names):
                for j in (c[i] - 1, c[i] + 1):
                    n = (*c[:i], j, *c[i + 1:])
                    if 0 <= j < len(impl.space[p]) and n not in seen:
                        seen.add(n)
                        ring.add(n)
        frontier = ring
    return None


def config_key(config) -> str:
    """Canonical text of a config (claims, comparisons)."""
    return json.dumps(dict(config), sort_keys=True)


def distance(impl: Impl, a, b) -> int:
    """Steps between two configs along the ordered value lists of the space."""
    return sum(abs(values.index(a[p]) - values.index(b[p])) for p, values in impl.space.items())
