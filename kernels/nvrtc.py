"""Compile CUDA C++ to cubins with NVRTC (cuda-python), cached on disk.

No nvcc at run time: NVRTC comes from the ``cuda-toolkit[nvrtc]`` wheel and the CUDA headers
(``cuda_fp16.h`` …) from ``cuda-toolkit[cudart]``, both found by cuda-pathfinder. A cubin is cached
under a key made of the source text, the options, the architecture and NVRTC's version, so a
changed source or option never reuses a stale binary.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path


class NvrtcError(RuntimeError):
    """A CUDA source that NVRTC could not compile; the message carries the compiler's log."""


def cache_dir() -> Path:
    root = os.environ.get("CONFORMER_TRT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "conformer_trt")
    return Path(root) / "cubin"


@lru_cache(maxsize=1)
def _include_dirs() -> tuple[str, ...]:
    from cuda import pathfinder

    found = pathfinder.find_nvidia_header_directory("cudart")
    if found is None:
        raise NvrtcError("CUDA headers (cuda_fp16.h) not found: install cuda-toolkit[cudart] or "
                         "set CUDA_HOME to a CUDA toolkit")
    return (found,)


@lru_cache(maxsize=1)
def version() -> str:
    from cuda.bindings import nvrtc

    err, major, minor = nvrtc.nvrtcVersion()
    _check(err, "nvrtcVersion")
    return f"{major}.{minor}"


def _check(err, what: str) -> None:
    from cuda.bindings import nvrtc

    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcError(f"{what} failed: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")


def options(arch: str, macros: Mapping[str, int | str]) -> list[str]:
    """The NVRTC options for an architecture and a set of macros (config values)."""
    if not arch.startswith("sm_"):
        raise ValueError(f"architecture must look like 'sm_90', got {arch!r}")
    opts = [f"--gpu-architecture={arch}", "-std=c++17", "--use_fast_math", "-lineinfo"]
    for name, value in sorted(macros.items()):
        if not str(name).isidentifier() or not isinstance(value, (int, str)) or isinstance(value, bool):
            raise ValueError(f"macro {name}={value!r} is not an identifier with an int value")
        if isinstance(value, str) and not value.isidentifier():
            raise ValueError(f"macro {name}={value!r}: string values must be identifiers")
        opts.append(f"-D{name}={value}")
    return opts + [f"-I{d}" for d in _include_dirs()]


def cache_key(source: str, opts: list[str]) -> str:
    h = hashlib.sha256()
    for part in (source, "\0".join(o for o in opts if not o.startswith("-I")), version()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def compile_source(source: str, name: str, arch: str, macros: Mapping[str, int | str]) -> bytes:
    """Compile ``source`` (file name ``name`` for messages) to a cubin for ``arch``; cached."""
    opts = options(arch, macros)
    path = cache_dir() / f"{cache_key(source, opts)}.cubin"
    if path.is_file():
        return path.read_bytes()
    cubin = _compile(source, name, opts)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: concurrent compilers of the same key never see a partial file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(cubin)
    os.replace(tmp, path)
    return cubin


def compile_file(path: Path, arch: str, macros: Mapping[str, int | str]) -> bytes:
    return compile_source(Path(path).read_text(), Path(path).name, arch, macros)


def _compile(source: str, name: str, opts: list[str]) -> bytes:
    from cuda.bindings import nvrtc

    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    _check(err, "nvrtcCreateProgram")
    try:
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            err, size = nvrtc.nvrtcGetProgramLogSize(prog)
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, log)
            raise NvrtcError(f"NVRTC failed to compile {name} with {' '.join(opts)}:\n"
                             + log.decode(errors="replace").rstrip("\0 \n"))
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        _check(err, "nvrtcGetCUBINSize")
        cubin = b" " * size
        (err,) = nvrtc.nvrtcGetCUBIN(prog, cubin)
        _check(err, "nvrtcGetCUBIN")
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
