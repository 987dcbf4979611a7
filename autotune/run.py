"""``autotune run``: tune every task on a pool of isolated workers and store the winners.

Tasks whose winner is already stored (current source, at least the planned trials) are skipped
without starting a worker, so a run over a warm cache measures nothing. The others get a study
each (:class:`autotune.search.Search`); up to ``jobs`` studies are active at once, and every idle
worker takes the next proposal of the active study with the fewest measurements in flight. The
baseline (the kernel's PyTorch op) is measured once per shape, first, for the speedup.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from cache import Store, Winner
from kernels import gpu as gpus
from kernels import launch

from .evaluate import DEFAULT_EVALUATOR, Candidate, load_evaluator
from .space import GRID_MAX, NAMESPACE, Budget, Task, ValidSpace, valid_space
from .worker import Pool

_PENDING = object()


@dataclass(frozen=True)
class Settings:
    budget: Budget = Budget()
    seed: int = 0
    jobs: int = 1               # worker processes; worker i uses GPU i mod the GPU count
    timeout_s: float = 120.0    # per candidate: compile, check and time
    evaluator: object = DEFAULT_EVALUATOR   # "module:factory"; an object only if not isolated
    namespace: str = NAMESPACE  # study name prefix (separate experiments in one database)
    sampler: str = "auto"       # "auto", "grid", "gp" or "tpe"
    isolate: bool = True        # measure in worker processes (crash isolation)
    progress: bool = True


@dataclass
class Report:
    gpu: str = ""
    tuned: list[Winner] = field(default_factory=list)
    cached: list[Winner] = field(default_factory=list)
    failed: list[tuple[Task, str]] = field(default_factory=list)
    unsupported: list[Task] = field(default_factory=list)   # no valid config on this GPU
    measured: int = 0           # configs measured by this run
    seconds: float = 0.0


def planned_trials(valid: ValidSpace, settings: Settings) -> int:
    """How many configs a study measures before it is done."""
    n_valid = valid.count
    if settings.sampler == "grid" or (settings.sampler == "auto" and n_valid <= GRID_MAX
                                      and valid.exact):
        return n_valid
    if settings.budget.trials is None and settings.budget.seconds is not None:
        return 1    # time-limited: any stored winner is a finished study
    return settings.budget.trials_for(n_valid)


def tune(tasks: list[Task], gpu: str, store: Store, settings: Settings = Settings(),
         out=None, pool: Pool | None = None) -> Report:
    """Tune ``tasks`` for ``gpu`` (a known name or "auto"; refused unless it is this machine's
    GPU) and store their winners in ``store``; ``out`` (default stdout) gets the log lines.
    ``pool`` lends workers that outlive this call (several runs, one worker start-up)."""
    start = time.monotonic()
    out = out or sys.stdout
    if gpu.strip().lower() != "auto":
        gpus.by_name(gpu)          # an unknown name is refused before looking at the machine
    devices = load_evaluator(settings.evaluator).devices(gpu)
    running = devices[0]
    report = Report(gpu=running.spec.name)
    stored = {(w.kernel, w.impl, w.dtype, tuple(w.bucket.items())): w
              for w in store.winners(report.gpu, sorted({t.kernel for t in tasks}))}
    todo = []
    for t in tasks:
        if not valid_space(t, running.spec).count:   # e.g. an sm_90a kernel on an A10
            report.unsupported.append(t)
            continue
        w = stored.get((t.kernel, t.impl, t.dtype, t.bucket))
        if w is not None and w.trials >= planned_trials(valid_space(t, running.spec),
                                                        settings):
            report.cached.append(w)
        else:
            todo.append(t)
    skipped = sorted({f"{t.kernel}/{t.impl}" for t in report.unsupported})
    print(f"{len(tasks)} studies for {report.gpu} ({running.device_name}): "
          f"{len(report.cached)} cached, {len(todo)} to tune"
          + (f", {len(report.unsupported)} with no valid config here ({', '.join(skipped)})"
             if skipped else ""), file=out)
    if todo and pool is not None:
        _Loop(todo, store, running, settings, pool, report, out).run()
    elif todo:
        ids = _device_ids(len(devices), settings.jobs)
        with Pool(settings.evaluator, ids, settings.timeout_s, settings.isolate) as own:
            _Loop(todo, store, running, settings, own, report, out).run()
    report.seconds = time.monotonic() - start
    return report


def _device_ids(n_devices: int, jobs: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each worker: round-robin over the visible GPUs."""
    if n_devices <= 1:
        return [None] * max(1, jobs)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = visible.split(",") if visible else [str(i) for i in range(n_devices)]
    return [names[i % n_devices] for i in range(max(1, jobs))]


class _Active:
    def __init__(self, search):
        self.search = search
        self.inflight = 0
        self.waiting_since: float | None = None   # next() said nothing to do at this time
        self.best = search.best()


class _Loop:
    """The scheduler: activates studies, feeds idle workers, records results and winners."""

    def __init__(self, todo, store, running, settings, pool, report, out):
        self.queue = deque(todo)
        self.store, self.running, self.settings = store, running, settings
        self.pool, self.report, self.out = pool, report, out
        self.active: list[_Active] = []
        self.inflight: dict[int, tuple] = {}          # tag -> (kind, owner, proposal)
        self.baselines: dict[tuple, object] = {}      # shape key -> µs, None (failed), pending
        self.new_baselines: deque = deque()
        self.tags = 0
        total = sum(planned_trials(valid_space(t, running.spec), settings) for t in todo)
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="config", disable=not settings.progress,
                        dynamic_ncols=True, file=sys.stderr)

    def run(self) -> None:
        try:
            while self.queue or self.active:
                self._activate()
                self._feed()
                retired = self._retire()   # then activate the next study without waiting
                for tag, m in self.pool.wait(timeout=0.0 if retired else 0.5):
                    self._record(tag, m)
        finally:
            self.bar.close()
            for kind, a, proposal in self.inflight.values():
                if kind == "trial":
                    try:
                        a.search.abandon(proposal)
                    except Exception:  # noqa: BLE001 - best effort while stopping
                        pass

    def _activate(self) -> None:
        from .search import Search   # optuna: imported only when something is to be tuned

        while self.queue and len(self.active) < max(1, self.pool.size):
            task = self.queue.popleft()
            s = self.settings
            search = Search(task, self.store, self.report.gpu, self.running.spec, s.budget,
                            s.seed, s.namespace, s.sampler, stale_after=2 * s.timeout_s + 60)
            self.active.append(_Active(search))
            self.bar.write(search.describe(), file=self.out)
            self.bar.update(min(search.measured(), search.trials))
            key = self._shape_key(task)
            if key not in self.baselines:
                self.baselines[key] = _PENDING
                self.new_baselines.append(
                    (key, Candidate(task.kernel, None, task.dtype, dict(task.shape))))

    @staticmethod
    def _shape_key(task: Task) -> tuple:
        return task.kernel, task.dtype, task.shape

    def _feed(self) -> None:
        for slot in self.pool.idle():
            if self.new_baselines:
                key, candidate = self.new_baselines.popleft()
                self._submit(slot, ("baseline", key, None), candidate)
                continue
            a = self._pick()
            if a is None:
                return
            proposal = a.search.next()
            if proposal is None:
                a.waiting_since = time.monotonic()
                continue
            a.inflight += 1
            task = a.search.task
            self._submit(slot, ("trial", a, proposal), Candidate(
                task.kernel, task.impl, task.dtype, dict(task.shape), proposal.config,
                seed=proposal.trial.number))

    def _submit(self, slot: int, what: tuple, candidate: Candidate) -> None:
        self.tags += 1
        self.inflight[self.tags] = what
        self.pool.submit(slot, candidate, self.tags)

    def _pick(self) -> _Active | None:
        """The active study to ask next: fewest in flight, not known to be waiting."""
        now = time.monotonic()
        ready = [a for a in self.active
                 if a.waiting_since is None or now - a.waiting_since > 2.0]
        return min(ready, key=lambda a: a.inflight, default=None)

    def _record(self, tag: int, m) -> None:
        kind, owner, proposal = self.inflight.pop(tag)
        if kind == "baseline":
            self.baselines[owner] = m.median_us if m.outcome == "ok" else None
            if m.outcome != "ok":
                self.bar.write(f"baseline {owner[0]} {owner[1]} failed: {m.detail}",
                               file=self.out)
            return
        a: _Active = owner
        a.inflight -= 1
        a.waiting_since = None
        a.search.report(proposal, m)
        self.report.measured += 1
        if m.outcome == "ok" and (a.best is None or m.median_us < a.best[1]):
            a.best = (proposal.config, m.median_us, m.spread_us)
        self.bar.update(1)
        self.bar.set_postfix_str(" | ".join(
            f"{x.search.task.label}: {x.best[1]:.2f} us" for x in self.active if x.best))

    def _retire(self) -> int:
        """Finish the studies that are complete: store their winners. Returns how many."""
        retired = 0
        for a in list(self.active):
            if a.inflight or a.waiting_since is None:
                continue
            if self.baselines.get(self._shape_key(a.search.task)) is _PENDING:
                continue
            if not a.search.complete():
                continue
            self.active.remove(a)
            self.bar.update(max(0, a.search.trials - a.search.measured()))
            self._store_winner(a.search)
            retired += 1
        return retired

    def _store_winner(self, search) -> None:
        task, best = search.task, search.best()
        if best is None:
            self.report.failed.append((task, "no config passed the reference check"))
            self.bar.write(f"{task.label}: no winner (every measured config failed)",
                           file=self.out)
            return
        config, median, spread = best
        baseline = self.baselines.get(self._shape_key(task))
        baseline = baseline if isinstance(baseline, float) else None
        g = self.running
        w = Winner(gpu=g.spec.name, device_name=g.device_name, cc=f"{g.cc[0]}.{g.cc[1]}",
                   sms=g.sms, driver=g.driver, cuda=g.cuda,
                   triton=importlib.metadata.version("triton"), kernel=task.kernel,
                   impl=task.impl, source_hash=launch.source_hash(search.impl),
                   dtype=task.dtype, bucket=dict(task.bucket), config=config, median_us=median,
                   spread_us=spread, baseline_us=baseline,
                   speedup=baseline / median if baseline else None, trials=search.measured())
        self.store.record_winner(w)
        self.report.tuned.append(w)
