"""Load cubins and launch their kernels through the CUDA driver API (cuda-python).

Modules are loaded once per CUDA context and kept; launches go onto the caller's stream (the
PyTorch current stream by default), so they order with PyTorch work and can be captured in CUDA
graphs.
"""
from __future__ import annotations

import ctypes
import hashlib
import threading

from cuda.bindings import driver as cu

_lock = threading.Lock()
_functions: dict[tuple[int, str, str], cu.CUfunction] = {}
_modules: dict[tuple[int, str], cu.CUmodule] = {}

CTYPES = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "i64": ctypes.c_int64,
          "fp32": ctypes.c_float}


class CudaError(RuntimeError):
    """A CUDA driver call that failed; the message names the call and the driver's error."""


def check(result, what: str):
    """Unpack a cuda-python result tuple, raising CudaError on failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cu.CUresult.CUDA_SUCCESS:
        _, msg = cu.cuGetErrorString(err)
        raise CudaError(f"{what}: {err.name}: {msg.decode() if msg else ''}")
    return values[0] if len(values) == 1 else tuple(values)


def _current_context() -> int:
    import torch

    torch.cuda.init()  # PyTorch makes the device's primary context current on this thread
    ctx = check(cu.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if int(ctx) == 0:
        dev = check(cu.cuDeviceGet(torch.cuda.current_device()), "cuDeviceGet")
        ctx = check(cu.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        check(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    return int(ctx)


def get_function(cubin: bytes, name: str, dynamic_smem: int = 0) -> cu.CUfunction:
    """The kernel ``name`` of ``cubin`` in the current context, loaded on first use."""
    ctx = _current_context()
    digest = hashlib.sha256(cubin).hexdigest()
    key = (ctx, digest, name)
    with _lock:
        fn = _functions.get(key)
        if fn is None:
            mod = _modules.get((ctx, digest))
            if mod is None:
                mod = check(cu.cuModuleLoadData(cubin), "cuModuleLoadData")
                _modules[(ctx, digest)] = mod
            fn = check(cu.cuModuleGetFunction(mod, name.encode()), f"cuModuleGetFunction({name})")
            _functions[key] = fn
        if dynamic_smem > 48 * 1024:
            check(cu.cuFuncSetAttribute(
                fn, cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                dynamic_smem), "cuFuncSetAttribute(max dynamic shared memory)")
            # all of the L1 / shared-memory split as shared memory, so that as many CTAs fit on a
            # multiprocessor as their shared memory allows (as Triton's launcher prefers shared)
            check(cu.cuFuncSetAttribute(
                fn, cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                int(cu.CUshared_carveout.CU_SHAREDMEM_CARVEOUT_MAX_SHARED)),
                "cuFuncSetAttribute(shared memory carveout)")
    return fn


def launch(fn: cu.CUfunction, grid: tuple[int, int, int], threads: int, smem: int, stream: int,
           args: list[tuple[object, str]], pdl: bool = False) -> None:
    """Launch ``fn``; ``args`` are (value, type) pairs with types from CTYPES. ``pdl``: as a
    programmatic dependent launch (sm_90+), which may start before the stream's previous grid
    has finished; the kernel must wait for it (griddepcontrol.wait) before using its results."""
    values = tuple(0 if v is None else v for v, _ in args)
    types = tuple(CTYPES[t] for _, t in args)
    if not pdl:
        check(cu.cuLaunchKernel(fn, *grid, threads, 1, 1, smem, cu.CUstream(stream),
                                (values, types), 0), "cuLaunchKernel")
        return
    config = cu.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = grid
    config.blockDimX, config.blockDimY, config.blockDimZ = threads, 1, 1
    config.sharedMemBytes = smem
    config.hStream = cu.CUstream(stream)
    attr = cu.CUlaunchAttribute()
    attr.id = cu.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value.programmaticStreamSerializationAllowed = 1
    config.attrs = [attr]
    config.numAttrs = 1
    check(cu.cuLaunchKernelEx(config, fn, (values, types), 0), "cuLaunchKernelEx")
