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


@pytest.fixture
def measure(benchmark):
    """measure(calls, cost, **info): time ``calls`` (one per rotated input set); returns µs/call."""
    def run(calls, cost, **info):
        gb = timing.GraphBench(calls)
        benchmark.pedantic(gb.replay, rounds=30, warmup_rounds=3)
        us = benchmark.stats.stats.median / gb.per_replay * 1e6
        ceil = ceilings()
        gbps = cost.bytes / (us * 1e-6) / 1e9
        tflops = cost.flops / (us * 1e-6) / 1e12
        benchmark.extra_info.update(
            per_call_us=us, calls_per_replay=gb.per_replay, input_sets=len(calls),
            bytes=cost.bytes, flops=cost.flops, gbps=gbps, tflops=tflops,
            frac_copy_bw=gbps / ceil["copy_gbps"], frac_fp16_peak=tflops / ceil["fp16_tflops"],
            copy_gbps=ceil["copy_gbps"], fp16_tflops=ceil["fp16_tflops"],
            gpu=torch.cuda.get_device_name(), torch=torch.__version__, **info)
        return us
    return run
