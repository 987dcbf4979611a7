"""The kernel contract: what every kernel declares, as plain data.

The tuner, the plugin generator and the network builder read only these records, never a
kernel's code, so a kernel joins all three by adding its own folder under ``kernels/`` whose
``__init__.py`` defines ``KERNEL = Kernel(...)``.

Vocabulary
----------
shape
    ``dict[str, int]`` over the kernel's :class:`Dim` names: sizes (``rows``, ``hidden``) and
    integer switches (``residual``: 0/1, ``kernel_size``). *Dynamic* dims vary at run time and
    are bucketed; the others are *static*: fixed when an engine is built, and compiled in.
config
    ``dict[str, int]``: one value for each parameter of an implementation's space. For Triton
    implementations the keys ``num_warps`` and ``num_stages`` are launch options; every other key
    reaches the kernel through :attr:`Impl.constants`.
constants
    The compile-time values of one (config, static shape, dtype): Triton ``constexpr`` arguments,
    or ``-DNAME=value`` macros for CUDA sources. Launch expressions may use them too.
launch
    What to run: a kernel function, its grid, threads and dynamic shared memory as integer
    expressions (:mod:`kernels.expr`) over dims and constants, and its runtime arguments by name
    (tensors, workspaces, dims, float scalars), in the kernel's parameter order.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import expr
from .gpu import GpuSpec

Shape = Mapping[str, int]
Config = Mapping[str, int]
DTYPES = ("float16", "bfloat16", "float32")
# Relative error (‖out − ref‖ / ‖ref‖ against a float64 reference) allowed per activation dtype.
DEFAULT_TOLERANCE = {"float16": 1e-2, "bfloat16": 1e-2, "float32": 1e-5}


def elt_size(dtype: str) -> int:
    """Bytes per element of an activation dtype."""
    return 4 if dtype == "float32" else 2


def pow2(n: int) -> int:
    """The smallest power of two at least ``n`` (n >= 1): tile widths covering a dim."""
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class Dim:
    """A named size or integer switch of the problem, with the range the kernel supports."""
    name: str
    lo: int = 1
    hi: int = 2**31 - 1
    dynamic: bool = False
    ctype: str = "i32"   # how it is passed when it is a runtime argument


@dataclass(frozen=True)
class TensorSpec:
    """An input or output. ``dims`` are expressions over dims; ``dtype`` "act" means the kernel's
    activation dtype. With ``when``, the tensor exists only where that switch is non-zero."""
    name: str
    dims: tuple[str, ...]
    role: str = "in"
    dtype: str = "act"
    when: str | None = None


@dataclass(frozen=True)
class Launch:
    """One kernel launch. A launch whose ``kernel`` is in the impl's ``fns`` is a Triton launch,
    otherwise a CUDA one, so an implementation may mix both (say Triton GEMMs around a CUDA
    depthwise stage). Expressions see the dims, the config and the constants."""
    kernel: str
    grid: tuple[str, str, str]
    args: tuple[str, ...]
    threads: str = "1"            # CUDA only
    smem: str = "0"               # dynamic shared memory bytes, CUDA only
    num_warps: str = "num_warps"  # Triton only
    num_stages: str | None = None  # Triton only; None leaves Triton's default
    # The kernel waits for the grids before it (griddepcontrol.wait; a Triton kernel does so when
    # its constexpr GDC is 1) before it reads or writes memory they may use, so on sm_90+ it is
    # launched as a programmatic dependent launch: it starts while its predecessor drains. Reads
    # before the wait are allowed only of tensors no kernel writes once the engine is built (the
    # GEMMs' packed weights), and must be stated in the kernel's doc.
    pdl: bool = False


@dataclass(frozen=True)
class Cost:
    """The least work a shape needs: bytes through device memory and arithmetic operations."""
    bytes: int
    flops: int


@dataclass(frozen=True)
class Impl:
    """One implementation (``triton`` or ``cuda``) with its config space."""
    name: str
    sources: tuple[Path, ...]              # every file the binary depends on (source hash)
    space: Mapping[str, tuple[int, ...]]   # parameter -> allowed values, in order
    launches: tuple[Launch, ...]
    constants: Callable[[Config, Shape, str], dict[str, int]]
    valid: Callable[[Config, Shape, str, GpuSpec], str | None]   # reason it's invalid, or None
    heuristic: Callable[[Shape, str, GpuSpec], Config]           # untuned default
    fns: Mapping[str, Any] = field(default_factory=dict)         # Triton JIT functions by name
    workspaces: tuple[tuple[str, str], ...] = ()                 # (name, bytes expression)
    dtypes: tuple[str, ...] | None = None   # activation dtypes it takes; None: all the kernel's
    # CUDA: compiled for the architecture-specific target (arch + "a", e.g. sm_90a for wgmma);
    # such a binary runs only on that exact compute capability, which ``valid`` must require.
    arch_suffix: str = ""
    ccs: tuple[tuple[int, int], ...] | None = None   # compute capabilities it runs on; None: all
    # CUDA: why a compiled binary (cubin, constants) must not run, or None -- for a property of the
    # compiler's output that the source cannot guarantee (kernels/sass.py: overlap_check)
    binary_check: Callable[[bytes, Mapping[str, int]], str | None] | None = None

    def runs_on(self, gpu: GpuSpec | None) -> bool:
        """Whether this implementation exists for ``gpu`` at all (its ``valid`` rule refuses
        every config where it does not)."""
        return self.ccs is None or (gpu is not None and gpu.cc in self.ccs)

    @property
    def lang(self) -> str:
        """"triton", "cuda", or "mixed" — from where each launch's kernel lives."""
        kinds = {"triton" if launch.kernel in self.fns else "cuda" for launch in self.launches}
        return kinds.pop() if len(kinds) == 1 else "mixed"


@dataclass(frozen=True)
class Kernel:
    name: str
    doc: str
    dims: tuple[Dim, ...]
    tensors: tuple[TensorSpec, ...]
    scalars: Mapping[str, float]      # runtime float attributes (eps …) and their defaults
    dtypes: tuple[str, ...]
    impls: tuple[Impl, ...]
    reference: Callable[..., dict]    # (inputs, shape, scalars) -> outputs, computed in float64
    baseline: Callable[..., Any]      # (inputs, shape, scalars) -> the PyTorch op users would run
    make_inputs: Callable[..., dict]  # (shape, torch dtype, device, generator) -> inputs
    cost: Callable[[Shape, str], Cost]
    tune_shapes: Callable[..., list[dict[str, int]]]   # (ModelDims) -> shapes the tuner runs
    examples: tuple[dict[str, int], ...] = ()   # small, odd shapes every implementation must pass
    tolerance: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TOLERANCE))

    def impl(self, name: str) -> Impl:
        for impl in self.impls:
            if impl.name == name:
                return impl
        raise ValueError(f"kernel {self.name!r} has no implementation {name!r}; "
                         f"it has {[i.name for i in self.impls]}")

    def dtypes_of(self, impl: Impl) -> tuple[str, ...]:
        """The activation dtypes ``impl`` takes."""
        return self.dtypes if impl.dtypes is None else impl.dtypes

    def impls_for(self, dtype: str) -> tuple[Impl, ...]:
        """The implementations that take ``dtype``."""
        return tuple(i for i in self.impls if dtype in self.dtypes_of(i))

    @property
    def dynamic_dims(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims if d.dynamic)

    @property
    def static_dims(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims if not d.dynamic)

    def present(self, shape: Shape) -> tuple[TensorSpec, ...]:
        """The tensors that exist for this shape (switches decide the optional ones)."""
        return tuple(t for t in self.tensors if t.when is None or shape[t.when])


@dataclass(frozen=True)
class ModelDims:
    """The model and traffic a tuning run is for; each kernel maps it to its own shapes."""
    batch: int = 32
    seq_len: int = 500
    d_model: int = 256
    heads: int = 4
    ffn: int = 1024
    conv_kernel: int = 31


def check_shape(kernel: Kernel, shape: Shape) -> dict[str, int]:
    """Validate a shape against the kernel's dims; returns it as a plain dict of ints."""
    names = {d.name for d in kernel.dims}
    extra = set(shape) - names
    missing = names - set(shape)
    if extra or missing:
        raise ValueError(f"{kernel.name}: shape {dict(shape)} has unknown dims {sorted(extra)} "
                         f"and lacks {sorted(missing)}")
    out = {}
    for d in kernel.dims:
        v = shape[d.name]
        if type(v) is not int or not d.lo <= v <= d.hi:
            raise ValueError(f"{kernel.name}: {d.name}={v!r} is outside the supported range "
                             f"[{d.lo}, {d.hi}]")
        out[d.name] = v
    return out


def check_config(impl: Impl, config: Config) -> dict[str, int]:
    """A config must name exactly the space's parameters with values from the space.

    This is the gate for configs read back from a cache or a file: anything else (an old space,
    a tampered row) is refused here, before it can reach a compiler or generated source.
    """
    if not isinstance(config, Mapping) or set(config) != set(impl.space):
        got = sorted(config) if isinstance(config, Mapping) else type(config).__name__
        raise ValueError(f"{impl.name} config must have exactly the parameters "
                         f"{sorted(impl.space)}, got {got}")
    out = {}
    for k, allowed in impl.space.items():
        v = config[k]
        if type(v) is not int or v not in allowed:
            raise ValueError(f"{impl.name} config {k}={v!r} is not one of {list(allowed)}")
        out[k] = v
    return out


def resolved_constants(kernel: Kernel, impl: Impl, config: Config, shape: Shape,
                       dtype: str) -> dict[str, int]:
    """Check everything, then the implementation's compile-time constants for it."""
    config = check_config(impl, config)
    shape = check_shape(kernel, shape)
    if dtype not in kernel.dtypes_of(impl):
        raise TypeError(f"{kernel.name}/{impl.name} supports dtypes "
                        f"{list(kernel.dtypes_of(impl))}, not {dtype}")
    consts = impl.constants(config, shape, dtype)
    for k, v in consts.items():
        if not k.isidentifier() or type(v) is not int:
            raise ValueError(f"{kernel.name}/{impl.name}: constant {k}={v!r} is not an int")
    return consts


def launch_env(shape: Shape, consts: Mapping[str, int],
               config: Config | None = None) -> dict[str, int]:
    """What launch expressions see: dims, config values, then constants."""
    clash = (set(shape) & set(consts)) | (set(shape) & set(config or {}))
    if clash:
        raise ValueError(f"config/constants {sorted(clash)} shadow dims of the same name")
    return {**shape, **(config or {}), **consts}


def grid_of(launch: Launch, env: Mapping[str, int]) -> tuple[int, int, int]:
    return tuple(expr.evaluate(g, env) for g in launch.grid)


def _waits(fn) -> bool:
    """Whether a Triton kernel (JIT or interpreted) has the ``GDC: tl.constexpr = 0`` parameter
    through which a programmatic dependent launch makes it wait."""
    gdc = inspect.signature(getattr(fn, "fn", fn)).parameters.get("GDC")
    return gdc is not None and gdc.default == 0 and "constexpr" in str(gdc.annotation)


def validate_declaration(kernel: Kernel) -> None:
    """Static checks on a kernel record: names resolve, expressions parse, spaces are sane."""
    dims = {d.name for d in kernel.dims}
    tensors = {t.name for t in kernel.tensors}
    if len(tensors) != len(kernel.tensors) or tensors & dims or set(kernel.scalars) & (dims | tensors):
        raise ValueError(f"{kernel.name}: tensor, dim and scalar names must be distinct")
    for t in kernel.tensors:
        if t.role not in ("in", "out") or (t.when is not None and t.when not in dims):
            raise ValueError(f"{kernel.name}: tensor {t.name} has a bad role or switch")
        for e in t.dims:
            if expr.names(e) - dims:
                raise ValueError(f"{kernel.name}: tensor {t.name} dim {e!r} uses unknown names")
    for impl in kernel.impls:
        if not impl.space or any(not vals or any(type(v) is not int for v in vals)
                                 for vals in impl.space.values()):
            raise ValueError(f"{kernel.name}/{impl.name}: config space needs int values")
        if impl.dtypes is not None and (not impl.dtypes or set(impl.dtypes) - set(kernel.dtypes)):
            raise ValueError(f"{kernel.name}/{impl.name}: dtypes {impl.dtypes} must be some of "
                             f"the kernel's {kernel.dtypes}")
        args_ok = dims | tensors | set(kernel.scalars) | {w for w, _ in impl.workspaces}
        for launch in impl.launches:
            bad = set(launch.args) - args_ok
            if bad:
                raise ValueError(f"{kernel.name}/{impl.name}: launch {launch.kernel} takes "
                                 f"unknown arguments {sorted(bad)}")
            for e in (*launch.grid, launch.threads, launch.smem, launch.num_warps,
                      launch.num_stages or "1"):
                expr.parse(e)
            fn = impl.fns.get(launch.kernel)
            if launch.pdl and fn is not None and not _waits(fn):
                raise ValueError(f"{kernel.name}/{impl.name}: launch {launch.kernel} is declared "
                                 "pdl, but its Triton kernel has no constexpr GDC = 0 parameter "
                                 "(triton_common.wait_for_predecessor)")
        for _, e in impl.workspaces:
            expr.parse(e)


def bucket_of(kernel: Kernel, shape: Shape) -> dict[str, int]:
    """The bucket a shape falls in: static dims exact, dynamic dims rounded up to a power of two.

    Tuned configs are stored per bucket; the plugin generator's C dispatch applies the same rule.
    """
    shape = check_shape(kernel, shape)
    return {k: (1 << (v - 1).bit_length() if k in kernel.dynamic_dims else v)
            for k, v in shape.items()}


def nearest_bucket(kernel: Kernel, shape: Shape, buckets: list[Mapping[str, int]]):
    """Among tuned ``buckets``, the one to use for ``shape``: static dims must match exactly;
    then the bucket of the shape itself, else the closest in log2 distance summed over the dynamic
    dims (ties go to the larger bucket). None when no bucket has the shape's static dims."""
    target = bucket_of(kernel, shape)
    same_static = [b for b in buckets if all(b[d] == target[d] for d in kernel.static_dims)]
    if not same_static:
        return None

    def distance(b):
        d = sum(abs(b[k].bit_length() - target[k].bit_length()) for k in kernel.dynamic_dims)
        return d, -sum(b[k] for k in kernel.dynamic_dims)

    return min(same_static, key=distance)
