"""The tuner's search on CPU, with a synthetic evaluator injected (no GPU, no measured time):
finding the optimum within the budget, the grid for small spaces, invalid configs never
evaluated, failures recorded once, persistence and warm runs, a changed source, resuming after a
kill, two processes sharing the studies of one SQLite file, and one enqueued trial handed to two
runs."""
import io
import itertools
import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

import kernels
from autotune import run, search, space
from autotune.search import outcome
from autotune.evaluate import Measurement
from autotune.space import Budget
from cache import open_store
from kernels import launch
from kernels.contract import ModelDims
from tests.test_autotune_worker import H100, LOG, SPACES, cost

K = kernels.get("layernorm")


def evaluator(name):
    return f"tests.test_autotune_worker:{name}"


def settings(name="Landscape", **kw):
    return run.Settings(**{"evaluator": evaluator(name), "isolate": False, "progress": False,
                           **kw})


def tasks(impls=("triton", "cuda"), hidden=256, seq_lens=(100,), residual=(0, 1)):
    dims = [ModelDims(batch=4, seq_len=s, d_model=hidden) for s in seq_lens]
    return [t for t in space.tasks(["layernorm"], ["float16"], dims)
            if t.impl in impls and dict(t.shape)["with_residual"] in residual]


def measured_log(path):
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines()] \
        if path.exists() else []


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv(LOG, str(tmp_path / "measured.log"))
    return open_store(f"sqlite:///{tmp_path / 'tune.db'}")


def test_the_synthetic_spaces_are_layernorms():
    assert SPACES == {impl.name: dict(impl.space) for impl in K.impls}


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_the_gp_finds_the_optimum_with_a_quarter_of_the_space(db, impl):
    task, = tasks((impl,), residual=(1,))
    valid = space.valid_configs(task, H100.spec)
    optimum = min(cost(impl, c) for c in valid)
    out = io.StringIO()
    report = run.tune([task], "h100", db, settings(budget=Budget(0.25)), out=out)
    assert "sampler GP" in out.getvalue()
    assert report.measured == len(valid) // 4
    w, = report.tuned
    assert w.median_us <= 1.03 * optimum
    assert w.trials == len(valid) // 4 and w.baseline_us == 40.0 and w.speedup == 40.0 / w.median_us


def test_a_small_space_is_measured_in_full(db, tmp_path):
    task, = tasks(("triton",), hidden=8192, residual=(0,))
    valid = space.valid_configs(task, H100.spec)
    assert 1 < len(valid) <= space.GRID_MAX
    out = io.StringIO()
    report = run.tune([task], "h100", db, settings(budget=Budget(4)), out=out)
    assert f"sampler grid: all {len(valid)} valid configs" in out.getvalue()
    assert report.measured == len(valid)
    assert report.tuned[0].median_us == min(cost("triton", c) for c in valid)


def test_a_space_too_large_to_list_is_sampled_and_searched_outwards(db):
    dims = [ModelDims(batch=4, seq_len=100)]
    task, = [t for t in space.tasks(["conv_module"], ["float16"], dims)
             if t.impl == "cuda_dw" and dict(t.shape)["causal"] == 0]
    impl = kernels.get("conv_module").impl("cuda_dw")
    assert space.space_size(impl) > space.ENUMERATE_MAX
    vs = space.valid_space(task, H100.spec)
    assert not vs.exact and space.GRID_MAX < vs.count < space.space_size(impl)
    with pytest.raises(ValueError, match="too many to list"):
        space.valid_configs(task, H100.spec)
    shape = dict(task.shape)
    invalid = {**impl.heuristic(shape, "float16", H100.spec), "BM1": 256, "BN1": 256,
               "W1": 4}                                          # pw1's accumulators spill
    assert impl.valid(invalid, shape, "float16", H100.spec) is not None
    near = space.nearest(impl, invalid, lambda c: impl.valid(c, shape, "float16", H100.spec)
                         is None, random.Random(0))
    assert near is not None and impl.valid(near, shape, "float16", H100.spec) is None
    out = io.StringIO()
    report = run.tune([task], "h100", db, settings("AnyKernel", budget=Budget(12)), out=out)
    assert "sampler TPE" in out.getvalue()
    assert "(estimated from a sample) valid configs" in out.getvalue()
    w, = report.tuned
    assert report.measured == 12 and w.trials == 12
    assert impl.valid(w.config, shape, "float16", H100.spec) is None


def test_invalid_configs_are_pruned_and_never_evaluated(db, tmp_path):
    task, = tasks(("cuda",), residual=(1,))
    run.tune([task], "h100", db, settings(budget=Budget(24)))
    valid = {space.config_key(c) for c in space.valid_configs(task, H100.spec)}
    study = optuna.load_study(study_name=task.study_name("h100"), storage=db.optuna_storage())
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(outcome(t) == "invalid" for t in pruned)
    assert all(space.config_key(search.trial_config(t)) not in valid for t in pruned)
    evaluated = [t for t in trials if outcome(t) == "ok"]
    assert len(evaluated) == 24 and all(space.config_key(search.trial_config(t)) in valid for t in evaluated)
    assert len(measured_log(tmp_path / "measured.log")) == 24


def test_a_withdrawn_claim_is_asked_again(db, monkeypatch):
    """A claim withdrawn because another run claimed past the budget at the same moment
    (cache.Store.claim with a limit) is told FAIL "withdrawn", and the same config is claimed
    again next: nothing is skipped and the budget is measured in full."""
    task, = tasks(("cuda",), residual=(1,))
    real, calls = db.claim, []

    def racing(study, config, trial, owner, limit=None):
        calls.append(config)
        return False if len(calls) == 1 else real(study, config, trial, owner, limit)

    monkeypatch.setattr(db, "claim", racing)
    report = run.tune([task], "h100", db, settings(budget=Budget(6)))
    assert report.measured == 6 and calls[1] == calls[0]
    trials = optuna.load_study(study_name=task.study_name("h100"),
                               storage=db.optuna_storage()).get_trials()
    assert [outcome(t) for t in trials].count("withdrawn") == 1
    assert calls[0] in {space.config_key(search.trial_config(t)) for t in trials
                        if outcome(t) == "ok"}


def test_failures_are_recorded_once_never_retried_and_never_win(db, tmp_path):
    task, = tasks(("triton",), hidden=8192, residual=(0,))
    valid = space.valid_configs(task, H100.spec)
    report = run.tune([task], "h100", db, settings("Faulty"))
    wrong = {"ROWS": 1, "num_warps": 8, "STREAM": 1}
    assert wrong in valid
    w, = report.tuned
    assert w.config != wrong and w.config["num_warps"] != 16
    assert w.median_us == min(cost("triton", c) for c in valid
                              if c != wrong and c["num_warps"] != 16)
    study = optuna.load_study(study_name=task.study_name("h100"), storage=db.optuna_storage())
    outcomes = Counter(outcome(t) for t in study.get_trials())
    assert outcomes["wrong"] == 1 and outcomes["error"] == sum(c["num_warps"] == 16 for c in valid)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.get_trials()
               if outcome(t) in ("wrong", "error"))
    # a later run over the same study measures nothing again, failures included
    db_again = open_store(db.url)
    stored = db_again.winner("h100", "layernorm", "triton", "float16", dict(task.bucket))
    assert stored == w
    report = run.tune([task], "h100", db_again, settings("Faulty"))
    assert report.measured == 0 and report.cached == [w]
    log = measured_log(tmp_path / "measured.log")
    assert len(log) == len(set(log)) == len(valid)


def test_a_warm_cache_measures_nothing_and_more_trials_resume_the_study(db, tmp_path):
    ts = tasks()
    first = run.tune(ts, "h100", db, settings(budget=Budget(6)))
    assert len(first.tuned) == 4 and first.measured == 24
    again = run.tune(ts, "h100", open_store(db.url), settings(budget=Budget(6)))
    assert again.measured == 0 and len(again.cached) == 4 and not again.tuned
    more = run.tune(ts, "h100", db, settings(budget=Budget(9)))
    assert more.measured == 12 and len(more.tuned) == 4
    assert all(w.trials == 9 for w in more.tuned)
    log = measured_log(tmp_path / "measured.log")
    assert len(log) == len(set(log)) == 36


def test_a_changed_kernel_source_starts_a_new_study(db, tmp_path, monkeypatch):
    ts = tasks(("triton",), residual=(0,))
    run.tune(ts, "h100", db, settings(budget=Budget(5)))
    old_name = ts[0].study_name("h100")
    real = launch.source_hash
    monkeypatch.setattr(launch, "source_hash", lambda impl: "0123456789abcdef"
                        if impl.name == "triton" else real(impl))
    assert ts[0].study_name("h100") != old_name
    assert db.winners("h100") == []               # the stored winner is stale now
    report = run.tune(ts, "h100", db, settings(budget=Budget(5)))
    assert report.measured == 5 and report.tuned[0].source_hash == "0123456789abcdef"


def test_shapes_of_one_bucket_are_tuned_once():
    ts = tasks(seq_lens=(100, 120, 200))      # rows 400 and 480 share the bucket 512
    buckets = Counter((t.impl, t.bucket) for t in ts)
    assert len(ts) == 8 and set(buckets.values()) == {1}
    assert {dict(t.bucket)["rows"] for t in ts} == {512, 1024}
    assert dict(ts[0].shape)["rows"] == 400   # measured at the first requested shape


def _tune(url, log, start=None):
    """A tuner process (forked: the test process has no CUDA context to inherit)."""
    os.environ[LOG] = log
    if start is not None:
        start.wait(30)
    run.tune(tasks(), "h100", open_store(url), settings("Slow", budget=Budget(4)))


def test_two_processes_share_the_studies_without_measuring_a_config_twice(tmp_path):
    two_processes_share(f"sqlite:///{tmp_path / 'shared.db'}", str(tmp_path / "measured.log"))


def two_processes_share(url: str, log: str) -> None:
    """Two forked tuners on one database: every study's budget is met, no config twice."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_tune, args=(url, log, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = Path(log).read_text().splitlines()
    configs = [line.split(" ", 1)[1] for line in lines]
    assert len(configs) == len(set(configs))                 # never twice
    assert len({line.split()[0] for line in lines}) == 2     # both processes measured
    assert 4 * 4 <= len(configs) <= 4 * 5                    # 4 per study, +1 if both raced
    assert len(open_store(url).winners("h100")) == 4


def test_a_killed_run_resumes_and_reuses_its_completed_trials(tmp_path):
    url, log = f"sqlite:///{tmp_path / 'tune.db'}", tmp_path / "measured.log"
    proc = multiprocessing.get_context("fork").Process(target=_tune, args=(url, str(log)))
    proc.start()
    deadline = time.monotonic() + 60
    while len(measured_log(log)) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    before = measured_log(log)
    assert 6 <= len(before) < 16
    _tune(url, str(log))
    after = measured_log(log)[len(before):]
    # at most the config in flight when the run was killed is measured again
    assert len(set(before) & set(after)) <= 1
    assert 16 <= len(set(before) | set(after)) <= 17
    store = open_store(url)
    assert len(store.winners("h100")) == 4
    for t in tasks():     # the killed run's claim was released: nothing is left "running"
        assert all(c.outcome is not None for c in store.claims(t.study_name("h100")))


def test_the_valid_space_comes_from_the_contract():
    task, = tasks(("cuda",), residual=(1,))
    impl = K.impl("cuda")
    every = [dict(zip(impl.space, v)) for v in itertools.product(*impl.space.values())]
    valid = space.valid_configs(task, H100.spec)
    assert valid == [c for c in every
                     if impl.valid(c, dict(task.shape), "float16", H100.spec) is None]
    assert 0 < len(valid) < len(every)


def _two_runs_on_one_study(db):
    """Two Searches of one study, as two tuner processes would hold them (owners apart)."""
    task, = tasks(("cuda",), residual=(1,))
    a = search.Search(task, db, "h100", H100.spec, Budget(6))
    b = search.Search(task, db, "h100", H100.spec, Budget(6))
    b.owner = f"{search.HOST}:another-run"
    return a, b


def test_an_enqueued_trial_handed_to_two_runs_is_measured_by_the_one_that_claims_it(db, monkeypatch):
    """optuna pops an enqueued trial by reading, then updating its state, which SQLite cannot
    lock: two runs can be handed the same trial (optuna/optuna#1014). The run whose claim fails
    leaves the trial to the other one, whose measurement is then recorded on it."""
    a, b = _two_runs_on_one_study(db)
    pa = a.next()                               # the enqueued heuristic
    real_ask = b.study.ask
    handed = iter([optuna.trial.Trial(b.study, pa.trial._trial_id)])
    monkeypatch.setattr(b.study, "ask", lambda *args, **kw: next(handed, None) or real_ask(*args, **kw))
    pb = b.next()
    assert pb is not None and pb.trial.number != pa.trial.number and pb.key != pa.key
    a.report(pa, Measurement("ok", 3.0, 0.1))
    b.report(pb, Measurement("ok", 4.0, 0.1))
    done = {t.number: t for t in a.study.get_trials(deepcopy=False)}
    assert done[pa.trial.number].state == optuna.trial.TrialState.COMPLETE
    assert done[pa.trial.number].value == 3.0 and a.best()[1] == 3.0


def test_a_measurement_whose_trial_another_run_ended_is_kept_in_a_new_trial(db):
    """If the other run handed the same trial ends it first (withdrawn past the budget), the
    measurement of the run that claimed its config is not lost: it is added as a trial."""
    a, b = _two_runs_on_one_study(db)
    pa = a.next()
    b._finish(optuna.trial.Trial(b.study, pa.trial._trial_id), optuna.trial.TrialState.FAIL,
              "withdrawn", "claimed at the same time as another run's claim past the budget")
    a.report(pa, Measurement("ok", 2.5, 0.2))
    ok = [t for t in a.study.get_trials(deepcopy=False) if outcome(t) == "ok"]
    assert [(t.value, search.trial_config(t)) for t in ok] == [(2.5, pa.config)]
    assert a.best() == (pa.config, 2.5, 0.2) and a.measured() == 1
