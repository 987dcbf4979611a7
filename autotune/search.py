"""One optuna study: the search over one task's config space.

The study lives in the winners database (optuna's RDBStorage on the same URL), named by
:meth:`Task.study_name`, so an interrupted run resumes it and several processes (GPUs of one
host, or hosts sharing one PostgreSQL) share it. Each proposal is made with optuna's ask/tell
interface:

* sampler: a grid (every valid config, enqueued) when the valid space has at most
  :data:`GRID_MAX` configs; beyond that, where the valid space can be listed (few parameters),
  optuna's seeded Gaussian-process sampler (its acquisition accounts for the trials that other
  workers are running), else (a multi-stage kernel's product space) seeded multivariate TPE with
  the constant liar. The implementation's heuristic config is enqueued as the first trial; it is
  the GP's only startup trial, so the GP chooses every later config itself rather than spending
  a quarter of a small budget on random ones;
* a proposal the contract's ``valid`` rule refuses is told PRUNED (TPE ranks pruned trials below
  every completed one, so it learns where the invalid region is; the GP ignores them) and never
  compiled;
* a config already measured or being measured (by anyone) is not measured again: the measurement
  is claimed in the database first (``ct_claims``, an atomic insert), and a failed claim is told
  FAIL as a duplicate. Failures (compile error, wrong result, crash, timeout) are FAIL trials
  with their reason, and, being claimed, are never retried;
* a refused proposal is redirected, so that it still leads to a new measurement: an invalid one
  to the nearest valid unclaimed config (in steps along each parameter's ordered values), a
  duplicate (the model converging on what it has seen) to the nearest unclaimed neighbour of the
  best config so far: a local search step around the incumbent. Refused proposals are not
  trials of the budget, which counts claims; a claim that would pass the budget (two runs
  sharing a study, each taking what it saw as the last trial) is withdrawn again
  (``Store.claim``'s limit), so a shared study measures its trials, not one more;
* parameters are ordinal to the sampler: each is suggested as the index into its ordered
  values, so that its model sees that 4 warps lie between 2 and 8 (the config itself is kept in
  the trial's user attribute "config").

Replayed over the two H200 grids of the LayerNorm spaces (``scripts/tuner_quality.py
--replay``, 100 seeds, a quarter of the valid configs), the GP's winner is within 3 % of the
grid's best in 100 of 100 seeds for the Triton space (2 of its 52 configs are) and for the
CUDA space (120 configs); multivariate TPE managed 83 and 79 of 100 for the Triton space.

A claim whose owner process is dead (same host: its pid is gone; another host: older than
``stale_after``) is released and its trial told FAIL, so nothing waits for it and its config is
measured again by whoever gets there first. Two runs can be handed the same enqueued trial (on
SQLite optuna cannot lock the row it pops): the one whose claim fails leaves it to the other,
and a measurement whose trial the other run ended first is added to the study as a new trial.
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
import time
import warnings
import zlib
from dataclasses import dataclass
from datetime import datetime

import optuna
from optuna.trial import TrialState

import kernels
from cache import Store
from cache.db import translated
from kernels.gpu import GpuSpec

from .space import GRID_MAX, NAMESPACE, Budget, Task, config_key, distance, nearest, valid_space

HOST = socket.gethostname()

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@contextlib.contextmanager
def _one_torch_thread():
    """The GP's torch work on one thread: a model of tens of trials gains nothing from more
    (optuna limits its fit likewise), and once torch has started its OpenMP thread pool, a
    forked child that uses torch hangs (two tuners forked from one process)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class Proposal:
    trial: optuna.Trial
    config: dict[str, int]
    key: str
    started: float


def owner_id() -> str:
    return f"{HOST}:{os.getpid()}"


def _owner_gone(owner: str, age_s: float, stale_after: float) -> bool:
    if age_s > stale_after:
        return True
    host, _, pid = owner.rpartition(":")
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


class Search:
    """The study of ``task`` on GPU ``gpu`` (its ``spec`` decides which configs are valid)."""

    def __init__(self, task: Task, store: Store, gpu: str, spec: GpuSpec, budget: Budget,
                 seed: int = 0, namespace: str = NAMESPACE, sampler: str = "auto",
                 stale_after: float = 600.0):
        self.task, self.store, self.budget = task, store, budget
        self.kernel = kernels.get(task.kernel)
        self.impl = self.kernel.impl(task.impl)
        self.shape = dict(task.shape)
        self.spec = spec
        self.space = valid_space(task, spec)
        self.valid = self.space.configs     # None: too many to list (only counted)
        self.n_valid = self.space.count
        if not self.n_valid:
            raise ValueError(f"{task.label}: no config of the space is valid on {gpu}")
        if sampler == "grid" and self.valid is None:
            raise ValueError(f"{task.label}: about {self.n_valid} valid configs are too many "
                             "for a grid")
        self.mode = sampler if sampler != "auto" else (
            "tpe" if self.valid is None else "grid" if self.n_valid <= GRID_MAX else "gp")
        self.trials = self.n_valid if self.mode == "grid" else budget.trials_for(self.n_valid)
        self.name = task.study_name(gpu, namespace)
        self.seed = (seed + zlib.crc32(self.name.encode())) % 2**31
        self.owner = owner_id()
        self.stale_after = stale_after
        with translated(store.url):
            self.study = optuna.create_study(
                study_name=self.name, storage=store.optuna_storage(), direction="minimize",
                sampler=self._sampler(), load_if_exists=True)
            if not self.study.trials:
                self._seed_queue()
            self._reap_orphans()

    def describe(self) -> str:
        if self.mode == "grid":
            how = f"grid: all {len(self.valid)} valid configs"
        else:
            of = (f"{self.n_valid}" if self.space.exact else
                  f"about {self.n_valid} (estimated from a sample)")
            how = (f"{'GP' if self.mode == 'gp' else 'TPE'} (seed {self.seed}): "
                   f"{self.trials} of {of} valid configs")
        return f"{self.task.label}: sampler {how}"

    def _sampler(self) -> optuna.samplers.BaseSampler:
        if self.mode == "grid":   # the queue holds every valid config; nothing is sampled
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.mode == "gp":     # the enqueued heuristic is its one startup trial
            return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=1)
        return optuna.samplers.TPESampler(
            seed=self.seed, multivariate=True, constant_liar=True,
            n_startup_trials=max(3, min(10, self.trials // 4)))

    def _seed_queue(self) -> None:
        if self.mode == "grid":
            first = self.valid
        else:
            heuristic = dict(self.impl.heuristic(self.shape, self.task.dtype, self.spec))
            first = [heuristic] if self.impl.valid(heuristic, self.shape, self.task.dtype,
                                                   self.spec) is None else []
        for config in first:
            self.study.enqueue_trial(self._encode(config), skip_if_exists=True)

    # ---- proposing and reporting -------------------------------------------------------------

    def next(self) -> Proposal | None:
        """The next config to measure, claimed; None when there is nothing to measure now (the
        budget is spent or promised to running measurements, or every valid config is)."""
        with translated(self.store.url):
            while True:
                claims = self._claims()
                if self._spent(claims) or len(claims) >= self.n_valid:
                    return None
                with _one_torch_thread() if self.mode == "gp" else contextlib.nullcontext():
                    trial = self.study.ask()     # the sampler runs at the first suggest
                    config = {p: v[trial.suggest_int(p, 0, len(v) - 1)]
                              for p, v in self.impl.space.items()}
                trial.set_user_attr("config", config)
                key = config_key(config)
                reason = self.impl.valid(config, self.shape, self.task.dtype, self.spec)
                if reason is None and self.store.claim(self.name, key, trial.number, self.owner,
                                                       limit=self.trials):
                    return Proposal(trial, config, key, time.monotonic())
                if reason is not None:
                    self._finish(trial, TrialState.PRUNED, "invalid", reason)
                    self._redirect(config, {c.config for c in claims} | {key}, trial.number)
                    continue
                claims = self._claims()
                if any(c.trial == trial.number for c in claims):
                    continue    # another run was handed this enqueued trial too (_finish)
                taken = {c.config for c in claims}
                if self._spent(claims):     # another run took the last trial of the budget
                    self._finish(trial, TrialState.FAIL, "budget", "the budget is claimed")
                    return None
                if key in taken:
                    self._finish(trial, TrialState.FAIL, "duplicate", "measured or claimed")
                    best = best_of(self.study)
                    self._redirect(best[0] if best else config, taken | {key}, trial.number)
                else:   # withdrawn: claimed together with another run's last free trial; again
                    self._finish(trial, TrialState.FAIL, "withdrawn", "claimed at the same time "
                                 "as another run's claim past the budget")
                    self._redirect(config, taken, trial.number)

    def report(self, proposal: Proposal, m) -> None:
        """Record a measurement (an :class:`autotune.evaluate.Measurement`) of ``proposal``."""
        seconds = time.monotonic() - proposal.started
        with translated(self.store.url):
            state = TrialState.COMPLETE if m.outcome == "ok" else TrialState.FAIL
            value = m.median_us if m.outcome == "ok" else None
            spread = m.spread_us if m.outcome == "ok" else None
            if not self._finish(proposal.trial, state, m.outcome, m.detail, value, spread):
                # another run handed the same trial ended it unmeasured: keep the measurement
                self.study.add_trial(optuna.trial.create_trial(
                    params=proposal.trial.params, distributions=proposal.trial.distributions,
                    value=value, state=state, user_attrs={
                        "config": proposal.config,
                        "result": _result(m.outcome, m.detail, spread)}))
            self.store.finish_claim(self.name, proposal.key, proposal.trial.number, m.outcome,
                                    seconds)

    def abandon(self, proposal: Proposal) -> None:
        """Give a claimed config back unmeasured (the run is stopping)."""
        with translated(self.store.url):
            self._finish(proposal.trial, TrialState.FAIL, "abandoned", "run interrupted")
            self.store.release_claim(self.name, proposal.key, proposal.trial.number)

    def _finish(self, trial, state, outcome: str, detail: str, value=None, spread=None) -> bool:
        """Tell the trial's end; its user attribute "result" says why (one write). False if
        another run told it first: optuna pops an enqueued trial by reading its state and then
        updating it, which SQLite cannot lock, so two runs can be handed the same trial
        (optuna/optuna#1014, #4621); the claims keep them from measuring its config twice."""
        try:
            trial.set_user_attr("result", _result(outcome, detail, spread))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        return self.study.tell(trial, value, state=state, skip_if_finished=True).state == state

    def _redirect(self, anchor, claimed: set[str], number: int) -> None:
        """Enqueue the unclaimed valid config nearest to ``anchor`` (ties: seeded random)."""
        rng = random.Random(f"{self.seed}:{number}")
        if self.valid is None:    # too many to list: search outwards from the anchor
            found = nearest(self.impl, anchor, lambda c: config_key(c) not in claimed and
                            self.impl.valid(c, self.shape, self.task.dtype, self.spec) is None,
                            rng)
        else:
            left = [c for c in self.valid if config_key(c) not in claimed]
            found = min(left, key=lambda c: (distance(self.impl, anchor, c), rng.random()),
                        default=None)
        if found is not None:
            self.study.enqueue_trial(self._encode(found))

    def _encode(self, config):
        return {p: v.index(config[p]) for p, v in self.impl.space.items()}

    # ---- state ---------------------------------------------------------------------------------

    def _claims(self):
        """The study's claims, after releasing those of processes that are gone."""
        claims = self.store.claims(self.name)
        now, released = time.time(), False
        for c in claims:
            if (c.outcome is None and c.owner != self.owner
                    and _owner_gone(c.owner, now - c.claimed_at, self.stale_after)
                    and self.store.release_claim(self.name, c.config, c.trial)):
                self.study.tell(c.trial, state=TrialState.FAIL, skip_if_finished=True)
                released = True
        return self.store.claims(self.name) if released else claims

    def _reap_orphans(self) -> None:
        """Fail RUNNING trials that hold no claim and are older than ``stale_after`` (a process
        killed between asking and claiming); claimed ones are reaped through their claim."""
        claimed = {c.trial for c in self._claims() if c.outcome is None}
        now = datetime.now()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            if t.number not in claimed and age > self.stale_after:
                self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)

    def _spent(self, claims) -> bool:
        if len(claims) >= self.trials:
            return True
        seconds = sum(c.seconds or 0.0 for c in claims)
        return self.budget.seconds is not None and seconds >= self.budget.seconds

    def complete(self) -> bool:
        """Nothing is being measured and there is nothing more to measure."""
        with translated(self.store.url):
            claims = self._claims()
        if any(c.outcome is None for c in claims):
            return False
        return self._spent(claims) or len(claims) >= self.n_valid

    def measured(self) -> int:
        """Configs measured so far (every outcome counts: a trial spent)."""
        return sum(c.outcome is not None for c in self.store.claims(self.name))

    def best(self):
        """(config, median µs, spread µs) of the fastest verified config, or None."""
        return best_of(self.study)


def _result(outcome: str, detail: str, spread) -> dict:
    return {"outcome": outcome, "detail": detail[:500], "spread_us": spread}


def outcome(trial) -> str:
    """Why a trial ended: a :data:`autotune.evaluate.MEASURED` outcome, "invalid",
    "duplicate", "abandoned", or "running"."""
    return (trial.user_attrs.get("result") or {}).get("outcome") or (
        "running" if trial.state == TrialState.RUNNING else "abandoned")


def trial_config(trial) -> dict[str, int]:
    """The config a trial measured (its params are indices into the space's values)."""
    return dict(trial.user_attrs["config"])


def best_of(study: optuna.Study):
    ok = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
          if outcome(t) == "ok"]
    if not ok:
        return None
    t = min(ok, key=lambda t: t.value)
    return trial_config(t), t.value, t.user_attrs["result"]["spread_us"] or 0.0
