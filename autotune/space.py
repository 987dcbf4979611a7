"""What is tuned: one task per (kernel, implementation, dtype, shape bucket), and its configs.

Everything here is read from the kernel contract (``kernels.registry()``), nothing is specific to
a kernel: shapes come from each kernel's ``tune_shapes(ModelDims)``, buckets from
:func:`kernels.contract.bucket_of`, configs from the implementation's ``space`` filtered by its
``valid`` rule for the target GPU (so an invalid config never reaches a compiler).
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import kernels
from cache.models import bucket_key
from kernels import contract, launch
from kernels.contract import Impl, ModelDims
from kernels.gpu import GpuSpec


NAMESPACE = "ct"       # study name prefix of `autotune run`
GRID_MAX = 32          # valid configs up to which every one is measured
DEFAULT_TRIALS = 16    # configs measured per TPE study


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
                for impl in k.impls:
                    out.setdefault((name, impl.name, dtype, bucket),
                                   Task(name, impl.name, dtype, tuple(shape.items()), bucket))
    return list(out.values())


def valid_configs(task: Task, spec: GpuSpec) -> list[dict[str, int]]:
    """Every config of the task's space that its ``valid`` rule accepts on ``spec``, in the
    space's order."""
    impl = kernels.get(task.kernel).impl(task.impl)
    shape = dict(task.shape)
    configs = (dict(zip(impl.space, values)) for values in itertools.product(*impl.space.values()))
    return [c for c in configs if impl.valid(c, shape, task.dtype, spec) is None]


def config_key(config) -> str:
    """Canonical text of a config (claims, comparisons)."""
    return json.dumps(dict(config), sort_keys=True)


def distance(impl: Impl, a, b) -> int:
    """Steps between two configs along the ordered value lists of the space."""
    return sum(abs(values.index(a[p]) - values.index(b[p])) for p, values in impl.space.items())
