"""Compile one winner's launches for the target architecture, on any machine.

Triton launches are compiled ahead of time with the target named explicitly
(``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``, as Triton's own
``triton/tools/compile.py`` does): pointer parameters are declared 16-byte aligned (the contract
requires it, and the C ABI checks it), dims and scalars are plain runtime parameters, and the
constants are constexprs. Triton kernels take trailing scratch pointers after their own parameters
(one, global scratch, in Triton 3.3; two, with profile scratch, later): their number is read from
the PTX entry's parameter list, and they are passed as null, which is only right while their
sizes are 0, so anything else is refused. CUDA launches are compiled with NVRTC
(``kernels.launch.cuda_cubin``).

A launch the contract declares ``pdl`` becomes a programmatic dependent launch when the target is
sm_90 or newer: a Triton kernel is compiled with its constexpr ``GDC`` = 1 (so it waits for its
predecessor before touching memory), a CUDA kernel waits by itself on those architectures, and
the runtime launches it with cuLaunchKernelEx and programmatic stream serialization.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from kernels import contract, expr, launch as launcher
from kernels.contract import Impl, Kernel, Launch

from .winners import BuildError, Target

_TRITON_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "int32": "i32",
                  "int64": "i64", "uint8": "u8", "int8": "i8"}
STATIC_SMEM_LIMIT = 48 * 1024   # beyond this a kernel must opt in to more shared memory


@dataclass(frozen=True)
class Binary:
    data: bytes
    lang: str    # "triton" or "cuda"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class CompiledLaunch:
    """A launch ready for the tables: its cubin and entry, and how to size and call it."""
    launch: Launch
    binary: Binary
    entry: str
    threads: str | int   # expression over the launch environment, or a number
    smem: str | int
    smem_attr: int       # opt-in dynamic shared memory: 0 none, > 0 bytes, -1 the device's limit
    n_scratch: int       # trailing null pointer parameters
    pdl: bool = False    # launched as a programmatic dependent launch


@dataclass(frozen=True)
class CompiledVariant:
    consts: dict[str, int]
    env: dict[str, int]   # config and constants: what launch expressions see besides the dims
    launches: tuple[CompiledLaunch, ...]


def compile_variant(kernel: Kernel, impl: Impl, config, bucket, dtype: str,
                    target: Target) -> CompiledVariant:
    """All launches of ``impl`` with ``config`` for a bucket (its static dims) and dtype."""
    consts = contract.resolved_constants(kernel, impl, config, bucket, dtype)
    reason = impl.valid(config, bucket, dtype, target.spec)
    if reason:
        raise BuildError(f"{kernel.name}/{impl.name} config {dict(config)} is not valid on "
                         f"{target.gpu} for {dict(bucket)} {dtype}: {reason}; re-tune")
    statics = {d: bucket[d] for d in kernel.static_dims}
    env = {**config, **consts}
    contract.launch_env(bucket, consts, config)   # refuses constants that shadow dims
    out = []
    pdl = target.cc >= (9, 0)
    for launch in impl.launches:
        if launch.kernel in impl.fns:
            out.append(_triton(kernel, impl, launch, consts, {**statics, **env}, dtype, target,
                               launch.pdl and pdl and launcher.triton_has_pdl()))
        else:
            out.append(_cuda(impl, launch, consts, {**statics, **env}, dtype, target,
                             launch.pdl and pdl))
    return CompiledVariant(consts, env, tuple(out))


def _triton(kernel, impl, launch, consts, static_env, dtype, target, pdl) -> CompiledLaunch:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction

    fn = impl.fns[launch.kernel]
    where = f"{kernel.name}/{impl.name} launch {launch.kernel}"
    if not isinstance(fn, JITFunction):
        raise BuildError(f"{where}: {type(fn).__name__} is not a Triton JIT function (was "
                         "TRITON_INTERPRET=1 set when the kernels were imported? Ahead-of-time "
                         "compilation needs a process without it)")
    params = fn.params
    if len(launch.args) > len(params):
        raise BuildError(f"{where}: {len(launch.args)} arguments for {len(params)} parameters")
    if pdl:   # registration checked that the kernel has the GDC constexpr (contract.py)
        consts = {**consts, "GDC": 1}
    signature, constexprs, aligned = {}, {}, {}
    for i, param in enumerate(params):
        if i < len(launch.args):
            arg = launch.args[i]
            if param.is_constexpr:   # a static dim passed to a constexpr parameter
                if arg not in static_env:
                    raise BuildError(f"{where}: constexpr parameter {param.name} gets {arg}, "
                                     "which is not a static dim")
                constexprs[param.name] = static_env[arg]
            else:
                signature[param.name] = _triton_type(kernel, impl, arg, dtype)
                if signature[param.name].startswith("*"):
                    aligned[(i,)] = [["tt.divisibility", 16]]
                continue
        elif param.name in consts:
            constexprs[param.name] = consts[param.name]
        elif param.has_default:
            constexprs[param.name] = param.default
        else:
            raise BuildError(f"{where}: parameter {param.name} gets no value")
        signature[param.name] = "constexpr"
    gpu_target = GPUTarget("cuda", target.cc[0] * 10 + target.cc[1], 32)
    backend = make_backend(gpu_target)
    options = {"num_warps": expr.evaluate(launch.num_warps, static_env)}
    if launch.num_stages is not None:
        options["num_stages"] = expr.evaluate(launch.num_stages, static_env)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, aligned), target=gpu_target,
                              options=backend.parse_options(options).__dict__)
    md = compiled.metadata
    unsupported = {"global scratch": getattr(md, "global_scratch_size", 0),
                   "profile scratch": getattr(md, "profile_scratch_size", 0),
                   "a cluster launch": getattr(md, "num_ctas", 1) != 1,
                   "a cooperative launch": getattr(md, "launch_cooperative_grid", False),
                   "programmatic dependent launch": getattr(md, "launch_pdl", False)}
    for what, used in unsupported.items():
        if used:
            raise BuildError(f"{where}: the compiled kernel needs {what}, which the C ABI does "
                             "not provide")
    if pdl and "griddepcontrol.wait" not in compiled.asm["ptx"]:
        raise BuildError(f"{where}: compiled with GDC=1, but the kernel never waits for its "
                         "predecessor (no griddepcontrol.wait), so it cannot be launched early")
    n_params = _ptx_param_count(compiled.asm["ptx"], md.name)
    runtime = sum(1 for v in signature.values() if v != "constexpr")
    if not 0 <= n_params - runtime <= 2:
        raise BuildError(f"{where}: the PTX entry has {n_params} parameters for {runtime} "
                         "runtime arguments; this Triton version's calling convention is unknown")
    return CompiledLaunch(launch, Binary(bytes(compiled.asm["cubin"]), "triton"), md.name,
                          threads=32 * md.num_warps, smem=md.shared,
                          smem_attr=md.shared if md.shared > STATIC_SMEM_LIMIT else 0,
                          n_scratch=n_params - runtime, pdl=pdl)


def _triton_type(kernel: Kernel, impl: Impl, arg: str, dtype: str) -> str:
    dims = {d.name: d for d in kernel.dims}
    tensors = {t.name: t for t in kernel.tensors}
    if arg in dims:
        return "i64" if dims[arg].ctype == "i64" else "i32"
    if arg in kernel.scalars:
        return "fp32"
    if arg in tensors:
        spec = tensors[arg]
        return "*" + _TRITON_DTYPES[dtype if spec.dtype == "act" else spec.dtype]
    return "*u8"   # a workspace


def _ptx_param_count(ptx: str, name: str) -> int:
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if not m:
        raise BuildError(f"no .entry {name} in Triton's PTX")
    return len(re.findall(r"\.param\b", m.group(1)))


def _cuda(impl, launch, consts, static_env, dtype, target, pdl) -> CompiledLaunch:
    cubin = launcher.cuda_cubin(impl, consts, dtype, target.arch)
    smem_names = expr.names(launch.smem)
    if smem_names <= set(static_env):   # known now: opt in only when it is needed
        smem = expr.evaluate(launch.smem, static_env)
        attr = smem if smem > STATIC_SMEM_LIMIT else 0
    else:                                # depends on dynamic dims: allow the device's limit
        attr = -1
    return CompiledLaunch(launch, Binary(cubin, "cuda"), launch.kernel, threads=launch.threads,
                          smem=launch.smem, smem_attr=attr, n_scratch=0, pdl=pdl)
