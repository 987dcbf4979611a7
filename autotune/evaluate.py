"""What the tuner measures, and the evaluator that measures it on the GPU.

An evaluator answers two questions: which GPUs this machine has (refusing a mismatch with the
GPU asked for), and how one :class:`Candidate` performs: checked against the float64 reference
with poisoned outputs first (:func:`kernels.verify.verify`), a wrong result is never timed; then
timed with :func:`kernels.timing.bench_graph` (CUDA-graph replays timed with events after a
warm-up, inputs rotated through more than L2, median and interquartile spread).

This module imports neither torch nor optuna at load time: worker processes import it, and
choose their GPU, before CUDA is touched. The tuner names its evaluator as ``"module:factory"``
so that a test can inject a synthetic one (the hidden ``--evaluator`` option of ``autotune run``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol

from kernels.gpu import RunningGpu

DEFAULT_EVALUATOR = "autotune.evaluate:GpuEvaluator"
# Outcomes of a measured candidate; every one of them spends a trial and is never measured again.
MEASURED = ("ok", "wrong", "error", "crash", "timeout")


@dataclass(frozen=True)
class Candidate:
    """One thing to measure: a config of an implementation, or (``impl`` None) the baseline."""
    kernel: str
    impl: str | None
    dtype: str
    shape: dict[str, int]
    config: dict[str, int] | None = None
    seed: int = 0


@dataclass(frozen=True)
class Measurement:
    """``outcome``: "ok" (timed), "wrong" (failed the reference check), "error" (compile or
    launch failure), "crash" (the worker process died), "timeout" (it was killed)."""
    outcome: str
    median_us: float | None = None
    spread_us: float | None = None      # interquartile range of the repetitions
    detail: str = ""
    poisoned: bool = field(default=False, compare=False)   # CUDA context unusable afterwards


class Evaluator(Protocol):
    def devices(self, requested: str) -> list[RunningGpu]:
        """The GPUs candidates may run on, all of them the ``requested`` one (or ``"auto"``);
        raises ValueError (unknown name) or RuntimeError (another GPU) otherwise."""

    def measure(self, candidate: Candidate) -> Measurement:
        """Check, then time ``candidate``; never raises for a bad candidate."""


def load_evaluator(spec) -> Evaluator:
    """Build the evaluator named ``"module:factory"`` (a class or zero-argument function); an
    evaluator object is returned as it is (for measuring in this process only)."""
    if not isinstance(spec, str):
        return spec
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load evaluator {spec!r}: {e}") from None
    return factory()


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


class GpuEvaluator:
    """Measures on the current CUDA device; keeps the rotated input sets of the last shape."""

    def __init__(self, reps: int = 20):
        self.reps = reps
        self._inputs_key = None
        self._inputs = None

    def devices(self, requested: str) -> list[RunningGpu]:
        import torch

        from kernels import gpu

        found = [gpu.check_target(requested, i) for i in range(torch.cuda.device_count() or 1)]
        kinds = {g.spec.name for g in found}
        if len(kinds) > 1:
            raise RuntimeError(f"this machine mixes GPUs {sorted(kinds)}; tune one kind at a "
                               "time (CUDA_VISIBLE_DEVICES)")
        return found

    def measure(self, candidate: Candidate) -> Measurement:
        try:
            return self._measure(candidate)
        except Exception as e:  # noqa: BLE001 - any failure is this candidate's result
            return Measurement("error", detail=first_line(e), poisoned=not _cuda_usable())

    def _measure(self, c: Candidate) -> Measurement:
        import kernels
        from kernels import launch, timing, verify

        kernel = kernels.get(c.kernel)
        sets, outs = self._rotation(kernel, c)
        if c.impl is None:
            calls = [lambda s=s: kernel.baseline(s, c.shape, kernel.scalars) for s in sets]
        else:
            impl = kernel.impl(c.impl)
            verdict = verify.verify(kernel, impl, c.config, c.shape, c.dtype, "cuda", seed=c.seed)
            if not verdict.ok:
                return Measurement("wrong", detail=str(verdict))
            calls = [lambda s=s, o=o: launch.run(kernel, impl, c.config, {**s, **o}, c.shape)
                     for s, o in zip(sets, outs)]
        t = timing.bench_graph(calls, reps=self.reps)
        return Measurement("ok", t.median_us, t.spread_us)

    def _rotation(self, kernel, c: Candidate):
        """Input sets (and output buffers) for ``c``'s shape, enough to move 4x L2 per cycle."""
        import torch

        from kernels import launch, timing

        key = (c.kernel, c.dtype, tuple(sorted(c.shape.items())))
        if key != self._inputs_key:
            self._inputs = None   # free the previous shape's buffers first
            n = timing.rotation(kernel.cost(c.shape, c.dtype).bytes)
            gen = torch.Generator(device="cuda").manual_seed(12345)
            dt = launch.torch_dtype(c.dtype)
            sets = [kernel.make_inputs(c.shape, dt, "cuda", gen) for _ in range(n)]
            outs = [launch.empty_outputs(kernel, c.shape, c.dtype, "cuda") for _ in sets]
            self._inputs_key, self._inputs = key, (sets, outs)
        return self._inputs


def _cuda_usable() -> bool:
    """False when the CUDA context is poisoned (illegal address, launch failure ...)."""
    try:
        import torch

        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() == 2.0
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return False
