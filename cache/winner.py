"""A tuned winner: the fastest verified config of one implementation for one GPU, dtype and shape
bucket, with what it was measured on. Rows read back from a database or a JSON export become
``Winner`` objects only through :func:`validate`, which holds them to the current kernel contract;
that is the gate between stored values and compilers or generated C++.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

import kernels
from kernels import contract, launch


@dataclass(frozen=True)
class Winner:
    gpu: str                 # our short name (h100) or the device name for unnamed GPUs
    device_name: str         # as the driver reports it
    cc: str                  # "9.0"
    sms: int
    driver: str
    cuda: str
    triton: str
    kernel: str
    impl: str
    source_hash: str
    dtype: str
    bucket: dict[str, int]
    config: dict[str, int]
    median_us: float
    spread_us: float
    baseline_us: float | None
    speedup: float | None
    trials: int
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_json(self) -> dict:
        return asdict(self)


class InvalidWinner(ValueError):
    """A stored row that does not fit the current kernels (tampered, stale or corrupt)."""


_TEXT = re.compile(r"[A-Za-z0-9_.\- ()]{1,64}")


def validate(row: dict, check_source: bool = True) -> Winner:
    """Build a Winner from a stored row, refusing anything the current contract would not make.

    Checks: every field present with the right type; kernel, impl and dtype exist; the bucket is a
    valid shape and is its own bucket; the config is a member of the impl's space; the numbers are
    finite and positive; identifying text is plain; and, unless ``check_source`` is False, the
    source hash is the current one (a changed kernel source invalidates its winners).
    """
    names = {f.name for f in fields(Winner)}
    if not isinstance(row, dict) or set(row) != names:
        got = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise InvalidWinner(f"a winner needs exactly the fields {sorted(names)}, got {got}")
    try:
        kernel = kernels.get(row["kernel"])
        impl = kernel.impl(row["impl"])
    except (ValueError, TypeError) as exc:
        raise InvalidWinner(str(exc)) from None
    if row["dtype"] not in kernel.dtypes_of(impl):
        raise InvalidWinner(f"{kernel.name}/{impl.name}: dtype {row['dtype']!r} not supported")
    for key in ("gpu", "device_name", "cc", "driver", "cuda", "triton", "source_hash", "created_at"):
        if not isinstance(row[key], str) or not _TEXT.fullmatch(row[key].replace(":", "").replace("+", "")):
            raise InvalidWinner(f"field {key}={row[key]!r} is not plain text")
    try:
        bucket = contract.check_shape(kernel, row["bucket"])
        config = contract.check_config(impl, row["config"])
    except ValueError as exc:
        raise InvalidWinner(str(exc)) from None
    if contract.bucket_of(kernel, bucket) != bucket:
        raise InvalidWinner(f"{kernel.name}: {bucket} is not a bucket (dynamic dims are powers of 2)")
    for key in ("median_us", "spread_us"):
        if not isinstance(row[key], (int, float)) or not 0 <= row[key] < 1e9 or row[key] != row[key]:
            raise InvalidWinner(f"field {key}={row[key]!r} is not a valid time")
    for key in ("sms", "trials"):
        if type(row[key]) is not int or row[key] < 0:
            raise InvalidWinner(f"field {key}={row[key]!r} is not a count")
    if check_source and row["source_hash"] != launch.source_hash(impl):
        raise InvalidWinner(f"{kernel.name}/{impl.name}: tuned for source {row['source_hash']}, "
                            f"the current source is {launch.source_hash(impl)}; re-tune")
    return Winner(**{**row, "bucket": bucket, "config": config})


def dumps(winners: list[Winner], gpu: str) -> str:
    """The export format read by plugin_gen (``autotune export``)."""
    return json.dumps({"format": 1, "gpu": gpu, "winners": [w.to_json() for w in winners]},
                      indent=1, sort_keys=True)


def loads(text: str, check_source: bool = True) -> tuple[str, list[Winner]]:
    """Parse an export; every row is validated, and a bad one is an error naming it."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidWinner(f"not a winners export: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != 1 or not isinstance(doc.get("winners"), list):
        raise InvalidWinner("not a winners export (format 1 with a 'winners' list)")
    out = []
    for i, row in enumerate(doc["winners"]):
        try:
            out.append(validate(row, check_source))
        except InvalidWinner as exc:
            raise InvalidWinner(f"winner #{i}: {exc}") from None
    return str(doc.get("gpu")), out
