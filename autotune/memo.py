"""A warm ``autotune run`` without the tuner: completed runs are remembered in the database.

When a run finishes with a winner for every study, :func:`record` stores one ``ct_runs`` row
keyed by :func:`run_key`: a digest of the run's arguments, the GPU the driver reports (name,
compute capability, SMs, driver version), the installed torch and Triton versions, and every
source file of the kernels and the tuner. The same command again finds the row with
:func:`lookup`, checks that each winner it lists is still stored with the same source hash,
and prints them, having imported neither torch nor Triton (whose imports alone take seconds):
the driver API (cuda-python) and SQLAlchemy are enough. Anything different (an argument, a
source file, the GPU, a replaced winner) is a miss, and the tuner runs as usual.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import inspect, select, tuple_
from sqlalchemy.orm import Session

from cache import db
from cache.models import Base, RunRow, WinnerRow, bucket_key
from kernels import gpu as gpus

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("kernels", "autotune", "cache")       # what decides a run's tasks and winners
SUFFIXES = {".py", ".cu", ".cuh"}


def device() -> tuple[str, tuple[int, int], int, str] | None:
    """(name, compute capability, SMs, driver version) of CUDA device 0 through the driver API,
    or None where there is no usable GPU (the tuner then reports why)."""
    from cuda.bindings import driver as cu

    ok = cu.CUresult.CUDA_SUCCESS
    try:
        if cu.cuInit(0)[0] != ok:
            return None
    except Exception:  # noqa: BLE001 - no driver library at all (cuda.pathfinder's error)
        return None
    err, dev = cu.cuDeviceGet(0)
    if err != ok:
        return None
    attr = cu.CUdevice_attribute
    values = [cu.cuDeviceGetAttribute(a, dev) for a in (
        attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
        attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
        attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)]
    err, name = cu.cuDeviceGetName(256, dev)
    err2, version = cu.cuDriverGetVersion()
    if err != ok or err2 != ok or any(e != ok for e, _ in values):
        return None
    major, minor, sms = (v for _, v in values)
    return name.split(b"\0", 1)[0].decode(), (major, minor), sms, str(version)


def gpu_name(dev) -> str:
    """Our short name for the device (what the winners are stored under)."""
    spec = gpus.identify(dev[0], dev[1])
    return spec.name if spec is not None else dev[0]


def _sources_digest() -> str:
    h = hashlib.sha256()
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def run_key(arguments: dict, dev) -> str:
    """The digest that names one run: ``arguments`` (JSON-able, as parsed), the device, the
    torch and Triton versions and the sources."""
    text = json.dumps({"args": arguments, "device": list(dev), "torch": _version("torch"),
                       "triton": _version("triton"), "sources": _sources_digest()},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _identity(w) -> list:
    return [w.gpu, w.kernel, w.impl, w.dtype, bucket_key(w.bucket), w.source_hash]


def lookup(url: str | None, key: str) -> list[WinnerRow] | None:
    """The winners of the completed run ``key``, or None unless every one is still stored."""
    url = db.resolve_url(url)
    path = db.sqlite_file(url)
    if path is not None and not path.exists():
        return None
    engine = db.make_engine(url)
    try:
        with db.translated(url):
            if not inspect(engine).has_table(RunRow.__tablename__):
                return None
            with Session(engine) as s:
                run = s.get(RunRow, key)
                if run is None:
                    return None
                wanted = {tuple(w) for w in run.winners}
                rows = s.scalars(select(WinnerRow).where(tuple_(
                    WinnerRow.gpu, WinnerRow.kernel, WinnerRow.impl, WinnerRow.dtype,
                    WinnerRow.bucket_key).in_([w[:5] for w in wanted]))).all()
                if {tuple(_identity(r)) for r in rows} != wanted:
                    return None
                s.expunge_all()
                return list(rows)
    finally:
        engine.dispose()


def record(url: str | None, key: str, gpu: str, winners) -> None:
    """Remember that run ``key`` completed with ``winners``."""
    url = db.resolve_url(url)
    engine = db.make_engine(url)
    try:
        with db.translated(url):
            Base.metadata.create_all(engine, tables=[RunRow.__table__])
            with Session(engine) as s, s.begin():
                s.merge(RunRow(key=key, gpu=gpu, winners=[_identity(w) for w in winners],
                               created_at=datetime.now(timezone.utc).isoformat()))
    finally:
        engine.dispose()
