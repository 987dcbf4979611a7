"""Crash isolation, and the synthetic evaluators every tuner test injects.

The evaluators stand in for the GPU: a candidate's "time" is a smooth function of where its
parameter values sit in their ordered lists, so a test knows the optimum without measuring
anything. They live here, in a module that imports nothing heavy, because worker processes
import them by name (``"tests.test_autotune_worker:Landscape"``).
"""
import os
import signal
import time
import zlib

import pytest

from autotune.evaluate import Candidate, Measurement
from autotune.worker import Pool, WorkerError
from kernels.gpu import KNOWN_GPUS, RunningGpu

H100 = RunningGpu("NVIDIA H100 80GB HBM3", (9, 0), 132, "570.1", "12.8", KNOWN_GPUS["h100"])
LOG = "AUTOTUNE_TEST_LOG"   # file the evaluators append each measured config to
SPACES = {   # kernel layernorm's spaces, copied so that this module stays light
    "triton": {"ROWS": (1, 2, 4, 8, 16, 32), "num_warps": (1, 2, 4, 8, 16), "STREAM": (0, 1)},
    "cuda": {"VEC": (1, 2, 4, 8), "WARPS_PER_ROW": (1, 2, 4, 8, 16, 32),
             "ROWS_PER_BLOCK": (1, 2, 4, 8, 16), "STREAM": (0, 1)},
}


def cost(impl: str, config: dict) -> float:
    """The synthetic time: 10 us at the (per-parameter) optimum, growing quadratically."""
    t = 10.0
    for p, v in config.items():
        values = SPACES[impl][p]
        pos = values.index(v) / (len(values) - 1)
        t += 8.0 * (pos - zlib.crc32(p.encode()) % 100 / 100) ** 2
    return t


class Landscape:
    """An H100 whose candidates take :func:`cost` us; the baseline takes 40 us."""
    delay_s = 0.0

    def devices(self, requested):
        if requested.strip().lower() not in ("h100", "auto"):
            raise RuntimeError(f"--gpu {requested} asked for, but this machine's GPU is an H100")
        return [H100]

    def measure(self, c: Candidate) -> Measurement:
        if c.config is None:
            return Measurement("ok", 40.0, 0.5)
        time.sleep(self.delay_s)
        m = self.judge(c)
        if os.environ.get(LOG):
            with open(os.environ[LOG], "a") as f:
                f.write(f"{os.getpid()} {c.impl} {c.dtype} {sorted(c.shape.items())} "
                        f"{sorted(c.config.items())} {m.outcome}\n")
        return m

    def judge(self, c: Candidate) -> Measurement:
        return Measurement("ok", cost(c.impl, c.config), 0.1)


class AnyKernel(Landscape):
    """The same synthetic landscape over any kernel's own space (SPACES holds LayerNorm's)."""

    def judge(self, c: Candidate) -> Measurement:
        import kernels

        space = kernels.get(c.kernel).impl(c.impl).space
        t = 10.0
        for p, v in c.config.items():
            pos = space[p].index(v) / max(1, len(space[p]) - 1)
            t += 8.0 * (pos - zlib.crc32(p.encode()) % 100 / 100) ** 2
        return Measurement("ok", t, 0.1)


class Slow(Landscape):
    delay_s = 0.05


class Faulty(Landscape):
    """num_warps=16 does not compile; the landscape's best triton config computes wrong."""

    def judge(self, c):
        if c.config.get("num_warps") == 16:
            return Measurement("error", detail="CompilationError: out of registers")
        if c.config == {"ROWS": 1, "num_warps": 8, "STREAM": 1}:
            return Measurement("wrong", 1.0, detail="WRONG (y=0.3; tolerance 0.01)")
        return super().judge(c)


class Crashy(Landscape):
    """STREAM=1 with num_warps=4 kills the process (SIGSEGV); with num_warps=8 it hangs; the
    config with num_warps=16 poisons the context (the worker must be replaced)."""

    def judge(self, c):
        if c.config.get("STREAM") == 1 and c.config.get("num_warps") == 4:
            os.kill(os.getpid(), signal.SIGSEGV)
        if c.config.get("STREAM") == 1 and c.config.get("num_warps") == 8:
            time.sleep(600)
        if c.config.get("STREAM") == 1 and c.config.get("num_warps") == 16:
            return Measurement("error", detail="an illegal memory access", poisoned=True)
        return super().judge(c)


class Broken:
    def __init__(self):
        raise ImportError("this evaluator cannot start")


def _candidate(**config):
    return Candidate("layernorm", "triton", "float16",
                     {"rows": 64, "hidden": 8192, "with_residual": 0},
                     {"ROWS": 1, "num_warps": 4, "STREAM": 0, **config})


def _one(pool, candidate, deadline_s=60.0):
    """Measure one candidate on the pool's worker, waiting for it to be ready first."""
    end = time.monotonic() + deadline_s
    while not pool.idle():
        assert time.monotonic() < end, "the worker never became ready"
        pool.wait(0.2)
    pool.submit(pool.idle()[0], candidate, "tag")
    while time.monotonic() < end:
        done = pool.wait(0.2)
        if done:
            return done[0][1]
    raise AssertionError("no result")


def test_a_crash_or_a_hang_costs_one_config_and_the_worker_is_replaced():
    with Pool("tests.test_autotune_worker:Crashy", [None], timeout_s=1.5) as pool:
        assert _one(pool, _candidate()).outcome == "ok"
        crash = _one(pool, _candidate(STREAM=1))
        assert crash.outcome == "crash" and "SIGSEGV" in crash.detail
        assert _one(pool, _candidate()).outcome == "ok"         # a fresh worker took over
        hang = _one(pool, _candidate(STREAM=1, num_warps=8))
        assert hang.outcome == "timeout" and "killed" in hang.detail
        poisoned = _one(pool, _candidate(STREAM=1, num_warps=16))
        assert poisoned.outcome == "error" and poisoned.poisoned
        assert _one(pool, _candidate(ROWS=2)).outcome == "ok"
        assert pool.replaced == 3


def test_an_evaluator_that_cannot_start_is_an_error_not_a_crash():
    with pytest.raises(WorkerError, match="do not start"):
        with Pool("tests.test_autotune_worker:Broken", [None]) as pool:
            end = time.monotonic() + 60
            while time.monotonic() < end:
                pool.wait(0.2)

