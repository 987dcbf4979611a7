"""Connecting to the winners database, and saying clearly what is wrong when that fails.

Any SQLAlchemy URL works (PostgreSQL for a team). SQLite files are opened in WAL mode with a busy
timeout, set on every new connection through an engine ``connect`` event, so that several tuner
processes can read and write one file: readers do not block the writer, and a writer waits for
another instead of failing (SQLite docs, "Write-Ahead Logging" and "PRAGMA busy_timeout").
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sqlalchemy import create_engine, event, exc, make_url
from sqlalchemy.engine import URL, Engine

DEFAULT_URL = "sqlite:///conformer_trt.db"
ENV_URL = "CONFORMER_TRT_DB"
BUSY_TIMEOUT_S = 60


class StoreError(RuntimeError):
    """The database cannot be used; the message names it and says what to do."""


def resolve_url(url: str | None = None) -> str:
    """``url``, else ``$CONFORMER_TRT_DB``, else ``sqlite:///conformer_trt.db`` (working dir)."""
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


def parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except exc.ArgumentError as e:
        raise StoreError(f"not a database URL: {url!r} ({e})") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StoreError("an in-memory SQLite database cannot be shared by the tuner's "
                         "connections; use a file, e.g. sqlite:///conformer_trt.db")
    return parsed


def describe(url: str) -> str:
    """The URL as it may be printed: no password."""
    return parse(url).render_as_string(hide_password=True)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (``sqlite:///x.db`` or ``sqlite:///file:x.db?uri=true``)."""
    parsed = parse(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    name = parsed.database
    if parsed.query.get("uri") == "true" and name.startswith("file:"):
        name = name[len("file:"):].split("?", 1)[0]
    return Path(name)


def connect_args(url: str) -> dict:
    """Driver arguments for a new engine on ``url`` (shared with optuna's RDBStorage engine)."""
    return {"timeout": BUSY_TIMEOUT_S} if parse(url).get_backend_name() == "sqlite" else {}


def make_engine(url: str) -> Engine:
    return configure(create_engine(parse(url), connect_args=connect_args(url)))


def configure(engine: Engine) -> Engine:
    """Give every new SQLite connection of ``engine`` (ours, or optuna's RDBStorage engine) the
    WAL journal, the busy timeout and ``synchronous=NORMAL``: in WAL mode that is still safe
    against a killed process, only an OS crash can lose the last commits, and it spares an
    fsync per commit (SQLite docs, "PRAGMA synchronous")."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        engine.dispose()   # connections opened before this point lack the pragmas
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    try:   # persistent once set; a read-only connection keeps the file's mode and can still read
        cursor.execute("PRAGMA journal_mode = WAL")
    except Exception:  # noqa: BLE001 - the driver's own error class; reads go on without WAL
        pass
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


_MESSAGES = (   # (text in the driver's message, what we tell the user)
    ("database or disk is full",
     "the disk holding {where} is full (or the database hit its size limit); the transaction "
     "was rolled back and nothing partial was written. Free space and run again: completed "
     "trials are kept"),
    ("readonly", "{where} is read-only; tuning needs write access (show/export only read)"),
    ("read-only", "{where} is read-only; tuning needs write access (show/export only read)"),
    ("file is not a database", "{where} is not a SQLite database (corrupt, or another kind of "
                               "file); move it away or point --db elsewhere"),
    ("malformed", "{where} is corrupt (SQLite: database disk image is malformed); move it away "
                  "or point --db elsewhere"),
    ("unable to open database file", "cannot open {where}: its folder does not exist or is not "
                                     "writable"),
    ("database is locked", "{where} stayed locked by another process for "
                           f"{BUSY_TIMEOUT_S} s"),
    ("could not connect", "cannot reach {where}: {detail}"),
    ("connection refused", "cannot reach {where}: {detail}"),
)


def explain(error: BaseException, url: str) -> StoreError:
    """A StoreError for a driver/SQLAlchemy/optuna storage error, following its causes."""
    detail = str(error)
    cause: BaseException | None = error
    while cause is not None:   # optuna wraps SQLAlchemy's error, which wraps the driver's
        detail = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
        for needle, message in _MESSAGES:
            if needle in detail.lower():
                return StoreError(message.format(where=describe(url), detail=detail))
        cause = cause.__cause__
    return StoreError(f"database error on {describe(url)}: {detail}")


@contextlib.contextmanager
def translated(url: str):
    """Turn database errors raised inside the block into a :class:`StoreError`."""
    try:
        yield
    except (StoreError, exc.IntegrityError):   # a key conflict is the caller's to handle
        raise
    except Exception as e:  # noqa: BLE001 - narrowed below
        if not _is_database_error(e):
            raise
        raise explain(e, url) from e


def _is_database_error(e: BaseException) -> bool:
    import sqlite3

    from optuna.exceptions import StorageInternalError

    return isinstance(e, (exc.SQLAlchemyError, sqlite3.Error, StorageInternalError))
