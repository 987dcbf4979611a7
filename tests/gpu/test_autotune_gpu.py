"""The tuner on a real GPU: the evaluator checks then times, a small run through worker
processes stores winners that best_config and default_config then use, a config that faults
the GPU costs only its own worker, and two workers (of one run, or of two runs) share a study
on one GPU without timing a config twice."""
import subprocess
import sys

import pytest
import triton
import triton.language as tl

import kernels
from autotune import run, space
from autotune.evaluate import Candidate, GpuEvaluator
from autotune.worker import Pool
from cache import best_config, open_store
from kernels import launch
from kernels.contract import ModelDims

pytestmark = pytest.mark.gpu
K = kernels.get("layernorm")
SHAPE = {"rows": 3000, "hidden": 256, "with_residual": 1}


@triton.jit
def _scribble(ptr):
    tl.store(ptr + (1 << 40), 1.0)     # far outside any allocation: an illegal address


class Faulting(GpuEvaluator):
    """The real evaluator, except that a config with STREAM=1 writes to an illegal address."""

    def _measure(self, c):
        if c.config and c.config.get("STREAM") == 1:
            import torch

            x = torch.zeros(1, device="cuda")
            _scribble[(1,)](x)
            torch.cuda.synchronize()
        return super()._measure(c)


def _candidate(impl, config=None):
    return Candidate("layernorm", impl, "float16", SHAPE, config, seed=1)


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_the_evaluator_checks_then_times(impl):
    ev = GpuEvaluator(reps=5)
    chosen = K.impl(impl)
    config = launch.default_config(K, chosen, SHAPE, "float16")
    m = ev.measure(_candidate(impl, config))
    assert m.outcome == "ok" and 0 < m.median_us < 1000 and m.spread_us >= 0, m
    base = ev.measure(_candidate(None))
    assert base.outcome == "ok" and base.median_us > 0
    assert ev.devices("auto")


def test_a_faulting_config_costs_only_its_worker():
    good = {"ROWS": 4, "num_warps": 4, "STREAM": 0}
    with Pool("tests.gpu.test_autotune_gpu:Faulting", [None], timeout_s=120) as pool:
        results = []
        for config in (good, {**good, "STREAM": 1}, good):
            while not pool.idle():
                pool.wait(0.5)
            pool.submit(pool.idle()[0], _candidate("triton", config), len(results))
            while True:
                done = pool.wait(0.5)
                if done:
                    results.append(done[0][1])
                    break
    assert [m.outcome for m in results] == ["ok", "error", "ok"], results
    assert results[1].poisoned and "illegal" in results[1].detail.lower()
    assert pool.replaced == 1


def test_a_small_run_stores_winners_the_kernels_then_use(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    tasks = [t for t in space.tasks(["layernorm"], ["float16"],
                                    [ModelDims(batch=6, seq_len=500, d_model=256)])
             if dict(t.shape)["with_residual"] == 1]
    report = run.tune(tasks, "auto", open_store(url),
                      run.Settings(budget=space.Budget(4), progress=False))
    assert len(report.tuned) == 2 and not report.failed
    for w in report.tuned:
        assert w.trials == 4 and w.baseline_us > 0 and w.speedup > 0
    shape = {"rows": 2900, "hidden": 256, "with_residual": 1}     # same bucket (4096)
    fastest = min(report.tuned, key=lambda w: w.median_us)
    assert best_config("auto", "layernorm", "float16", shape, url=url) == fastest
    monkeypatch.setenv("CONFORMER_TRT_DB", url)
    launch._tuned_config.cache_clear()
    try:
        for w in report.tuned:
            assert launch.default_config(K, K.impl(w.impl), shape, "float16") == w.config
    finally:
        launch._tuned_config.cache_clear()


def _claims_are_distinct(url, study, count):
    claims = open_store(url).claims(study)
    keys = [c.config for c in claims]
    assert len(keys) == len(set(keys)) == count, keys
    assert all(c.outcome is not None for c in claims)     # every claimed config was measured


def _tasks(impl):
    return [t for t in space.tasks(["layernorm"], ["float16"],
                                   [ModelDims(batch=6, seq_len=500, d_model=256)])
            if t.impl == impl]


def test_two_workers_of_one_run_share_a_study_on_one_gpu(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    task = next(t for t in _tasks("cuda") if dict(t.shape)["with_residual"] == 1)
    report = run.tune([task], "auto", open_store(url),
                      run.Settings(budget=space.Budget(12), jobs=2, progress=False))
    assert report.measured == 12 and len(report.tuned) == 1 and not report.failed
    _claims_are_distinct(url, task.study_name(report.gpu), 12)


def test_two_runs_share_their_studies_on_one_gpu(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    cmd = [sys.executable, "-m", "autotune", "run", "--gpu", "auto", "--kernels", "layernorm",
           "--impls", "triton", "--batch", "6", "--seq-lens", "500", "--trials", "10",
           "--no-progress", "--db", url]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    gpu = launch._gpu_spec().name
    for task in _tasks("triton"):
        _claims_are_distinct(url, task.study_name(gpu), 10)
        assert best_config(gpu, "layernorm", "float16", dict(task.shape), impl="triton",
                           url=url) is not None
