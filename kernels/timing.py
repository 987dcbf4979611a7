"""Timing GPU work honestly: device-side measurement, warm-up, medians, and inputs that do not
sit in L2.

Two tools, for two jobs:

* :func:`bench_events` — the tuner's timer. ``triton.testing.do_bench`` with every repetition
  kept: it warms up, clears L2 before each repetition (so inputs come from DRAM) and times with
  CUDA events. Returns the median and the interquartile spread.
* :class:`GraphBench` — the benchmarks' timer. The calls under test, cycling over enough input
  sets to exceed L2 several times, are captured in one CUDA graph; a replay plus a synchronise is
  what pytest-benchmark times, and the per-call time is the median over rounds divided by the
  calls per replay. Graph replay keeps CPU launch overhead out, as it is out in a TensorRT engine.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_us: float
    spread_us: float   # interquartile range
    reps: int


def bench_events(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    from triton.testing import do_bench

    times = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Timing(statistics.median(times) * 1e3, (q[2] - q[0]) * 1e3, len(times))


def l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 50 << 20))


def rotation(bytes_per_call: int, factor: int = 4, max_sets: int = 64,
             max_bytes: int = 8 << 30) -> int:
    """How many input sets to cycle through so that one cycle moves ``factor`` × L2."""
    want = math.ceil(factor * l2_bytes() / max(bytes_per_call, 1))
    return max(1, min(want, max_sets, max(1, max_bytes // max(bytes_per_call, 1))))


class GraphBench:
    """Capture ``calls`` (one per input set), repeated to fill ``min_replay_us``, in a CUDA graph."""

    def __init__(self, calls: Sequence[Callable[[], object]], est_us: float | None = None,
                 min_replay_us: float = 3000.0):
        self.calls = list(calls)
        for call in self.calls:       # warm up: compile, autotune caches, allocator
            call()
        torch.cuda.synchronize()
        if est_us is None:
            est_us = bench_events(self.calls[0], warmup_ms=5, rep_ms=20).median_us
        cycles = max(1, math.ceil(min_replay_us / max(est_us, 1e-3) / len(self.calls)))
        self.per_replay = cycles * len(self.calls)
        self.graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for call in self.calls:   # warm up once more on the capture stream
                call()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(self.graph):
            for _ in range(cycles):
                for call in self.calls:
                    call()
        torch.cuda.synchronize()

    def replay(self) -> None:
        self.graph.replay()
        torch.cuda.synchronize()


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written (GB/s)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = bench_events(lambda: dst.copy_(src), warmup_ms=50, rep_ms=300)
    return 2 * nbytes / (t.median_us * 1e-6) / 1e9
