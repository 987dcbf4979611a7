"""The winners store: record, list and look up tuned configs; claims for shared studies.

Every write is one transaction (a failure leaves no partial row). Reading never creates a
database: a SQLite file that does not exist, or one without the tables yet, simply holds no
winners. Rows are turned into :class:`Winner` only through :func:`cache.winner.validate`, so a
tampered, corrupt or stale row (a config that no longer fits the kernel's space, an old source
hash) is reported and skipped, never returned.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, fields

from sqlalchemy import delete, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import kernels
from kernels import contract

from . import db
from .models import Base, ClaimRow, WinnerRow, bucket_key
from .winner import InvalidWinner, Winner, validate

log = logging.getLogger(__name__)
_FIELDS = tuple(f.name for f in fields(Winner))


class Store:
    """The tuner's database at ``url`` (see :func:`cache.db.resolve_url` for the default)."""

    def __init__(self, url: str | None = None):
        self.url = db.resolve_url(url)
        self.where = db.describe(self.url)
        self.engine = db.make_engine(self.url)
        self._created = False
        self._storage = None

    # ---- plumbing ------------------------------------------------------------------------

    def _session(self, write: bool):
        """A session in one transaction; writing creates the tables first."""
        if write and not self._created:
            with db.translated(self.url):
                _racing(lambda: Base.metadata.create_all(self.engine))
            self._created = True
        return Session(self.engine, expire_on_commit=False)

    def _readable(self) -> bool:
        """Whether there is anything to read (reading must not create a database)."""
        path = db.sqlite_file(self.url)
        if path is not None and not path.exists():
            return False
        with db.translated(self.url):
            return inspect(self.engine).has_table(WinnerRow.__tablename__)

    def optuna_storage(self):
        """optuna's RDBStorage on the same database (study tables beside ours)."""
        if self._storage is None:
            import optuna

            with db.translated(self.url):
                with self._session(write=True):   # our tables and SQLite's WAL mode first
                    pass
                self._storage = _racing(lambda: optuna.storages.RDBStorage(
                    self.url, engine_kwargs={"connect_args": db.connect_args(self.url)}))
                db.configure(self._storage.engine)
        return self._storage

    # ---- winners -------------------------------------------------------------------------

    def record_winner(self, w: Winner) -> bool:
        """Store ``w`` as the winner of its (GPU, kernel, impl, dtype, bucket), replacing the
        previous one unless that was tuned from the same source with more trials. Returns
        whether it was written. ``w`` must pass :func:`validate` (nothing invalid is stored)."""
        try:
            validate(w.to_json())
        except InvalidWinner as e:
            raise InvalidWinner(f"refusing to store {w.kernel}/{w.impl}: {e}") from None
        values = {**asdict(w), "bucket_key": bucket_key(w.bucket)}
        key = (WinnerRow.gpu == w.gpu, WinnerRow.kernel == w.kernel, WinnerRow.impl == w.impl,
               WinnerRow.dtype == w.dtype, WinnerRow.bucket_key == values["bucket_key"])
        for attempt in (1, 2):   # a concurrent first insert of the same key: retry as an update
            try:
                with db.translated(self.url), self._session(write=True) as s, s.begin():
                    row = s.scalars(select(WinnerRow).where(*key)).one_or_none()
                    if row is None:
                        s.add(WinnerRow(**values))
                        return True
                    if row.source_hash == w.source_hash and row.trials > w.trials:
                        return False
                    s.execute(update(WinnerRow).where(WinnerRow.id == row.id).values(**values))
                    return True
            except IntegrityError:
                if attempt == 2:
                    raise
        return False

    def check(self, gpu: str | None = None, kernel_names=None
              ) -> tuple[list[Winner], list[tuple[dict, str]]]:
        """Stored rows for ``gpu`` (all GPUs when None) and kernels: (valid winners, refused rows
        with the reason)."""
        if not self._readable():
            return [], []
        query = select(WinnerRow)
        if gpu is not None:
            query = query.where(WinnerRow.gpu == gpu)
        if kernel_names is not None:
            query = query.where(WinnerRow.kernel.in_(list(kernel_names)))
        with db.translated(self.url), self._session(write=False) as s:
            rows = [{f: getattr(r, f) for f in _FIELDS} for r in s.scalars(query)]
        good, refused = [], []
        for row in rows:
            try:
                good.append(validate(row))
            except InvalidWinner as e:
                refused.append((row, str(e)))
                log.warning("%s: refusing stored winner %s/%s %s: %s", self.where,
                            row.get("kernel"), row.get("impl"), row.get("bucket"), e)
        return good, refused

    def winners(self, gpu: str, kernels=None) -> list[Winner]:
        """The valid winners of ``gpu`` (for ``kernels`` when given); invalid rows are logged."""
        return self.check(gpu, kernels)[0]

    def winner(self, gpu: str, kernel: str, impl: str, dtype: str, bucket) -> Winner | None:
        """The valid winner stored for exactly this bucket, if any."""
        for w in self.winners(gpu, [kernel]):
            if (w.impl, w.dtype, w.bucket) == (impl, dtype, dict(bucket)):
                return w
        return None

    def best_config(self, gpu: str, kernel: str, dtype: str, shape, impl: str | None = None
                    ) -> Winner | None:
        """The winner to use for ``shape``: its bucket, else the nearest tuned bucket with the
        same static dims (:func:`kernels.contract.nearest_bucket`); the fastest implementation
        unless ``impl`` is given. ``gpu="auto"`` means the GPU this process runs on."""
        if gpu.strip().lower() == "auto":
            from kernels import gpu as gpus

            gpu = gpus.running().spec.name
        k = kernels.get(kernel)
        found = [w for w in self.winners(gpu, [kernel])
                 if w.dtype == dtype and (impl is None or w.impl == impl)]
        bucket = contract.nearest_bucket(k, shape, [w.bucket for w in found])
        if bucket is None:
            return None
        return min((w for w in found if w.bucket == bucket), key=lambda w: w.median_us)

    # ---- claims: which configs of a shared study are measured, by whom ----------------------

    def claim(self, study: str, config: str, trial: int, owner: str,
              limit: int | None = None) -> bool:
        """Claim ``config`` of ``study`` for measurement; False if anyone has it already, or if
        the study then holds more than ``limit`` claims (the claim is withdrawn again: two
        tuners that share a study can both miss the last trial of its budget and ask again,
        but never both take it)."""
        try:
            with db.translated(self.url), self._session(write=True) as s, s.begin():
                s.add(ClaimRow(study=study, config=config, trial=trial, owner=owner,
                               claimed_at=time.time()))
        except IntegrityError:
            return False
        if limit is not None and len(self.claims(study)) > limit:
            self.release_claim(study, config, trial)
            return False
        return True

    def finish_claim(self, study: str, config: str, trial: int, outcome: str,
                     seconds: float) -> None:
        with db.translated(self.url), self._session(write=True) as s, s.begin():
            s.execute(update(ClaimRow)
                      .where(ClaimRow.study == study, ClaimRow.config == config,
                             ClaimRow.trial == trial)
                      .values(outcome=outcome, seconds=seconds))

    def release_claim(self, study: str, config: str, trial: int) -> bool:
        """Drop an unfinished claim (its measurement was abandoned); False if it changed
        meanwhile (finished, or released and re-claimed by someone else)."""
        with db.translated(self.url), self._session(write=True) as s, s.begin():
            result = s.execute(delete(ClaimRow).where(
                ClaimRow.study == study, ClaimRow.config == config, ClaimRow.trial == trial,
                ClaimRow.outcome.is_(None)))
            return result.rowcount == 1

    def claims(self, study: str) -> list[ClaimRow]:
        if not self._readable():
            return []
        with db.translated(self.url), self._session(write=False) as s:
            return list(s.scalars(select(ClaimRow).where(ClaimRow.study == study)))


def _racing(create, attempts: int = 3):
    """``create()`` (tables, optuna's storage) again when it failed because another process was
    creating the same tables at the same moment (check-then-create is not atomic)."""
    for attempt in range(attempts):
        try:
            return create()
        except Exception:  # noqa: BLE001 - re-raised on the last attempt, translated by callers
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def open_store(url: str | None = None) -> Store:
    """The store at ``url``, ``$CONFORMER_TRT_DB`` or ``sqlite:///conformer_trt.db``."""
    return Store(url)


def best_config(gpu: str, kernel: str, dtype: str, shape, impl: str | None = None,
                url: str | None = None) -> Winner | None:
    """:meth:`Store.best_config` on the store at ``url``."""
    return open_store(url).best_config(gpu, kernel, dtype, shape, impl)
