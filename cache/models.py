"""The tables the tuner adds to its database (optuna's own study tables live beside them).

``ct_winners``: one row per (GPU, kernel, implementation, dtype, bucket): the fastest verified
config and what it was measured on; rows become :class:`cache.winner.Winner` only through
``validate``. ``ct_claims``: one row per (study, config) being or having been measured, so that
several processes sharing a study never time the same config twice (the primary key makes the
claim atomic in any database). ``ct_runs``: one row per completed ``autotune run`` (its
arguments, the GPU, and every kernel and tuner source, as one digest) with the winners it left,
so the same run again can answer from the database without starting the tuner.
"""
from __future__ import annotations

from sqlalchemy import JSON, Float, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class WinnerRow(Base):
    __tablename__ = "ct_winners"
    __table_args__ = (UniqueConstraint("gpu", "kernel", "impl", "dtype", "bucket_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    gpu: Mapped[str] = mapped_column(String(128))
    device_name: Mapped[str] = mapped_column(String(128))
    cc: Mapped[str] = mapped_column(String(16))
    sms: Mapped[int] = mapped_column(Integer)
    driver: Mapped[str] = mapped_column(String(64))
    cuda: Mapped[str] = mapped_column(String(64))
    triton: Mapped[str] = mapped_column(String(64))
    kernel: Mapped[str] = mapped_column(String(64))
    impl: Mapped[str] = mapped_column(String(64))
    source_hash: Mapped[str] = mapped_column(String(64))
    dtype: Mapped[str] = mapped_column(String(16))
    bucket_key: Mapped[str] = mapped_column(String(512))   # canonical text of ``bucket``
    bucket: Mapped[dict] = mapped_column(JSON)
    config: Mapped[dict] = mapped_column(JSON)
    median_us: Mapped[float] = mapped_column(Float)
    spread_us: Mapped[float] = mapped_column(Float)
    baseline_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    speedup: Mapped[float | None] = mapped_column(Float, nullable=True)
    trials: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[str] = mapped_column(String(64))


class ClaimRow(Base):
    __tablename__ = "ct_claims"

    study: Mapped[str] = mapped_column(String(512), primary_key=True)
    config: Mapped[str] = mapped_column(String(1024), primary_key=True)   # canonical JSON
    trial: Mapped[int] = mapped_column(Integer)         # the optuna trial number measuring it
    owner: Mapped[str] = mapped_column(String(256))     # "host:pid" of the tuner process
    claimed_at: Mapped[float] = mapped_column(Float)    # Unix time
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)   # None: running
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)      # time it took


class RunRow(Base):
    __tablename__ = "ct_runs"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)   # autotune.memo.run_key
    gpu: Mapped[str] = mapped_column(String(128))
    winners: Mapped[list] = mapped_column(JSON)   # [gpu, kernel, impl, dtype, bucket_key, hash]
    created_at: Mapped[str] = mapped_column(String(64))


def bucket_key(bucket: dict[str, int]) -> str:
    """Canonical text of a bucket (its unique key in ``ct_winners``)."""
    return ",".join(f"{k}={bucket[k]}" for k in sorted(bucket))
