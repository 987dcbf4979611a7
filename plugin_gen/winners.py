"""The winners a library is built from, and the GPU it is built for.

Winners come from the tuner's store (``cache.open_store(url).winners(gpu, kernels)``), from an
``autotune export`` file (``cache.winner.loads``), or from the caller. Whatever the source, every
row passes :func:`cache.winner.validate` again here, so only values the current kernel contract
would produce (kernel and impl names that exist, configs from the impl's space, buckets that are
buckets, the current source hash) reach the compilers and the generated C++.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import kernels
from cache.winner import InvalidWinner, Winner, loads, validate
from kernels import contract, gpu as gpus


class BuildError(RuntimeError):
    """plugin-gen cannot build the library; the message says what to change."""


@dataclass(frozen=True)
class Target:
    gpu: str              # our short name (a10), or the device name of an unnamed GPU
    spec: gpus.GpuSpec    # its limits, for the implementations' validity checks

    @property
    def arch(self) -> str:
        return self.spec.arch

    @property
    def cc(self) -> tuple[int, int]:
        return self.spec.cc


def load(gpu: str, *, db: str | None = None, winners_file: str | Path | None = None,
         winners: Iterable[Winner] | None = None,
         kernel_names: Iterable[str] | None = None) -> tuple[Target, list[Winner]]:
    """The target GPU and its validated winners, from exactly one source (the store by default)."""
    if sum(x is not None for x in (db, winners_file, winners)) > 1:
        raise BuildError("give one source of winners: --db URL or --winners FILE")
    names = _kernel_names(kernel_names)
    name = _gpu_name(gpu)
    if winners is not None:
        rows, source = list(winners), "the winners given"
    elif winners_file is not None:
        rows, source = _from_file(Path(winners_file)), str(winners_file)
    else:
        rows, source = _from_store(db, name, names), db or "the default database"
    checked = []
    for w in rows:
        if not isinstance(w, Winner):
            raise BuildError(f"expected cache.winner.Winner objects, got {type(w).__name__}")
        try:
            checked.append(validate(w.to_json()))
        except InvalidWinner as exc:
            raise BuildError(f"refusing a winner of {source}: {exc}") from None
    found = [w for w in checked if w.gpu == name and (names is None or w.kernel in names)]
    if not found:
        others = sorted({w.gpu for w in checked} - {name})
        raise BuildError(
            f"no winners for GPU {name!r}" + (f" and kernels {sorted(names)}" if names else "")
            + f" in {source}" + (f" (it has winners for {others})" if others else "")
            + f"; tune first: autotune run --gpu {name}")
    return _target(name, found), found


def fastest(winners: Iterable[Winner]) -> dict[str, list[Winner]]:
    """One winner per (kernel, dtype, bucket): the fastest implementation; by kernel, in a fixed
    order (dtype as the contract lists them, then the bucket's values in dim order), which is the
    order of the library's dispatch tables."""
    best: dict[tuple, Winner] = {}
    for w in winners:
        k = kernels.get(w.kernel)
        key = (w.kernel, w.dtype, tuple(w.bucket[d.name] for d in k.dims))
        if key not in best or w.median_us < best[key].median_us:
            best[key] = w
    out: dict[str, list[Winner]] = {}
    for key in sorted(best, key=lambda t: (t[0], contract.DTYPES.index(t[1]), t[2])):
        out.setdefault(key[0], []).append(best[key])
    return out


def _kernel_names(names: Iterable[str] | None) -> set[str] | None:
    if names is None:
        return None
    names = set(names)
    for n in names:
        try:
            kernels.get(n)
        except ValueError as exc:
            raise BuildError(str(exc)) from None
    return names


def _gpu_name(gpu: str) -> str:
    if gpu.strip().lower() == "auto":
        return gpus.running().spec.name
    return gpu.strip().lower() if gpu.strip().lower() in gpus.KNOWN_GPUS else gpu.strip()


def _from_file(path: Path) -> list[Winner]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BuildError(f"cannot read winners file {path}: {exc.strerror}") from None
    try:
        return loads(text)[1]
    except InvalidWinner as exc:
        raise BuildError(f"refusing {path}: {exc}") from None


def _from_store(url: str | None, gpu: str, names: set[str] | None) -> list[Winner]:
    try:
        from cache import open_store
    except ImportError:
        raise BuildError("this checkout has no winners store (cache.open_store); pass an "
                         "`autotune export` file with --winners FILE") from None
    return list(open_store(url).winners(gpu, sorted(names) if names else None))


def _target(name: str, winners: list[Winner]) -> Target:
    ccs = {w.cc for w in winners}
    if len(ccs) != 1 or not re.fullmatch(r"\d+\.\d+", next(iter(ccs))):
        raise BuildError(f"the winners for {name!r} disagree on the compute capability: {sorted(ccs)}")
    cc = tuple(int(x) for x in next(iter(ccs)).split("."))
    if name in gpus.KNOWN_GPUS:
        spec = gpus.KNOWN_GPUS[name]
        if spec.cc != cc:
            raise BuildError(f"winners for {name} were measured on compute capability "
                             f"{cc[0]}.{cc[1]}, but {name} is {spec.cc[0]}.{spec.cc[1]}")
    else:  # an unnamed GPU the tuner ran on: its architecture's limits
        try:
            spec = replace(gpus.for_arch(f"sm_{cc[0]}{cc[1]}"), name=name)
        except ValueError as exc:
            raise BuildError(str(exc)) from None
    return Target(name, spec)
