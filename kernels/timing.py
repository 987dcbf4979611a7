"""Timing GPU work honestly: device-side measurement, warm-up, medians, and inputs that do not
sit in L2.

Both timers capture the calls under test in one CUDA graph, cycling over enough input sets
that one cycle moves several times the L2 (:func:`rotation`), so inputs come from DRAM and the
host's launch overhead stays out, as it is out of a TensorRT engine or a captured encoder:

* :class:`GraphBench` — the benchmarks' timer: a replay plus a synchronise is what
  pytest-benchmark times; per-call time = median over rounds / calls per replay.
* :func:`bench_graph` — the tuner's timer: replays timed with CUDA events; returns the median
  and interquartile spread per call.

:func:`bench_events` (``triton.testing.do_bench``: events around each call, L2 cleared in
between) is kept for work whose host-side launch is cheap next to its GPU time (large ops); for
short kernels launched from Python it measures the host, not the GPU (seen on an H100: a 14 µs
LayerNorm read as 117 µs).
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
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):   # warm up on a side stream: compile, caches, allocator
            for call in self.calls:
                call()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        if est_us is None:                # one cycle, graph-timed, sizes the real graph
            probe = self._capture(1)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            probe.replay()
            start.record()
            probe.replay()
            end.record()
            end.synchronize()
            est_us = start.elapsed_time(end) * 1e3 / len(self.calls)
            del probe
        cycles = max(1, math.ceil(min_replay_us / max(est_us, 1e-3) / len(self.calls)))
        self.per_replay = cycles * len(self.calls)
        self.graph = self._capture(cycles)

    def _capture(self, cycles: int) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(cycles):
                for call in self.calls:
                    call()
        torch.cuda.synchronize()
        return graph

    def replay(self) -> None:
        self.graph.replay()
        torch.cuda.synchronize()


def bench_graph(calls: Sequence[Callable[[], object]], reps: int = 20,
                min_replay_us: float = 1000.0) -> Timing:
    """Per-call time of ``calls`` (one per input set) from event-timed graph replays."""
    gb = GraphBench(calls, min_replay_us=min_replay_us)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    per_call = []
    for _ in range(reps):
        start.record()
        gb.graph.replay()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) * 1e3 / gb.per_replay)
    q = statistics.quantiles(per_call, n=4)
    return Timing(statistics.median(per_call), q[2] - q[0], reps)


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written (GB/s)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = bench_events(lambda: dst.copy_(src), warmup_ms=50, rep_ms=300)
    return 2 * nbytes / (t.median_us * 1e-6) / 1e9
