"""Two tuner processes on one PostgreSQL database (issue 9's team setup, on the CPU with the
synthetic evaluator): a real server started here, reached by SQLAlchemy URL; the processes share
every study without measuring a config twice, and when one is killed mid-trial the other
finishes the work and nothing completed is lost.

Needs PostgreSQL's server programs (initdb, pg_ctl: Debian's postgresql package) and the psycopg
driver (the ``test`` extra); skipped with the reason where either is missing.
"""
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cache import open_store
from tests.test_autotune import _tune, measured_log, tasks, two_processes_share


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed")
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL's initdb/pg_ctl are not on PATH")
    root = Path(tempfile.mkdtemp(prefix="ct-pg-"))
    root.chmod(0o777)                       # the server may run as the postgres user
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data, port = root / "data", _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)
    run("initdb", "-D", str(data), "-U", "tuner", "--auth=trust")
    run("pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "tuner", "tune")
        yield f"postgresql+psycopg://tuner@127.0.0.1:{port}/tune"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _fresh_db(url: str, name: str) -> str:
    """A database of its own for one test, on the module's server."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


def test_two_processes_share_the_studies(postgres_url, tmp_path):
    two_processes_share(_fresh_db(postgres_url, "shared"), str(tmp_path / "measured.log"))


def test_one_process_killed_mid_trial_the_other_finishes(postgres_url, tmp_path):
    url, log = _fresh_db(postgres_url, "killed"), tmp_path / "measured.log"
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    victim, survivor = (ctx.Process(target=_tune, args=(url, str(log), start)) for _ in range(2))
    victim.start()
    survivor.start()
    start.set()
    deadline = time.monotonic() + 60
    while len(measured_log(log)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    survivor.join(180)
    assert survivor.exitcode == 0
    measured = measured_log(log)
    assert 16 <= len(set(measured)) and len(measured) - len(set(measured)) <= 1
    store = open_store(url)
    assert len(store.winners("h100")) == 4                   # every bucket's winner is stored
    for t in tasks():
        claims = store.claims(t.study_name("h100"))
        assert sum(c.outcome == "ok" for c in claims) >= 4
