"""``plugin-gen build``: winners → compiled kernels → generated C++ → one shared library.

The output directory holds ``libconformer_trt.so`` (the C ABI, and the TensorRT plugins when
TensorRT's headers were found), ``conformer_trt.h`` (the C ABI), ``manifest.json`` (the manifest
also embedded in the library, see :func:`manifest`) and ``src/`` (the sources it was built from).
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

import kernels
from cache.winner import Winner

from . import binaries, codegen, toolchain, winners as winners_mod
from .codegen import KernelPlan, Tables, Variant
from .winners import BuildError, Target

HERE = Path(__file__).parent
RUNTIME = ("ct_runtime.h", "ct_runtime.cpp")
TENSORRT = ("ct_trt.h", "ct_trt.cpp")
LIBRARY = "libconformer_trt.so"


@dataclass(frozen=True)
class BuildResult:
    library: Path
    header: Path
    manifest_path: Path
    manifest: dict
    tensorrt_skipped: str | None   # why the TensorRT layer is not in the library, or None


def build(gpu: str, out: str | Path, *, db: str | None = None,
          winners_file: str | Path | None = None, winners: Iterable[Winner] | None = None,
          kernel_names: Iterable[str] | None = None, tensorrt_include: str | Path | None = None,
          cuda_include: str | Path | None = None, cxx: str | None = None,
          log: Callable[[str], None] = print, progress: bool = False) -> BuildResult:
    """Build the plugin library for ``gpu`` into the directory ``out``."""
    command = toolchain.compiler(cxx)
    trt_headers = toolchain.tensorrt_include(tensorrt_include)
    cuda_headers = toolchain.cuda_include(cuda_include, runtime=trt_headers is not None)
    target, rows = winners_mod.load(gpu, db=db, winners_file=winners_file, winners=winners,
                                    kernel_names=kernel_names)
    chosen = winners_mod.fastest(rows)
    log(f"plugin-gen: {sum(map(len, chosen.values()))} winners of {len(chosen)} kernels for "
        f"{target.gpu} ({target.arch})")
    plans = _compile(chosen, target, progress)

    tables = Tables()
    for plan in plans:
        for v in plan.variants:
            for cl in v.compiled.launches:
                tables.function(cl.binary, cl.entry, cl.smem_attr)
    trt_skipped = None if trt_headers else (
        "no TensorRT headers found (give --tensorrt-include DIR or set TENSORRT_ROOT)")
    trt_plans = [p for p in plans if isinstance(p.dynamic_sources(), dict)] if trt_headers else []
    info = {
        "gpu": target.gpu, "arch": target.arch, "cc": f"{target.cc[0]}.{target.cc[1]}",
        "compiler": toolchain.compiler_version(command),
        "tensorrt_headers": toolchain.tensorrt_version(trt_headers) if trt_headers else None,
    }
    out = Path(out)
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME + (TENSORRT if trt_headers else ()):
        shutil.copyfile(HERE / name, src / name)
    generated = {"conformer_trt.h": codegen.header(plans, target.gpu, target.arch)}
    if trt_headers:
        generated["ct_plugins.cpp"] = codegen.plugins_source(trt_plans)
    doc = manifest(plans, trt_plans, tables, info, trt_skipped, generated)
    text = json.dumps(doc, indent=1, sort_keys=True)
    generated["ct_kernels.cpp"] = codegen.kernels_source(
        plans, target.gpu, target.arch, target.cc, text.encode("ascii"), tables)
    for name, body in generated.items():
        (src / name).write_text(body)
    sources = [src / "ct_kernels.cpp", src / "ct_runtime.cpp"]
    if trt_headers:
        sources += [src / "ct_plugins.cpp", src / "ct_trt.cpp"]
    includes = [src, cuda_headers] + ([trt_headers] if trt_headers else [])
    library = out / LIBRARY
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        staged = Path(tmp) / LIBRARY
        toolchain.build_library(command, sources, includes, staged)
        staged.replace(library)   # a process that has the old library mapped keeps it intact
    shutil.copyfile(src / "conformer_trt.h", out / "conformer_trt.h")
    (out / "manifest.json").write_text(text + "\n")
    if trt_skipped:
        log(f"plugin-gen: TensorRT layer SKIPPED: {trt_skipped}; the C ABI library was built")
    for plan in plans:
        reason = plan.dynamic_sources()
        if trt_headers and not isinstance(reason, dict):
            log(f"plugin-gen: no TensorRT plugin for {plan.kernel.name}: {reason}")
    log(f"plugin-gen: wrote {library}" + (f" (TensorRT {info['tensorrt_headers']} plugins: "
                                          + ", ".join(codegen.plugin_name(p.kernel) for p in trt_plans)
                                          + ")" if trt_plans else ""))
    return BuildResult(library, out / "conformer_trt.h", out / "manifest.json", doc, trt_skipped)


def _compile(chosen: dict[str, list[Winner]], target: Target, progress: bool) -> list[KernelPlan]:
    plans = []
    todo = [(name, w) for name, ws in chosen.items() for w in ws]
    done: dict[str, list[Variant]] = {}
    for name, w in tqdm(todo, desc="compiling", unit="winner", disable=not progress):
        kernel = kernels.get(name)
        impl = kernel.impl(w.impl)
        try:
            compiled = binaries.compile_variant(kernel, impl, w.config, w.bucket, w.dtype, target)
        except ValueError as exc:   # an expression or constant the contract refuses
            raise BuildError(f"{name}/{w.impl} {w.dtype} {w.bucket}: {exc}") from None
        done.setdefault(name, []).append(Variant(w, impl, compiled))
    for name in chosen:
        plans.append(KernelPlan(kernels.get(name), tuple(done[name])))
    return plans


def manifest(plans: list[KernelPlan], trt_plans: list[KernelPlan], tables: Tables, info: dict,
             trt_skipped: str | None, generated: dict[str, str]) -> dict:
    """What the library holds: GPU, arch, versions, kernels with their buckets and configs, the
    binaries, and hashes of every source (kernel sources per variant, runtime and generated C++)."""
    import triton

    def sha(parts: Iterable[str | bytes]) -> str:
        h = hashlib.sha256()
        for p in parts:
            h.update(p.encode() if isinstance(p, str) else p)
        return h.hexdigest()[:16]

    uses_cuda = any(b.lang == "cuda" for b in tables.binaries)
    versions = {"conformer_trt": _package_version(), "triton": triton.__version__,
                "python": platform.python_version(), "compiler": info["compiler"],
                "tensorrt_headers": info["tensorrt_headers"]}
    if uses_cuda:
        from kernels import nvrtc

        versions["nvrtc"] = nvrtc.version()
    trt_names = {p.kernel.name for p in trt_plans}
    out_kernels = {}
    for plan in plans:
        k = plan.kernel
        entry = {
            "doc": codegen.comment(k.doc),
            "c_launch": f"ct_{k.name}_launch", "c_workspace_size": f"ct_{k.name}_workspace_size",
            "dims": [{"name": d.name, "lo": d.lo, "hi": d.hi, "dynamic": d.dynamic,
                      "ctype": d.ctype} for d in k.dims],
            "tensors": [{"name": t.name, "dims": list(t.dims), "role": t.role, "dtype": t.dtype,
                         "when": t.when} for t in k.tensors],
            "scalars": dict(k.scalars),
            "tensorrt_plugin": ({"name": codegen.plugin_name(k), "version": "1", "namespace": ""}
                                if k.name in trt_names else None),
            "variants": [],
        }
        if k.name not in trt_names:
            reason = plan.dynamic_sources()
            entry["tensorrt_skipped"] = trt_skipped or reason
        for v in plan.variants:
            w = v.winner
            launches = []
            for cl in v.compiled.launches:
                f = tables.function(cl.binary, cl.entry, cl.smem_attr)
                launches.append({"entry": cl.entry, "lang": cl.binary.lang,
                                 "binary": tables.functions[f][0], "scratch_params": cl.n_scratch,
                                 "grid": list(cl.launch.grid), "threads": cl.threads,
                                 "smem": cl.smem, "pdl": cl.pdl})
            entry["variants"].append({
                "dtype": w.dtype, "bucket": w.bucket, "impl": w.impl, "config": w.config,
                "constants": v.compiled.consts, "source_hash": w.source_hash,
                "median_us": w.median_us, "spread_us": w.spread_us, "baseline_us": w.baseline_us,
                "speedup": w.speedup, "trials": w.trials, "tuned_at": w.created_at,
                "tuned_on": {"device_name": w.device_name, "driver": w.driver, "cuda": w.cuda,
                             "triton": w.triton},
                "launches": launches})
        out_kernels[k.name] = entry
    runtime = [(HERE / n).read_text() for n in RUNTIME + TENSORRT]
    return {
        "format": 1, "library": LIBRARY, "gpu": info["gpu"], "arch": info["arch"], "cc": info["cc"],
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "source_hashes": {"runtime": sha(runtime),
                          "generated_interface": sha(generated[n] for n in sorted(generated))},
        "binaries": [{"lang": b.lang, "sha256": b.sha256, "bytes": len(b.data)}
                     for b in tables.binaries],
        "kernels": out_kernels,
        "tensorrt": {"headers": info["tensorrt_headers"], "skipped": trt_skipped},
    }


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("conformer-trt")
    except PackageNotFoundError:
        return "source checkout"
