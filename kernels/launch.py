"""Run one implementation and config of a kernel on torch tensors.

This is the contract's executor: it checks the tensors against the kernel's declaration, works
out the constants, grid and arguments from the launch description, then calls the Triton JIT
function or launches the NVRTC-compiled cubin through the driver API on the current stream.
Everything that can be wrong with the input is reported before anything launches.
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping

import torch

from . import contract, expr
from .contract import Impl, Kernel

_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                 "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8,
                 "int8": torch.int8}
CUDA_DTYPE_ID = {"float16": 0, "bfloat16": 1, "float32": 2}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    for k, v in _TORCH_DTYPES.items():
        if v == dtype:
            return k
    raise TypeError(f"unsupported dtype {dtype}")


def source_hash(impl: Impl) -> str:
    h = hashlib.sha256()
    for path in impl.sources:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cuda_source(impl: Impl, consts: Mapping[str, int]) -> str:
    """The translation unit of a CUDA implementation for one set of constants: its headers, the
    constants as ``#define`` lines (after the headers, so they cannot touch CUDA's own), then the
    kernel source. Python files among the sources (a mixed impl's Triton kernels) are not part
    of it."""
    *headers, main = _cuda_files(impl)
    defines = "".join(f"#define {k} {int(v)}\n" for k, v in sorted(consts.items()))
    return f"{_read_sources(tuple(headers))}\n{defines}#line 1 \"{main.name}\"\n{_read_sources((main,))}"


def _cuda_files(impl: Impl) -> tuple:
    return tuple(p for p in impl.sources if p.suffix != ".py")


@functools.lru_cache(maxsize=None)
def _read_sources(paths) -> str:
    return "\n".join(p.read_text() for p in paths)


def cuda_macros(dtype: str) -> dict[str, int]:
    return {"CT_DTYPE": CUDA_DTYPE_ID[dtype]}


@functools.lru_cache(maxsize=None)
def _gpu_spec():
    from .gpu import running

    return running().spec


def current_arch() -> str:
    return _gpu_spec().arch


def pdl_enabled(lang: str) -> bool:
    """Whether a launch declared ``pdl`` is made a programmatic dependent launch: on sm_90+,
    with a Triton that has ``launch_pdl`` and ``tl.extra.cuda.gdc_wait`` (3.4+) for a Triton
    kernel, unless CONFORMER_TRT_PDL=0 (an A/B switch; results are the same either way)."""
    if interpreting() or os.environ.get("CONFORMER_TRT_PDL", "1") == "0" or _gpu_spec().cc < (9, 0):
        return False
    return lang == "cuda" or triton_has_pdl()


@functools.lru_cache(maxsize=None)
def triton_pdl_args() -> dict:
    """Launch arguments of a Triton kernel that calls ``triton_common.wait_for_predecessor(GDC)``:
    a programmatic dependent launch where :func:`pdl_enabled`, else GDC=0 (a plain launch)."""
    return {"GDC": 1, "launch_pdl": True} if pdl_enabled("triton") else {"GDC": 0}


def triton_has_pdl() -> bool:
    """Whether this Triton can make a programmatic dependent launch of a kernel that waits."""
    from triton.backends.nvidia.compiler import CUDAOptions

    from .triton_common import HAS_GDC

    return "launch_pdl" in CUDAOptions.__dataclass_fields__ and HAS_GDC


def bind(kernel: Kernel, tensors: Mapping[str, torch.Tensor | None], shape, dtype: str,
         lang: str = "triton") -> dict[str, int]:
    """Check tensors against the declaration; TypeError/ValueError naming the problem."""
    shape = contract.check_shape(kernel, shape)
    if dtype not in kernel.dtypes:
        raise TypeError(f"{kernel.name}: dtype {dtype} not supported; use one of {list(kernel.dtypes)}")
    present = {t.name for t in kernel.present(shape)}
    unknown = set(tensors) - {t.name for t in kernel.tensors}
    if unknown:
        raise ValueError(f"{kernel.name}: unknown tensors {sorted(unknown)}")
    cpu_ok = lang == "triton" and interpreting()
    for spec in kernel.tensors:
        t = tensors.get(spec.name)
        if spec.name not in present:
            if t is not None:
                raise ValueError(f"{kernel.name}: {spec.name} given but switch {spec.when}=0")
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{kernel.name}: {spec.name} must be a torch.Tensor, got {type(t).__name__}")
        want = dtype if spec.dtype == "act" else spec.dtype
        if t.dtype != _TORCH_DTYPES[want]:
            raise TypeError(f"{kernel.name}: {spec.name} has dtype {t.dtype}, expected {want}")
        dims = tuple(expr.evaluate(e, shape) for e in spec.dims)
        if tuple(t.shape) != dims:
            raise ValueError(f"{kernel.name}: {spec.name} has shape {tuple(t.shape)}, expected "
                             f"{dims} from {dict(zip(spec.dims, dims))}")
        if not t.is_contiguous():
            raise ValueError(f"{kernel.name}: {spec.name} must be contiguous")
        if t.device.type != "cuda" and not cpu_ok:
            raise ValueError(f"{kernel.name}: {spec.name} is on {t.device}; a CUDA tensor is needed")
        if t.data_ptr() % 16:
            raise ValueError(f"{kernel.name}: {spec.name} is not 16-byte aligned (a view at an "
                             "offset?); pass a fresh contiguous tensor")
    devices = {t.device for t in tensors.values() if t is not None}
    if len(devices) > 1:
        raise ValueError(f"{kernel.name}: tensors are on different devices {sorted(map(str, devices))}")
    return shape


def run(kernel: Kernel, impl: Impl, config, tensors: Mapping[str, torch.Tensor | None], shape,
        scalars: Mapping[str, float] | None = None) -> None:
    """Launch ``impl`` with ``config``; ``tensors`` holds inputs and preallocated outputs."""
    dtype = _act_dtype(kernel, tensors)
    shape = bind(kernel, tensors, shape, dtype, impl.lang)
    scalars = {**kernel.scalars, **(scalars or {})}
    consts = contract.resolved_constants(kernel, impl, config, shape, dtype)
    reason = None if interpreting() else impl.valid(config, shape, dtype, _gpu_spec())
    if reason:
        raise ValueError(f"{kernel.name}/{impl.name}: config {dict(config)} is invalid for "
                         f"{shape}: {reason}")
    env = contract.launch_env(shape, consts, config)
    device = next(t.device for t in tensors.values() if t is not None)
    work = {name: torch.empty(max(expr.evaluate(size, env), 1), dtype=torch.uint8, device=device)
            for name, size in impl.workspaces}
    values = {**{k: v for k, v in tensors.items() if v is not None}, **work}
    ctypes_of = {d.name: d.ctype for d in kernel.dims}
    for launch in impl.launches:
        grid = contract.grid_of(launch, env)
        if launch.kernel in impl.fns:
            _launch_triton(impl, launch, grid, env, values, shape, scalars, consts)
        else:
            _launch_cuda(kernel, impl, launch, grid, env, values, shape, scalars, consts, dtype,
                         ctypes_of)


def _act_dtype(kernel: Kernel, tensors) -> str:
    for spec in kernel.tensors:
        t = tensors.get(spec.name)
        if spec.dtype == "act" and isinstance(t, torch.Tensor):
            return dtype_name(t.dtype)
    raise ValueError(f"{kernel.name}: no activation tensor given")


def _launch_triton(impl, launch, grid, env, values, shape, scalars, consts) -> None:
    fn = impl.fns[launch.kernel]
    placeholder = next(v for v in values.values() if isinstance(v, torch.Tensor))
    args = []
    for name in launch.args:
        if name in shape:
            args.append(shape[name])
        elif name in scalars:
            args.append(float(scalars[name]))
        else:  # an absent optional tensor: the constexpr switch keeps the kernel off it
            args.append(values.get(name, placeholder))
    wanted = set(fn.arg_names)
    kwargs = {k: v for k, v in consts.items() if k in wanted}
    opts = {"num_warps": expr.evaluate(launch.num_warps, env)}
    if launch.num_stages is not None:
        opts["num_stages"] = expr.evaluate(launch.num_stages, env)
    if launch.pdl:
        kwargs.update(triton_pdl_args())
    fn[grid](*args, **kwargs, **opts)


def cuda_cubin(impl: Impl, consts: Mapping[str, int], dtype: str, arch: str) -> bytes:
    """Compile a CUDA implementation for one set of constants and an architecture (cached);
    ``arch`` is the family (sm_90), the impl's ``arch_suffix`` picks its specific target. A
    binary that the impl's ``binary_check`` refuses raises BinaryRefused (before any launch)."""
    return _cuda_binary(cuda_source(impl, consts), _cuda_files(impl)[-1].name, arch + impl.arch_suffix,
                        tuple(cuda_macros(dtype).items()), impl.binary_check, tuple(consts.items()))


class BinaryRefused(ValueError):
    """A compiled binary that its implementation's ``binary_check`` refuses to run."""


@functools.lru_cache(maxsize=256)
def _cuda_binary(source: str, name: str, arch: str, macros: tuple, check, consts: tuple) -> bytes:
    from . import nvrtc

    cubin = nvrtc.compile_source(source, name, arch, dict(macros))
    reason = check(cubin, dict(consts)) if check else None
    if reason:
        raise BinaryRefused(f"{name} for {arch} with {dict(consts)}: {reason}")
    return cubin


def _launch_cuda(kernel, impl, launch, grid, env, values, shape, scalars, consts, dtype,
                 ctypes_of) -> None:
    from . import driver

    cubin = cuda_cubin(impl, consts, dtype, current_arch())
    smem = expr.evaluate(launch.smem, env)
    fn = driver.get_function(cubin, launch.kernel, smem)
    args = []
    for name in launch.args:
        if name in shape:
            args.append((shape[name], ctypes_of[name]))
        elif name in scalars:
            args.append((float(scalars[name]), "fp32"))
        else:
            t = values.get(name)
            args.append((None if t is None else t.data_ptr(), "ptr"))
    stream = torch.cuda.current_stream().cuda_stream
    driver.launch(fn, grid, expr.evaluate(launch.threads, env), smem, stream, args,
                  pdl=launch.pdl and pdl_enabled("cuda"))


def empty_outputs(kernel: Kernel, shape, dtype: str, device, poison: bool = False
                  ) -> dict[str, torch.Tensor]:
    """Allocate the outputs of ``shape``; ``poison`` fills them with NaN (or -1 for integers) so
    that an element the kernel fails to write cannot pass a check."""
    out = {}
    for spec in kernel.present(shape):
        if spec.role != "out":
            continue
        tdt = torch_dtype(dtype if spec.dtype == "act" else spec.dtype)
        dims = tuple(expr.evaluate(e, shape) for e in spec.dims)
        out[spec.name] = (torch.full(dims, float("nan") if tdt.is_floating_point else -1,
                                     dtype=tdt, device=device) if poison
                          else torch.empty(dims, dtype=tdt, device=device))
    return out


def default_config(kernel: Kernel, impl: Impl, shape, dtype: str) -> dict[str, int]:
    """The config of ``impl`` for ``shape``: the tuner's winner for this GPU and the shape's
    bucket when the winners store has one (``autotune run``), else the untuned heuristic. The
    interpreter (no GPU) always gets the heuristic."""
    spec = _gpu_spec() if not interpreting() else None
    if spec is not None:
        tuned = _tuned_config(kernel.name, impl.name, dtype,
                              tuple(contract.bucket_of(kernel, shape).items()))
        if tuned is not None and impl.valid(dict(tuned), shape, dtype, spec) is None:
            return dict(tuned)
    config = impl.heuristic(shape, dtype, spec)
    return contract.check_config(impl, config)


@functools.lru_cache(maxsize=None)
def _tuned_config(kernel: str, impl: str, dtype: str, bucket: tuple) -> tuple | None:
    """The stored winner's config, looked up once per process and bucket; None when there is
    none or the store cannot be read (a missing or unreadable database falls back silently)."""
    try:
        from cache import best_config

        found = best_config(_gpu_spec().name, kernel, dtype, dict(bucket), impl=impl)
    except Exception:  # noqa: BLE001 - any failure here means "use the heuristic"
        return None
    return None if found is None else tuple(found.config.items())


def tuned_impl(kernel: Kernel, shape, dtype: str) -> str | None:
    """The implementation of the fastest stored winner for this GPU and the shape's bucket
    (``autotune run``), or None (no winner, no store, or the interpreter)."""
    if interpreting():
        return None
    return _tuned_impl(kernel.name, dtype, tuple(contract.bucket_of(kernel, shape).items()))


@functools.lru_cache(maxsize=None)
def _tuned_impl(kernel: str, dtype: str, bucket: tuple) -> str | None:
    try:
        from cache import best_config

        found = best_config(_gpu_spec().name, kernel, dtype, dict(bucket))
    except Exception:  # noqa: BLE001 - any failure here means "no tuned choice"
        return None
    return None if found is None else found.impl


def call(kernel: Kernel, inputs: Mapping[str, torch.Tensor | None], shape, impl: str,
         config=None, scalars: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Allocate outputs, pick a config when none is given, run; returns the outputs by name."""
    chosen = kernel.impl(impl)
    dtype = _act_dtype(kernel, inputs)
    shape = contract.check_shape(kernel, shape)
    device = next(t.device for t in inputs.values() if isinstance(t, torch.Tensor))
    outputs = empty_outputs(kernel, shape, dtype, device)
    if config is None:
        config = default_config(kernel, chosen, shape, dtype)
    run(kernel, chosen, config, {**inputs, **outputs}, shape, scalars)
    return outputs
