"""Generate the C++ of a plugin library from the kernel contracts and the compiled winners.

What the generated source holds, and where each piece comes from:

* identifiers and string literals: names from the contract (kernels, dims, tensors, scalars,
  kernel entry points), each checked to be a plain C identifier first (:func:`ident`);
* numbers: integer literals written here from ints (:func:`integer`), floats as exact hex literals
  (:func:`real`): a config or bucket value is an int that ``cache.winner.validate`` checked
  against the contract before it gets here;
* expressions: grids, thread counts, shared memory and workspace sizes through
  :func:`kernels.expr.to_c`; output shapes as TensorRT ``IExprBuilder`` calls (:func:`trt_expr`)
  from the same closed grammar;
* bytes (cubins, the JSON manifest): integer arrays, never text.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from kernels import expr
from cache.winner import Winner
from kernels.contract import Impl, Kernel

from .binaries import Binary, CompiledVariant
from .winners import BuildError

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
_RESERVED = {
    # C and C++ keywords that fit _IDENT, and the names the generated functions use themselves
    "alignas", "alignof", "and", "asm", "auto", "bitand", "bitor", "bool", "break", "case",
    "catch", "char", "class", "compl", "const", "constexpr", "continue", "decltype", "default",
    "delete", "do", "double", "else", "enum", "explicit", "export", "extern", "false", "float",
    "for", "friend", "goto", "if", "inline", "int", "long", "mutable", "namespace", "new", "not",
    "noexcept", "nullptr", "operator", "or", "private", "protected", "public", "register",
    "return", "short", "signed", "sizeof", "static", "struct", "switch", "template", "this",
    "throw", "true", "try", "typedef", "typeid", "typename", "union", "unsigned", "using",
    "virtual", "void", "volatile", "while", "xor", "restrict",
    "dtype", "workspace", "workspace_bytes", "stream", "size_t", "int32_t", "int64_t",
}
DTYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "int32": 3, "int64": 4, "uint8": 5,
               "int8": 6}
ARG_KINDS = {"tensor": 0, "workspace": 1, "i32": 2, "i64": 3, "scalar": 4}
MAX_DIMS, MAX_TENSORS, MAX_PARAMS = 16, 32, 64   # ct_runtime.h's kMaxDims, kMaxTensors, kMaxParams


def ident(name: str, what: str) -> str:
    """``name`` if it is a plain C identifier we may use, else BuildError."""
    if not isinstance(name, str) or not _IDENT.fullmatch(name) or name in _RESERVED \
            or name.startswith("ct_"):
        raise BuildError(f"{what} {name!r} cannot be used in generated C: names must match "
                         f"{_IDENT.pattern}, not start with ct_, and not be a C/C++ keyword")
    return name


def integer(value: int) -> str:
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise BuildError(f"{value!r} is not a 64-bit integer")
    return f"INT64_C({value})" if value >= 0 else f"(-INT64_C({-value}))"


def real(value: float) -> str:
    value = float(value)
    if value != value or abs(value) > 3.4e38:
        raise BuildError(f"{value!r} is not a finite float32")
    return f"{value.hex()}f" if value else "0.0f"


def byte_array(name: str, data: bytes, align: int = 64) -> str:
    rows = (",".join(str(b) for b in data[i:i + 40]) for i in range(0, len(data), 40))
    return f"alignas({align}) const unsigned char {name}[] = {{\n" + ",\n".join(rows) + "};\n"


def comment(text: str) -> str:
    """One line of text, safe inside a C comment."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return re.sub(r"[^ -~]|\*/|/\*", " ", line)[:200]


def trt_expr(text: str, dims: dict[str, int]) -> str:
    """An expression as TensorRT IExprBuilder calls over ``v[i]`` (dim ``i``)."""
    ops = {ast.Add: "kSUM", ast.Sub: "kSUB", ast.Mult: "kPROD", ast.FloorDiv: "kFLOOR_DIV"}
    calls = {"cdiv": "kCEIL_DIV", "min": "kMIN", "max": "kMAX"}

    def op(name: str, a: str, b: str) -> str:
        return f"ct::trt::op(eb, nvinfer1::DimensionOperation::{name}, {a}, {b})"

    def em(node: ast.expr) -> str:
        if isinstance(node, ast.Constant):
            return f"eb.constant({integer(node.value)})"
        if isinstance(node, ast.Name):
            return f"v[{dims[node.id]}]"
        if isinstance(node, ast.Call):
            return op(calls[node.func.id], em(node.args[0]), em(node.args[1]))
        a, b = em(node.left), em(node.right)
        if isinstance(node.op, ast.Mod):   # a % b = a - (a // b) * b
            return op("kSUB", a, op("kPROD", op("kFLOOR_DIV", a, b), b))
        return op(ops[type(node.op)], a, b)

    return em(expr.parse(text))


def c_expr(text: str | int, rename: dict[str, str], where: str) -> str:
    """:func:`kernels.expr.to_c`, after checking every name has a binding."""
    if not isinstance(text, int):
        unbound = expr.names(text) - set(rename)
        if unbound:
            raise BuildError(f"{where}: {text!r} uses {sorted(unbound)}, which are neither dims "
                             "nor config values nor constants")
    return expr.to_c(text, rename)


@dataclass(frozen=True)
class Variant:
    """One row of a kernel's dispatch table: a winner and its compiled launches."""
    winner: Winner
    impl: Impl
    compiled: CompiledVariant


@dataclass(frozen=True)
class KernelPlan:
    """A kernel and its variants, in dispatch-table order."""
    kernel: Kernel
    variants: tuple[Variant, ...]

    def dynamic_sources(self) -> dict[str, tuple[int, int]] | str:
        """For TensorRT: each dynamic dim as (input tensor index, axis) of an always-present input
        whose extent it is; or the reason there is none."""
        out = {}
        for d in self.kernel.dynamic_dims:
            for i, t in enumerate(self.kernel.tensors):
                if t.role == "in" and t.when is None and d in t.dims:
                    out[d] = (i, t.dims.index(d))
                    break
            else:
                return f"dynamic dim {d} is not an extent of any always-present input"
        return out


def check(plan: KernelPlan) -> None:
    """Limits of the runtime's fixed-size arrays, and C-safe names throughout."""
    k = plan.kernel
    ident(k.name, "kernel name")
    for d in k.dims:
        ident(d.name, f"{k.name}: dim")
    for t in k.tensors:
        ident(t.name, f"{k.name}: tensor")
        if len(t.dims) > 8:
            raise BuildError(f"{k.name}: tensor {t.name} has more than 8 dims")
    for s in k.scalars:
        ident(s, f"{k.name}: scalar")
    if len(k.dims) > MAX_DIMS or len(k.tensors) > MAX_TENSORS or len(k.scalars) > MAX_TENSORS:
        raise BuildError(f"{k.name}: more dims/tensors/scalars than the runtime supports")
    for v in plan.variants:
        if len(v.impl.workspaces) > MAX_TENSORS:
            raise BuildError(f"{k.name}/{v.impl.name}: more than {MAX_TENSORS} workspaces")
        for cl in v.compiled.launches:
            ident(cl.entry, f"{k.name}: kernel entry point")
            if len(cl.launch.args) + cl.n_scratch > MAX_PARAMS:
                raise BuildError(f"{k.name}: {cl.entry} has more than {MAX_PARAMS} parameters")


class Tables:
    """The binaries and functions of a library, deduplicated, in first-use order."""

    def __init__(self):
        self.binaries: list[Binary] = []
        self.functions: list[tuple[int, str, int]] = []   # (binary, entry, smem_attr)

    def function(self, binary: Binary, entry: str, smem_attr: int) -> int:
        shas = [b.sha256 for b in self.binaries]
        if binary.sha256 not in shas:
            self.binaries.append(binary)
            shas.append(binary.sha256)
        key = (shas.index(binary.sha256), entry, smem_attr)
        if key not in self.functions:
            self.functions.append(key)
        return self.functions.index(key)


def kernels_source(plans: list[KernelPlan], gpu: str, arch: str, cc: tuple[int, int],
                   manifest: bytes, tables: Tables) -> str:
    """ct_kernels.cpp: binaries, tables, per-kernel C ABI functions, the library record."""
    parts = ["// Generated by plugin-gen: kernel tables and C ABI of a conformer-trt library.",
             "// Do not edit; rebuild with plugin-gen build.",
             '#include "conformer_trt.h"', '#include "ct_runtime.h"', "", "namespace {", ""]
    kernel_defs = []
    for plan in plans:
        check(plan)
        parts.append(_kernel_tables(plan, tables))
    for i, b in enumerate(tables.binaries):
        parts.append(byte_array(f"binary_{i}", b.data))
    parts.append("const ct::Binary kBinaries[] = {" + ", ".join(
        f"{{binary_{i}, sizeof(binary_{i})}}" for i in range(len(tables.binaries))) + "};")
    parts.append("const ct::Function kFunctions[] = {" + ", ".join(
        f'{{{b}, "{ident(e, "entry")}", {integer(a)}}}' for b, e, a in tables.functions) + "};")
    parts.append(byte_array("kManifest", manifest + b"\0", align=8).replace(
        "const unsigned char", "const char"))
    parts.append("}  // namespace\n")
    for plan in plans:
        kernel_defs.append(_kernel_record(plan))
    parts += kernel_defs
    names = ", ".join(f"&ct_kernel_{p.kernel.name}" for p in plans)
    parts.append(f"const ct::KernelDesc* const kKernelList[] = {{{names}}};")
    parts.append(
        f'const ct::Library ct::kLibrary = {{"{_plain(gpu)}", "{ident(arch, "arch")}", '
        f"{int(cc[0])}, {int(cc[1])}, kBinaries, {len(tables.binaries)}, kFunctions, "
        f"{len(tables.functions)}, kKernelList, {len(plans)}, kManifest}};\n")
    for plan in plans:
        parts.append(_c_abi(plan.kernel))
    return "\n".join(parts)


def _plain(text: str) -> str:
    """A GPU name for a C string literal: letters, digits, spaces, - _ . ( ) only."""
    if not re.fullmatch(r"[A-Za-z0-9_.\- ()]{1,64}", text):
        raise BuildError(f"GPU name {text!r} is not plain text")
    return text


def _kernel_tables(plan: KernelPlan, tables: Tables) -> str:
    k = plan.kernel
    n = k.name
    dim_index = {d.name: i for i, d in enumerate(k.dims)}
    rename_dims = {d: f"d[{i}]" for d, i in dim_index.items()}
    tensor_index = {t.name: i for i, t in enumerate(k.tensors)}
    scalar_index = {s: i for i, s in enumerate(k.scalars)}
    out = [f"// ---- {n}: {comment(k.doc)}"]
    # tensor extents from the dims
    cases = []
    for i, t in enumerate(k.tensors):
        sets = " ".join(f"e[{a}] = {c_expr(e, rename_dims, f'{n} tensor {t.name}')};"
                        for a, e in enumerate(t.dims))
        cases.append(f"    case {i}: {sets} break;")
    out.append(f"void {n}_extents(int32_t t, const int64_t* d, int64_t* e) {{\n"
               f"  switch (t) {{\n" + "\n".join(cases) + "\n    default: break;\n  }\n}")
    for v, row in enumerate(plan.variants):
        impl, variant, bucket = row.impl, row.compiled, row.winner.bucket
        rename = {**rename_dims, **{name: str(int(val)) for name, val in variant.env.items()}}
        launches = []
        for li, cl in enumerate(variant.launches):
            fname = f"{n}_v{v}_l{li}"
            where = f"{n} variant {v} launch {cl.entry}"
            grid = "; ".join(f"g->grid[{a}] = {c_expr(e, rename, where)}"
                             for a, e in enumerate(cl.launch.grid))
            out.append(f"void {fname}(const int64_t* d, ct::Geometry* g) {{\n  (void)d;\n  {grid};\n"
                       f"  g->threads = {c_expr(cl.threads, rename, where)};\n"
                       f"  g->smem = {c_expr(cl.smem, rename, where)};\n}}")
            workspaces = {w: i for i, (w, _) in enumerate(impl.workspaces)}
            args = []
            for a in cl.launch.args:
                if a in tensor_index:
                    args.append((ARG_KINDS["tensor"], tensor_index[a]))
                elif a in workspaces:
                    args.append((ARG_KINDS["workspace"], workspaces[a]))
                elif a in dim_index:
                    ctype = k.dims[dim_index[a]].ctype
                    args.append((ARG_KINDS["i64" if ctype == "i64" else "i32"], dim_index[a]))
                elif a in scalar_index:
                    args.append((ARG_KINDS["scalar"], scalar_index[a]))
                else:
                    raise BuildError(f"{where}: argument {a!r} is not a tensor, workspace, dim "
                                     "or scalar")
            if args:
                out.append(f"const ct::Arg {fname}_args[] = {{"
                           + ", ".join(f"{{{kind}, {idx}}}" for kind, idx in args) + "};")
            fn = tables.function(cl.binary, cl.entry, cl.smem_attr)
            launches.append(f"{{{fn}, {fname}, {f'{fname}_args' if args else 'nullptr'}, "
                            f"{len(args)}, {int(cl.n_scratch)}, {str(bool(cl.pdl)).lower()}}}")
        out.append(f"const ct::Launch {n}_v{v}_launches[] = {{{', '.join(launches)}}};")
        if impl.workspaces:
            sizes = " ".join(f"b[{i}] = {c_expr(e, rename, f'{n} workspace {w}')};"
                             for i, (w, e) in enumerate(impl.workspaces))
            out.append(f"void {n}_v{v}_ws(const int64_t* d, int64_t* b) {{\n  (void)d;\n  {sizes}\n}}")
        out.append(f"const int64_t {n}_v{v}_bucket[] = {{"
                   + ", ".join(integer(bucket[d.name]) for d in k.dims) + "};")
    variants = []
    for v, row in enumerate(plan.variants):
        nws = len(row.impl.workspaces)
        variants.append(f"{{{DTYPE_CODES[row.winner.dtype]}, {n}_v{v}_bucket, {n}_v{v}_launches, "
                        f"{len(row.compiled.launches)}, {f'{n}_v{v}_ws' if nws else 'nullptr'}, {nws}}}")
    out.append(f"const ct::Variant {n}_variants[] = {{\n  " + ",\n  ".join(variants) + "};")
    sources = plan.dynamic_sources()
    dims = []
    for d in k.dims:
        src = sources.get(d.name, (-1, -1)) if isinstance(sources, dict) else (-1, -1)
        dims.append(f'{{"{d.name}", {integer(d.lo)}, {integer(d.hi)}, {str(d.dynamic).lower()}, '
                    f"{str(d.ctype == 'i64').lower()}, {src[0]}, {src[1]}}}")
    out.append(f"const ct::DimDesc {n}_dims[] = {{" + ", ".join(dims) + "};")
    tensors = []
    for t in k.tensors:
        code = -1 if t.dtype == "act" else DTYPE_CODES.get(t.dtype)
        if code is None:
            raise BuildError(f"{n}: tensor {t.name} has dtype {t.dtype!r}, which the C ABI "
                             f"does not know ({sorted(DTYPE_CODES)})")
        when = -1 if t.when is None else dim_index[t.when]
        tensors.append(f'{{"{t.name}", {str(t.role == "out").lower()}, {code}, {when}, {len(t.dims)}}}')
    out.append(f"const ct::TensorDesc {n}_tensors[] = {{" + ", ".join(tensors) + "};")
    if k.scalars:
        out.append(f"const char* const {n}_scalars[] = {{"
                   + ", ".join(f'"{s}"' for s in k.scalars) + "};")
        out.append(f"const float {n}_scalar_defaults[] = {{"
                   + ", ".join(real(v) for v in k.scalars.values()) + "};")
    return "\n".join(out) + "\n"


def _kernel_record(plan: KernelPlan) -> str:
    k = plan.kernel
    n = k.name
    scalars = f"{n}_scalars, {n}_scalar_defaults" if k.scalars else "nullptr, nullptr"
    return (f"extern const ct::KernelDesc ct_kernel_{n} = {{\"{n}\", {n}_dims, {len(k.dims)}, "
            f"{n}_tensors, {len(k.tensors)}, {scalars}, {len(k.scalars)}, {n}_extents, "
            f"{n}_variants, {len(plan.variants)}}};")


def _abi_params(k: Kernel) -> tuple[str, str]:
    """The C ABI parameter lists of a kernel's launch and workspace functions."""
    tensors = [f"{'void*' if t.role == 'out' else 'const void*'} {t.name}" for t in k.tensors]
    dims = [f"int64_t {d.name}" for d in k.dims]
    scalars = [f"float {s}" for s in k.scalars]
    launch = ", ".join(tensors + dims + scalars + [
        "int32_t dtype", "void* workspace", "size_t workspace_bytes", "CUstream stream"])
    return launch, ", ".join(dims + ["int32_t dtype"])


def _c_abi(k: Kernel) -> str:
    n = k.name
    launch, ws = _abi_params(k)
    tensors = ", ".join(t.name for t in k.tensors)
    dims = ", ".join(d.name for d in k.dims)
    scalars = (f"  const float ct_s[] = {{{', '.join(k.scalars)}}};\n" if k.scalars
               else "  const float* ct_s = nullptr;\n")
    return (f"CT_EXPORT int ct_{n}_launch({launch}) {{\n"
            f"  const void* const ct_t[] = {{{tensors}}};\n"
            f"  const int64_t ct_d[] = {{{dims}}};\n{scalars}"
            f"  return ct::launch(ct_kernel_{n}, dtype, ct_t, ct_d, ct_s, workspace, "
            f"workspace_bytes, stream);\n}}\n\n"
            f"CT_EXPORT size_t ct_{n}_workspace_size({ws}) {{\n"
            f"  const int64_t ct_d[] = {{{dims}}};\n  size_t bytes = 0;\n"
            f"  return ct::workspace_size(ct_kernel_{n}, dtype, ct_d, &bytes) == ct::OK ? bytes "
            f": SIZE_MAX;\n}}\n")


def header(plans: list[KernelPlan], gpu: str, arch: str) -> str:
    """conformer_trt.h: the C ABI of the library, for users."""
    protos = []
    for plan in plans:
        k = plan.kernel
        launch, ws = _abi_params(k)
        shapes = "; ".join(f"{t.name} [{', '.join(t.dims)}]{' (out)' if t.role == 'out' else ''}"
                           + (f" if {t.when}" if t.when else "")
                           + ("" if t.dtype == "act" else f" {t.dtype}") for t in k.tensors)
        protos.append(f"/* {k.name}: {comment(k.doc)}\n   tensors: {comment(shapes)} */\n"
                      f"int ct_{k.name}_launch({launch});\n"
                      f"size_t ct_{k.name}_workspace_size({ws});  /* SIZE_MAX: unsupported */\n")
    return f"""/* conformer-trt plugin library for {_plain(gpu)} ({arch}); generated by plugin-gen.
   Every function returns CT_OK (0) or an error code; ct_last_error() says what went wrong on the
   calling thread. Tensors are device pointers, contiguous and 16-byte aligned; optional tensors
   are null when their switch is 0. dtype is the activation dtype (CT_FLOAT16, CT_BFLOAT16,
   CT_FLOAT32). Launches go onto `stream` and can be captured in CUDA graphs. */
#ifndef CONFORMER_TRT_H
#define CONFORMER_TRT_H
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {{
#endif
typedef struct CUstream_st* CUstream;

enum {{ CT_OK = 0, CT_INVALID_ARGUMENT = 1, CT_UNSUPPORTED = 2, CT_WORKSPACE_TOO_SMALL = 3,
       CT_CUDA_ERROR = 4, CT_NO_DRIVER = 5, CT_WRONG_GPU = 6 }};
enum {{ CT_FLOAT16 = 0, CT_BFLOAT16 = 1, CT_FLOAT32 = 2 }};

const char* ct_last_error(void);      /* this thread's last error message */
const char* ct_manifest(void);        /* JSON: GPU, arch, versions, kernels, buckets, configs */
int ct_check_device(void);            /* CT_WRONG_GPU unless the GPU is {arch} */
/* Generic forms, by kernel name; arrays in the order of the kernel's functions below.
   ct_select: index (manifest order) of the winner serving dims, or -1 (ct_last_error says why). */
int ct_select(const char* kernel, int32_t dtype, const int64_t* dims, int32_t n_dims);
int ct_workspace_size(const char* kernel, int32_t dtype, const int64_t* dims, size_t* bytes);
int ct_launch(const char* kernel, int32_t dtype, const void* const* tensors, const int64_t* dims,
              const float* scalars, void* workspace, size_t workspace_bytes, CUstream stream);

{chr(10).join(protos)}
#ifdef __cplusplus
}}
#endif
#endif
"""


def plugins_source(plans: list[KernelPlan]) -> str:
    """ct_plugins.cpp: each kernel's TensorRT PluginSpec and output-shape function."""
    parts = ["// Generated by plugin-gen: TensorRT plugin specs of a conformer-trt library.",
             '#include "ct_trt.h"', ""]
    specs = []
    for plan in plans:
        k = plan.kernel
        n = k.name
        dims = {d.name: i for i, d in enumerate(k.dims)}
        cases = []
        for i, t in enumerate(k.tensors):
            if t.role != "out":
                continue
            sets = " ".join(f"out.d[{a}] = {trt_expr(e, dims)};" for a, e in enumerate(t.dims))
            cases.append(f"    case {i}: out.nbDims = {len(t.dims)}; {sets} return true;")
        parts.append(f"extern const ct::KernelDesc ct_kernel_{n};\n"
                     f"static bool {n}_output_shape(int32_t t, nvinfer1::IDimensionExpr const* "
                     f"const* v, nvinfer1::IExprBuilder& eb, nvinfer1::DimsExprs& out) {{\n"
                     f"  (void)v; (void)eb; (void)out;\n  switch (t) {{\n" + "\n".join(cases)
                     + "\n    default: return false;\n  }\n}\n"
                     f'static const ct::trt::PluginSpec {n}_plugin = {{&ct_kernel_{n}, '
                     f'"{plugin_name(k)}", "1", {n}_output_shape}};\n')
        specs.append(f"&{n}_plugin")
    parts.append("const ct::trt::PluginSpec* const ct::trt::kPlugins[] = {"
                 + ", ".join(specs) + "};")
    parts.append(f"const int32_t ct::trt::kNumPlugins = {len(specs)};")
    return "\n".join(parts) + "\n"


def plugin_name(kernel: Kernel) -> str:
    return f"ct_{kernel.name}"
