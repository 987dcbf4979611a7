"""Crash isolation: candidates run in worker processes that are replaced when they fail.

A config that faults the GPU (illegal address, launch failure) leaves the CUDA context unusable
for the rest of the process, and a miscompiled one can hang or kill it. So each candidate runs in
a spawned worker process (spawn, not fork: CUDA cannot be used in a forked child). The parent
gets a :class:`Measurement` back, or, when the worker dies, a "crash" naming the signal, or, when
it overruns its time limit, a "timeout" after killing it; either way a fresh worker takes the
slot and the run goes on. A worker whose evaluation reports a poisoned context exits by itself and
is replaced too. Worker ``i`` is pinned to one GPU through ``CUDA_VISIBLE_DEVICES``.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait as wait_any

from .evaluate import Candidate, Measurement, first_line, load_evaluator

START_TIMEOUT_S = 300.0   # importing torch and initialising CUDA on a busy machine
MAX_START_FAILURES = 3


class WorkerError(RuntimeError):
    """Workers cannot be started (the evaluator does not load): not a property of a config."""


def serve(conn, spec: str, device: str | None) -> None:
    """Worker main loop: announce readiness, then answer candidates until told to stop."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    evaluator = load_evaluator(spec)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            candidate = conn.recv()
        except EOFError:          # the parent is gone
            return
        if candidate is None:
            return
        try:
            result = evaluator.measure(candidate)
        except Exception as e:  # noqa: BLE001 - an evaluator bug is this candidate's failure
            result = Measurement("error", detail=first_line(e))
        conn.send(result)
        if result.poisoned:
            return


class _Worker:
    def __init__(self, ctx, spec: str, device: str | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, spec, device), daemon=True,
                                name="autotune-worker")
        self.proc.start()
        child.close()
        self.device = device
        self.ready = False
        self.job = None            # (tag, started at) while measuring
        self.born = time.monotonic()

    def stop(self, kill: bool = False) -> None:
        if not kill and self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class Pool:
    """``len(devices)`` workers; ``devices[i]`` is worker i's CUDA_VISIBLE_DEVICES (None: keep).

    With ``isolate=False`` candidates are measured in this process instead (no crash isolation;
    for synthetic evaluators in tests and for replays)."""

    def __init__(self, evaluator, devices: list[str | None], timeout_s: float = 120.0,
                 isolate: bool = True):
        self.spec = evaluator
        self.timeout_s = timeout_s
        self.isolate = isolate
        self.replaced = 0
        self._done: list[tuple[object, Measurement]] = []
        if isolate:
            self._ctx = multiprocessing.get_context("spawn")
            self._workers = [_Worker(self._ctx, evaluator, d) for d in devices]
            self._start_failures = 0
        else:
            self._local = load_evaluator(evaluator)
            self._slots = len(devices)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.isolate:
            for w in self._workers:
                w.stop(kill=w.job is not None)

    @property
    def size(self) -> int:
        return len(self._workers) if self.isolate else self._slots

    def idle(self) -> list[int]:
        """Slots ready for a candidate now."""
        if not self.isolate:
            return list(range(self._slots))
        return [i for i, w in enumerate(self._workers) if w.ready and w.job is None]

    def busy(self) -> int:
        return sum(w.job is not None for w in self._workers) if self.isolate else 0

    def submit(self, slot: int, candidate: Candidate, tag) -> None:
        """Start measuring ``candidate`` on ``slot``; its result comes back from :meth:`wait`."""
        if not self.isolate:
            self._done.append((tag, self._local.measure(candidate)))
            return
        w = self._workers[slot]
        w.job = (tag, time.monotonic())
        try:
            w.conn.send(candidate)
        except OSError:            # it died between jobs; report it as this job's crash
            self._done.append((tag, self._death(slot)))

    def wait(self, timeout: float) -> list[tuple[object, Measurement]]:
        """Results that are in after at most ``timeout`` seconds, as (tag, measurement)."""
        if not self.isolate or self._done:
            if not self._done:
                time.sleep(min(timeout, 0.2))   # nothing submitted: others' measurements run
            done, self._done = self._done, []
            return done
        now = time.monotonic()
        deadlines = [w.job[1] + self.timeout_s - now for w in self._workers if w.job]
        watch = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
        wait_any(watch, timeout=max(0.0, min([timeout, *deadlines])))
        for slot, w in enumerate(self._workers):
            self._poll(slot, w)
        done, self._done = self._done, []
        return done

    def _poll(self, slot: int, w: _Worker) -> None:
        if w.conn.poll():
            try:
                message = w.conn.recv()
            except (EOFError, OSError):
                message = None
            if message is not None and not w.ready:
                w.ready = True
                self._start_failures = 0
                return
            if isinstance(message, Measurement):
                tag, _ = w.job
                w.job = None
                self._done.append((tag, message))
                if message.poisoned:
                    self._replace(slot)
                return
        if not w.proc.is_alive():
            if w.job is not None:
                self._done.append((w.job[0], self._death(slot)))
            elif not w.ready:
                self._start_failed(slot, f"exit code {w.proc.exitcode}")
            else:
                self._replace(slot)
        elif w.job is not None and time.monotonic() - w.job[1] > self.timeout_s:
            tag, _ = w.job
            w.job = None
            self._done.append((tag, Measurement(
                "timeout", detail=f"no result after {self.timeout_s:g} s; worker killed")))
            self._replace(slot, kill=True)
        elif not w.ready and time.monotonic() - w.born > START_TIMEOUT_S:
            self._start_failed(slot, f"not ready after {START_TIMEOUT_S:g} s")

    def _death(self, slot: int) -> Measurement:
        w = self._workers[slot]
        w.proc.join(5)
        code = w.proc.exitcode
        how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit code {code}")
        w.job = None
        self._replace(slot)
        return Measurement("crash", detail=f"worker process died ({how})")

    def _replace(self, slot: int, kill: bool = False) -> None:
        old = self._workers[slot]
        old.stop(kill=kill)
        self._workers[slot] = _Worker(self._ctx, self.spec, old.device)
        self.replaced += 1

    def _start_failed(self, slot: int, why: str) -> None:
        self._start_failures += 1
        if self._start_failures >= MAX_START_FAILURES:
            raise WorkerError(f"tuner worker processes do not start ({why}, "
                              f"{self._start_failures} times); see the error printed above")
        self._replace(slot, kill=True)
