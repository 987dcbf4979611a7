"""pytest-benchmark on the GPU: each benchmark captures its calls in a CUDA graph (see
kernels.timing.GraphBench) and records the per-call median with the work it did, so the report
(scripts/bench_report.py) can state GB/s, TFLOP/s and fractions of the measured ceilings."""
import functools
from pathlib import Path

import pytest
import torch

from kernels import timing


HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.bench)


@functools.lru_cache(maxsize=1)
def ceilings() -> dict[str, float]:
    """Measured once per session: copy bandwidth and dense fp16 matmul rate on random data."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    t = timing.bench_events(lambda: a @ b, warmup_ms=100, rep_ms=500)
    return {"copy_gbps": timing.copy_bandwidth_gbps(),
            "fp16_tflops": 2 * 8192**3 / (t.median_us * 1e-6) / 1e12}


def _record(benchmark, us: float, cost, **info) -> float:
    ceil = ceilings()
    gbps = cost.bytes / (us * 1e-6) / 1e9
    tflops = cost.flops / (us * 1e-6) / 1e12
    benchmark.extra_info.update(
        per_call_us=us, bytes=cost.bytes, flops=cost.flops, gbps=gbps, tflops=tflops,
        frac_copy_bw=gbps / ceil["copy_gbps"], frac_fp16_peak=tflops / ceil["fp16_tflops"],
        copy_gbps=ceil["copy_gbps"], fp16_tflops=ceil["fp16_tflops"],
        gpu=torch.cuda.get_device_name(), torch=torch.__version__, **info)
    return us


@pytest.fixture
def measure(benchmark):
    """measure(calls, cost, **info): time ``calls`` (one per rotated input set) in a CUDA graph;
    returns µs/call."""
    def run(calls, cost, **info):
        gb = timing.GraphBench(calls)
        benchmark.pedantic(gb.replay, rounds=30, warmup_rounds=3)
        us = benchmark.stats.stats.median / gb.per_replay * 1e6
        return _record(benchmark, us, cost, calls_per_replay=gb.per_replay,
                       input_sets=len(calls), timing="cuda graph", **info)
    return run


@pytest.fixture
def measure_wall(benchmark):
    """measure_wall(fn, cost, rounds, **info): ``fn`` launched from the host as a user would run
    it (no graph), synchronised after each call, so launch overhead counts; returns µs/call.
    For work that cannot be captured in a graph (host reads of device values) or whose
    un-captured speed is the point (eager PyTorch baselines)."""
    def run(fn, cost, rounds=20, **info):
        def call():
            fn()
            torch.cuda.synchronize()
        benchmark.pedantic(call, rounds=rounds, warmup_rounds=3)
        return _record(benchmark, benchmark.stats.stats.median * 1e6, cost,
                       timing="host, synchronised", **info)
    return run
