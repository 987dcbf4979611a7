"""The host toolchain: the C++ compiler, CUDA's and TensorRT's headers, and compiling the library.

Found before any kernel is compiled, so a missing piece is reported at once:

* the compiler: ``--cxx``, else ``$CXX``, else ``g++``;
* CUDA headers (cuda.h for the driver's types, cuda_runtime_api.h for TensorRT's): ``--cuda-include``,
  else ``$CUDA_HOME/include`` or ``$CUDA_PATH/include``, else the ``cuda-toolkit[cudart]`` wheel
  (cuda-pathfinder), else ``/usr/local/cuda/include``;
* TensorRT headers (optional): ``--tensorrt-include``, else ``$TENSORRT_ROOT/include``, else the
  usual install paths; without them the TensorRT layer is skipped and only the C ABI is built.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .winners import BuildError

CXXFLAGS = ["-O2", "-fPIC", "-std=c++17", "-fvisibility=hidden", "-Wall"]
# The library needs nothing at link time but libdl and libpthread: TensorRT and the CUDA driver
# are reached through virtual methods and dlopen, so -z defs proves no symbol of theirs is used.
LDFLAGS = ["-shared", "-Wl,-z,defs", "-ldl", "-lpthread"]
TENSORRT_PATHS = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu",
                  "/usr/local/TensorRT/include", "/opt/tensorrt/include", "/usr/include")


def compiler(cxx: str | None = None) -> list[str]:
    """The C++ compiler command, checked to exist."""
    command = shlex.split(cxx or os.environ.get("CXX") or "g++")
    if not command or shutil.which(command[0]) is None:
        raise BuildError(f"no C++ compiler: {command[0] if command else '(empty CXX)'!r} is not "
                         "on PATH; install g++ (e.g. apt-get install g++) or name one with --cxx "
                         "or CXX")
    return command


def compiler_version(command: list[str]) -> str:
    done = subprocess.run([*command, "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout else "unknown"


def cuda_include(explicit: str | Path | None = None, runtime: bool = False) -> Path:
    """A directory with cuda.h, and with ``runtime`` also a complete cuda_runtime_api.h (the
    TensorRT headers include it; the cudart wheel of CUDA 13 lacks its crt/ headers)."""
    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        for var in ("CUDA_HOME", "CUDA_PATH"):
            if os.environ.get(var):
                candidates.append(Path(os.environ[var]) / "include")
        try:
            from cuda import pathfinder

            found = pathfinder.find_nvidia_header_directory("cudart")
            if found:
                candidates.append(Path(found))
        except ImportError:
            pass
        candidates.append(Path("/usr/local/cuda/include"))
    need = ["cuda.h"] + (["cuda_runtime_api.h", "crt/host_defines.h"] if runtime else [])
    for c in candidates:
        if all((c / n).is_file() for n in need):
            return c
    raise BuildError(f"CUDA headers ({', '.join(need)}) not found in {[str(c) for c in candidates]}:"
                     " install a CUDA toolkit or pip install 'cuda-toolkit[cudart]', set "
                     "CUDA_HOME, or pass --cuda-include DIR")


def tensorrt_include(explicit: str | Path | None = None) -> Path | None:
    """TensorRT's include directory, or None when there is none to use."""
    if explicit:
        path = Path(explicit)
        if not (path / "NvInferRuntime.h").is_file():
            raise BuildError(f"--tensorrt-include {path}: no NvInferRuntime.h there")
        return path
    candidates = [Path(os.environ["TENSORRT_ROOT"]) / "include"] if os.environ.get("TENSORRT_ROOT") else []
    candidates += [Path(p) for p in TENSORRT_PATHS]
    return next((c for c in candidates if (c / "NvInferRuntime.h").is_file()), None)


def tensorrt_version(include: Path) -> str:
    """TensorRT's version from NvInferVersion.h (10.x defines the numbers directly or through
    TRT_*_ENTERPRISE macros)."""
    text = (include / "NvInferVersion.h").read_text(errors="replace")
    defines = dict(re.findall(r"#define\s+(\w+)\s+(\w+)", text))

    def value(name: str) -> str:
        v = defines.get(name, "?")
        return defines.get(v, v) if not v.isdigit() else v

    return ".".join(value(f"NV_TENSORRT_{p}") for p in ("MAJOR", "MINOR", "PATCH"))


def build_library(command: list[str], sources: list[Path], includes: list[Path], out: Path) -> None:
    """Compile ``sources`` (in parallel) and link them into the shared library ``out``."""
    objects = [out.parent / "obj" / (s.stem + ".o") for s in sources]
    objects[0].parent.mkdir(parents=True, exist_ok=True)
    flags = CXXFLAGS + [f"-I{d}" for d in includes]

    def compile_one(pair):
        source, obj = pair
        _run([*command, *flags, "-c", str(source), "-o", str(obj)], f"compiling {source.name}")

    with ThreadPoolExecutor(max_workers=max(1, min(len(sources), os.cpu_count() or 1))) as pool:
        list(pool.map(compile_one, zip(sources, objects)))
    _run([*command, *map(str, objects), "-o", str(out), *LDFLAGS], f"linking {out.name}")


def _run(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True)
    except OSError as exc:
        raise BuildError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        log = (done.stderr or done.stdout).strip()
        raise BuildError(f"{what} failed ({shlex.join(argv[:1])} exit {done.returncode}):\n"
                         + log[-4000:])
