"""plugin_gen on the CPU: libraries for sm_86 and sm_90 built from winners made here, their C
dispatch against kernels.contract.nearest_bucket, the launches they make (seen through a stub
CUDA driver), their checks, the gate on winners, the toolchain's errors, and the TensorRT layer.

The libraries are built once per session by the ``plugin-gen`` command in a subprocess: Triton's
ahead-of-time compiler needs JIT functions, which a process under TRITON_INTERPRET=1 (this one,
without a GPU) does not have.

TensorRT-layer tests need TensorRT's public headers (never committed). Get them with

    git clone --depth 1 --branch v10.16 https://github.com/NVIDIA/TensorRT /tmp/trt
    mkdir -p third_party/tensorrt && cp -r /tmp/trt/include third_party/tensorrt/

or point TENSORRT_ROOT at an install (``$TENSORRT_ROOT/include/NvInferRuntime.h``); without them
those tests are skipped. On a GPU, tests/gpu/test_plugin_gen_gpu.py runs the same harness for real.
"""
from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kernels
from cache.winner import Winner, dumps
from kernels import contract, expr, gpu, launch
from plugin_gen import BuildError, build, codegen, toolchain, winners as winners_mod
from plugin_gen.binaries import Binary, CompiledLaunch, CompiledVariant
from plugin_gen.loader import Library, LibraryError

REPO = Path(__file__).resolve().parent.parent
TRT_INCLUDE = (Path(os.environ["TENSORRT_ROOT"]) if os.environ.get("TENSORRT_ROOT")
               else REPO / "third_party" / "tensorrt") / "include"
HAS_TRT = (TRT_INCLUDE / "NvInferRuntime.h").is_file()
CUDA_INCLUDE = os.environ.get("PLUGIN_GEN_CUDA_INCLUDE")   # else toolchain.cuda_include's search
HAS_CXX = shutil.which(os.environ.get("CXX", "g++").split()[0]) is not None
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler (g++ or $CXX) on this machine")
needs_trt = pytest.mark.skipif(not HAS_TRT, reason=f"TensorRT headers not found at {TRT_INCLUDE} "
                               "(see this module's docstring)")


# ---- winners made here ---------------------------------------------------------------------

def make_winners(gpu_name: str, kernel_names=None, dtypes=None, statics=None, scales=(1, 64, 4096),
                 spec=None, device_name="test GPU", cc=None, shapes=None, impls=None) -> list[Winner]:
    """Heuristic configs as if tuned: for each kernel, the static dims of ``shapes`` (default: its
    examples; the first ``statics`` distinct ones), each dtype, and buckets at the shapes' dynamic
    dims times each scale; implementations (``impls``, default all) in turn, so each is used."""
    spec = spec or gpu.by_name(gpu_name)
    out = []
    for name in kernel_names or sorted(kernels.registry()):
        k = kernels.get(name)
        by_static = {}
        for ex in shapes or k.examples:
            by_static.setdefault(tuple(ex[d] for d in k.static_dims), ex)
        candidates = [i for i in k.impls if impls is None or i.name in impls]
        turn = 0
        for ex in list(by_static.values())[:statics]:
            for dtype in [d for d in (dtypes or k.dtypes) if d in k.dtypes]:
                for scale in scales:
                    his = {d.name: d.hi for d in k.dims}
                    shape = {**ex, **{d: min(ex[d] * scale, his[d] // 2) for d in k.dynamic_dims}}
                    bucket = contract.bucket_of(k, shape)
                    first, turn = turn % len(candidates), turn + 1
                    for impl in candidates[first:] + candidates[:first]:
                        if dtype not in k.dtypes_of(impl):
                            continue
                        config = contract.check_config(impl, impl.heuristic(bucket, dtype, spec))
                        if impl.valid(config, bucket, dtype, spec) is None:
                            break
                    else:
                        continue
                    out.append(Winner(
                        gpu=gpu_name, device_name=device_name, cc=cc or f"{spec.cc[0]}.{spec.cc[1]}",
                        sms=spec.sms, driver="0.0", cuda="0.0", triton="0.0", kernel=name,
                        impl=impl.name, source_hash=launch.source_hash(impl), dtype=dtype,
                        bucket=bucket, config=config, median_us=10.0, spread_us=0.1,
                        baseline_us=None, speedup=None, trials=1))
    return out


def _cli_env(env=None) -> dict:
    """The environment of a plugin-gen subprocess: no TRITON_INTERPRET (see the module
    docstring), this checkout importable."""
    env = {k: v for k, v in (env or os.environ).items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def cli(*args, env=None, check=True) -> subprocess.CompletedProcess:
    """``python -m plugin_gen ...`` in a subprocess."""
    done = subprocess.run([sys.executable, "-m", "plugin_gen", *args], capture_output=True,
                          text=True, env=_cli_env(env), cwd=REPO)
    if check and done.returncode != 0:
        raise AssertionError(f"plugin-gen {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def build_libraries(root: Path, specs: dict, trt_for=()) -> dict:
    """{gpu: (directory, CompletedProcess)}: one library per ``specs`` entry (gpu: make_winners
    keywords), built at once by plugin-gen subprocesses; with the TensorRT layer for ``trt_for``
    where headers exist."""
    env = {**os.environ, "CONFORMER_TRT_CACHE": str(root / "cache")}
    include = ["--cuda-include", CUDA_INCLUDE] if CUDA_INCLUDE else []
    procs = {}
    for name, kw in specs.items():
        path = root / f"{name}.json"
        path.write_text(dumps(make_winners(name, **kw), name))
        args = ["build", "--gpu", name, "--winners", str(path), "--out", str(root / name), *include]
        if name in trt_for and HAS_TRT:
            args += ["--tensorrt-include", str(TRT_INCLUDE)]
        procs[name] = subprocess.Popen([sys.executable, "-m", "plugin_gen", *args], cwd=REPO,
                                       env=_cli_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate()
        assert proc.returncode == 0, f"building {name} failed:\n{stdout}\n{stderr}"
        out[name] = (root / name, subprocess.CompletedProcess(proc.args, 0, stdout, stderr))
    return out


@pytest.fixture(scope="session")
def libs(tmp_path_factory):
    """{gpu: (directory, CompletedProcess)}: a10 (sm_86, fp16 + bf16, two static shapes, with the
    TensorRT layer where headers exist) and h100 (sm_90, fp16, no TensorRT layer), built at once."""
    if not HAS_CXX:
        pytest.skip("no C++ compiler (g++ or $CXX) on this machine")
    specs = {"a10": dict(kernel_names=["layernorm"], statics=2, dtypes=("float16", "bfloat16")),
             "h100": dict(kernel_names=["layernorm"], statics=1, dtypes=("float16",),
                          scales=(1, 64))}
    return build_libraries(tmp_path_factory.mktemp("plugin_gen"), specs, trt_for=("a10",))


# ---- a stub CUDA driver: what the library asks of the driver, without a GPU -----------------

STUB = r"""
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static FILE* out(void) {
  static FILE* f;
  if (!f && getenv("CT_STUB_LOG")) f = fopen(getenv("CT_STUB_LOG"), "a");
  return f;
}
static int cc(int i) { const char* v = getenv("CT_STUB_CC"); return v ? v[2 * i] - '0' : (i ? 6 : 8); }
CUresult cuInit(unsigned f) { (void)f; return CUDA_SUCCESS; }
CUresult cuGetErrorName(CUresult r, const char** s) { (void)r; *s = "CUDA_ERROR_STUB"; return CUDA_SUCCESS; }
CUresult cuGetErrorString(CUresult r, const char** s) { (void)r; *s = "stub"; return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext* c) { *c = (CUcontext)0x1000; return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext c) { (void)c; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice* d) { *d = 0; return CUDA_SUCCESS; }
CUresult cuCtxSynchronize(void) { return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice* d, int i) { *d = i; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) { (void)d; *c = (CUcontext)0x1000; return CUDA_SUCCESS; }
CUresult cuDeviceGetName(char* n, int len, CUdevice d) { (void)d; snprintf(n, len, "Stub GPU"); return CUDA_SUCCESS; }
CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice d) {
  (void)d;
  *v = a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR ? cc(0)
     : a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR ? cc(1)
     : a == CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN ? 101376 : 0;
  return CUDA_SUCCESS;
}
CUresult cuModuleLoadData(CUmodule* m, const void* image) {
  if (memcmp(image, "\177ELF", 4) != 0) return CUDA_ERROR_INVALID_IMAGE;
  *m = (CUmodule)image;
  return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
  (void)m;
  *f = (CUfunction)strdup(name);
  return CUDA_SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction f) { (void)a; (void)f; *v = 0; return CUDA_SUCCESS; }
CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) { (void)f; (void)a; (void)v; return CUDA_SUCCESS; }
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned smem, CUstream s, void** params,
                        void** extra) {
  (void)extra;
  int n = getenv("CT_STUB_PARAMS") ? atoi(getenv("CT_STUB_PARAMS")) : 0;
  if (out()) {
    fprintf(out(), "launch %s %u %u %u %u %u %u %u %llu", (const char*)f, gx, gy, gz, bx, by, bz,
            smem, (unsigned long long)(size_t)s);
    for (int i = 0; i < n; ++i) {
      unsigned long long v;
      memcpy(&v, params[i], 8);
      fprintf(out(), " %llx", v);
    }
    fprintf(out(), "\n");
    fflush(out());
  }
  return CUDA_SUCCESS;
}
CUresult cuLaunchKernelEx(const CUlaunchConfig* c, CUfunction f, void** params, void** extra) {
  int pdl = 0;
  for (unsigned i = 0; i < c->numAttrs; ++i)
    if (c->attrs[i].id == CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
      pdl = (int)c->attrs[i].value.programmaticStreamSerializationAllowed;
  if (out()) fprintf(out(), "pdl %d\n", pdl);
  return cuLaunchKernel(f, c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, c->blockDimY,
                        c->blockDimZ, c->sharedMemBytes, c->hStream, params, extra);
}
CUresult cuMemAlloc(CUdeviceptr* p, size_t n) { *p = (CUdeviceptr)(size_t)aligned_alloc(256, (n + 255) / 256 * 256); return CUDA_SUCCESS; }
CUresult cuMemFree(CUdeviceptr p) { free((void*)(size_t)p); return CUDA_SUCCESS; }
CUresult cuMemcpyHtoD(CUdeviceptr d, const void* s, size_t n) { memcpy((void*)(size_t)d, s, n); return CUDA_SUCCESS; }
CUresult cuMemcpyDtoH(void* d, CUdeviceptr s, size_t n) { memcpy(d, (void*)(size_t)s, n); return CUDA_SUCCESS; }
CUresult cuMemsetD8(CUdeviceptr d, unsigned char v, size_t n) { memset((void*)(size_t)d, v, n); return CUDA_SUCCESS; }
"""


@pytest.fixture(scope="session")
def stub(tmp_path_factory):
    """A directory holding the stub libcuda.so.1 (put it on LD_LIBRARY_PATH of a subprocess)."""
    if not HAS_CXX:
        pytest.skip("no C++ compiler (g++ or $CXX) on this machine")
    root = tmp_path_factory.mktemp("stub")
    (root / "stub.cpp").write_text(STUB)
    cxx = toolchain.compiler()
    subprocess.run([*cxx, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1",
                    f"-I{toolchain.cuda_include(CUDA_INCLUDE)}", "-o", str(root / "libcuda.so.1"),
                    str(root / "stub.cpp")], check=True)
    return root


def with_stub(stub_dir: Path, code: str, cc: str = "8.6", params: int = 0,
              log: Path | None = None) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a process whose libcuda.so.1 is the stub."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(stub_dir), "CT_STUB_CC": cc,
           "CT_STUB_PARAMS": str(params), "PYTHONPATH": str(REPO)}
    if log:
        env["CT_STUB_LOG"] = str(log)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, cwd=REPO)


# ---- the libraries ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, arch", [("a10", "sm_86"), ("h100", "sm_90")])
def test_libraries_for_sm86_and_sm90(libs, name, arch):
    out, proc = libs[name]
    lib = Library(out / "libconformer_trt.so")
    m = lib.manifest
    assert m == json.loads((out / "manifest.json").read_text())
    assert (m["gpu"], m["arch"]) == (name, arch)
    assert set(m["versions"]) >= {"triton", "nvrtc", "compiler", "python", "conformer_trt"}
    variants = m["kernels"]["layernorm"]["variants"]
    assert {v["impl"] for v in variants} == {"triton", "cuda"}
    for v in variants:
        impl = kernels.get("layernorm").impl(v["impl"])
        assert v["source_hash"] == launch.source_hash(impl)
        assert all(0 <= lc["binary"] < len(m["binaries"]) for lc in v["launches"])
    triton_scratch = {lc["scratch_params"] for v in variants for lc in v["launches"]
                      if lc["lang"] == "triton"}
    assert triton_scratch <= {1, 2}     # Triton 3.3: global scratch; later: + profile scratch
    assert "int ct_layernorm_launch(const void* x" in (out / "conformer_trt.h").read_text()
    for symbol in ("ct_layernorm_launch", "ct_layernorm_workspace_size", "ct_launch", "ct_select",
                   "ct_last_error", "ct_manifest", "ct_check_device"):
        assert hasattr(lib._lib, symbol)
    if name == "h100" or not HAS_TRT:
        assert "TensorRT layer SKIPPED" in proc.stdout and "C ABI library was built" in proc.stdout
        assert not hasattr(lib._lib, "getCreators")
        assert m["kernels"]["layernorm"]["tensorrt_plugin"] is None
    else:
        assert hasattr(lib._lib, "getCreators") and hasattr(lib._lib, "setLoggerFinder")
        assert m["kernels"]["layernorm"]["tensorrt_plugin"]["name"] == "ct_layernorm"


def test_dispatch_follows_nearest_bucket(libs):
    """ct_select against kernels.contract.nearest_bucket on many shapes, tuned or not."""
    k = kernels.get("layernorm")
    lib = Library(libs["a10"][0] / "libconformer_trt.so")
    variants = lib.manifest["kernels"]["layernorm"]["variants"]
    rng = random.Random(7)
    statics = sorted({(v["bucket"]["hidden"], v["bucket"]["with_residual"]) for v in variants})
    checked = {"picked": 0, "none": 0}
    for _ in range(3000):
        dtype = rng.choice(["float16", "bfloat16", "float32"])
        hidden, res = rng.choice(statics) if rng.random() < 0.9 else (rng.randint(32, 8192), 1)
        rows = rng.choice([1, 2, 3, rng.randint(1, 1 << 14), rng.randint(1, 1 << 30),
                           1 << rng.randint(0, 30), (1 << rng.randint(1, 30)) + 1])
        shape = {"rows": rows, "hidden": hidden, "with_residual": res}
        same_dtype = [(i, v["bucket"]) for i, v in enumerate(variants) if v["dtype"] == dtype]
        want = contract.nearest_bucket(k, shape, [b for _, b in same_dtype])
        if want is None:
            with pytest.raises(LibraryError, match="no tuned winner"):
                lib.select("layernorm", dtype, shape)
            checked["none"] += 1
        else:
            index = next(i for i, b in same_dtype if b is want)
            assert lib.select("layernorm", dtype, shape) == index, (shape, dtype)
            checked["picked"] += 1
    assert checked["picked"] > 1000 and checked["none"] > 100


def _geometry(k, variant, shape):
    """What the contract says a variant's launches look like for a runtime shape."""
    impl = k.impl(variant["impl"])
    env = contract.launch_env(shape, variant["constants"], variant["config"])
    return [(lc["entry"], contract.grid_of(impl.launches[j], env),
             expr.evaluate(lc["threads"], env), expr.evaluate(lc["smem"], env))
            for j, lc in enumerate(variant["launches"])]


def test_launches_carry_what_the_contract_says(libs, stub, tmp_path):
    """Through the stub driver: each call launches the selected winner's kernel with the grid,
    block and shared memory the contract's expressions give, and the arguments in the order the
    launch declares them (tensor pointers, dims as int32, eps as float32)."""
    k = kernels.get("layernorm")
    lib_path = libs["a10"][0] / "libconformer_trt.so"
    variants = Library(lib_path).manifest["kernels"]["layernorm"]["variants"]
    calls = [("float16", {"rows": 1, "hidden": 32, "with_residual": 0}),
             ("bfloat16", {"rows": 37, "hidden": 257, "with_residual": 1}),
             ("float16", {"rows": 100000, "hidden": 257, "with_residual": 1}),
             ("bfloat16", {"rows": 3000, "hidden": 32, "with_residual": 0})]
    log = tmp_path / "launches.log"
    code = f"""
        from plugin_gen.loader import Library
        lib = Library({str(lib_path)!r})
        for i, (dtype, shape) in enumerate({calls!r}):
            ptrs = {{t["name"]: 4096 * (j + 1) for j, t in enumerate(lib.kernel("layernorm")["tensors"])
                     if t["when"] is None or shape[t["when"]]}}
            lib.launch("layernorm", ptrs, shape, {{"eps": 0.25 + i}}, dtype=dtype, stream=77)
        print("done")
    """
    done = with_stub(stub, code, params=8, log=log)
    assert done.returncode == 0 and "done" in done.stdout, done.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == len(calls)
    lib = Library(lib_path)
    for i, ((dtype, shape), line) in enumerate(zip(calls, lines)):
        v = variants[lib.select("layernorm", dtype, shape)]
        ((entry, grid, threads, smem),) = _geometry(k, v, shape)
        name, *nums = line.split()[1:]
        assert name == entry
        assert [int(x) for x in nums[:8]] == [*grid, threads, 1, 1, smem, 77]
        args = [int(x, 16) for x in nums[8:]]
        present = [t.name for t in k.present(shape)]
        for a, (arg, value) in enumerate(zip(k.impl(v["impl"]).launches[0].args, args)):
            if arg in ("rows",):
                assert value & 0xFFFFFFFF == shape["rows"]
            elif arg == "eps":
                assert struct.unpack("<f", struct.pack("<I", value & 0xFFFFFFFF))[0] == 0.25 + i
            else:
                names = [t.name for t in k.tensors]
                assert value == (4096 * (names.index(arg) + 1) if arg in present else 0), arg


@needs_cxx
def test_programmatic_dependent_launches_on_sm90_only(stub, tmp_path):
    """The conv module's launches that the contract declares ``pdl`` go through cuLaunchKernelEx
    with programmatic stream serialization in an sm_90 library (its Triton ones where this Triton
    has grid dependency control, 3.4+) and are plain launches in an sm_86 one; the manifest says
    which."""
    impl = kernels.get("conv_module").impl("cuda_dw")
    assert any(lc.pdl for lc in impl.launches)
    spec = dict(kernel_names=["conv_module"], impls=["cuda_dw"], statics=1, dtypes=("float16",),
                scales=(1,))
    built = build_libraries(tmp_path, {"a10": spec, "h100": spec})
    for name, cc in (("a10", "8.6"), ("h100", "9.0")):
        lib_path = built[name][0] / "libconformer_trt.so"
        (variant,) = Library(lib_path).manifest["kernels"]["conv_module"]["variants"]
        want = [lc.pdl and name == "h100" and (lc.kernel not in impl.fns or launch.triton_has_pdl())
                for lc in impl.launches]   # a Triton without grid dependency control: plain
        assert [lc["pdl"] for lc in variant["launches"]] == want
        log = tmp_path / f"{name}.log"
        code = f"""
            import torch
            from plugin_gen.loader import Library
            lib = Library({str(lib_path)!r})
            shape = {variant["bucket"]!r}
            ptrs = {{t["name"]: 4096 * (j + 1) for j, t in enumerate(lib.kernel("conv_module")["tensors"])}}
            ws = torch.empty(lib.workspace_size("conv_module", "float16", shape), dtype=torch.uint8)
            lib.launch("conv_module", ptrs, shape, dtype="float16", workspace=ws, stream=77)
            print("done")
        """
        done = with_stub(stub, code, cc=cc, log=log)
        assert done.returncode == 0 and "done" in done.stdout, done.stderr
        seen, pdl = [], False
        for line in log.read_text().splitlines():
            if line.startswith("pdl "):
                pdl = line == "pdl 1"
            else:
                seen.append(pdl)
                pdl = False
        assert seen == want


def test_wrong_gpu_is_refused(libs, stub):
    lib_path = libs["a10"][0] / "libconformer_trt.so"
    code = f"""
        from plugin_gen.loader import Library, LibraryError
        lib = Library({str(lib_path)!r})
        for call in (lib.check_device, lambda: lib.launch("layernorm", {{"x": 4096, "weight": 4096,
                     "bias": 4096, "y": 4096}}, {{"rows": 8, "hidden": 32, "with_residual": 0}},
                     dtype="float16", stream=0)):
            try:
                call()
            except LibraryError as e:
                print(e.status, e)
    """
    done = with_stub(stub, code, cc="9.0")
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stderr
    for line in lines:
        assert line.startswith("6 WRONG_GPU") and "built and tuned for a10 (sm_86)" in line
        assert "Stub GPU (sm_90)" in line and "plugin-gen build --gpu" in line
    assert with_stub(stub, code.replace("print(e.status, e)", "print('refused')"),
                     cc="8.6").stdout.count("refused") == 0


def test_bad_calls_are_refused_before_any_launch(libs):
    lib = Library(libs["a10"][0] / "libconformer_trt.so")
    shape = {"rows": 8, "hidden": 32, "with_residual": 0}
    ok = {"x": 4096, "weight": 4096, "bias": 4096, "y": 4096}
    cases = [
        ({**ok, "x": 4100}, shape, "float16", "x is not 16-byte aligned"),
        ({**ok, "y": None}, shape, "float16", "y is a null pointer"),
        ({**ok, "residual": 4096}, shape, "float16", "residual given but with_residual=0"),
        (ok, {**shape, "hidden": 16}, "float16", r"hidden=16 is outside the supported range \[32"),
        (ok, {**shape, "rows": 0}, "float16", "rows=0 is outside"),
        (ok, {**shape, "hidden": 64}, "float16", "no tuned winner for float16 hidden=64"),
        (ok, shape, "float32", "no tuned winner for float32 hidden=32"),
    ]
    for tensors, s, dtype, message in cases:
        with pytest.raises(LibraryError, match=message):
            lib.launch("layernorm", tensors, s, dtype=dtype, stream=0)
    assert lib._lib.ct_launch(b"layernorm", 7, (ctypes.c_void_p * 6)(), lib.dims("layernorm", shape),
                              (ctypes.c_float * 1)(1e-5), None, 0, None) == 1
    assert "dtype code 7 is not an activation dtype" in lib.last_error()
    with pytest.raises(ValueError, match="no kernel 'conv'"):
        lib.kernel("conv")
    # without a driver, a valid call fails clearly instead of crashing
    if not Path("/dev/nvidiactl").exists():
        with pytest.raises(LibraryError, match=r"NO_DRIVER: .*libcuda\.so\.1"):
            lib.launch("layernorm", ok, shape, dtype="float16", stream=0)


def test_cli_prints_the_manifest(libs):
    done = cli("manifest", str(libs["h100"][0] / "libconformer_trt.so"))
    assert json.loads(done.stdout)["arch"] == "sm_90"


# ---- the gate: nothing unchecked reaches generated source ----------------------------------

def _row(**change):
    """A valid row (of the Triton implementation) with ``change`` applied."""
    w = make_winners("a10", ["layernorm"], statics=1, dtypes=("float16",), scales=(1,))[0]
    assert w.impl == "triton"
    return {**w.to_json(), **change}


@pytest.mark.parametrize("change, message", [
    ({"config": {"ROWS": "1); system(\"id\"); (0", "num_warps": 1, "STREAM": 0}}, "config"),
    ({"config": {"ROWS": 3, "num_warps": 1, "STREAM": 0}}, "ROWS=3 is not one of"),
    ({"bucket": {"rows": 3, "hidden": 32, "with_residual": 0}}, "is not a bucket"),
    ({"bucket": {"rows": 1, "hidden": 32, "with_residual": 0, "evil": 1}}, "unknown dims"),
    ({"source_hash": "0123456789abcdef"}, "re-tune"),
    ({"gpu": "a10\"; abort(); //"}, "not plain text"),
    ({"kernel": "layernorm; rm -rf"}, "unknown kernel"),
])
def test_tampered_rows_are_refused(tmp_path, change, message):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"format": 1, "gpu": "a10", "winners": [_row(**change)]}))
    with pytest.raises(BuildError, match="refusing .*w.json: winner #0: ") as info:
        winners_mod.load("a10", winners_file=path)
    assert message in str(info.value)


def test_the_command_refuses_a_tampered_export(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"format": 1, "gpu": "a10", "winners": [
        _row(), _row(config={"ROWS": "1); system(\"id\"); (0", "num_warps": 1, "STREAM": 0})]}))
    done = cli("build", "--gpu", "a10", "--winners", str(path), "--out", str(tmp_path / "o"),
               check=False)
    assert done.returncode == 2 and "plugin-gen: error: refusing" in done.stderr, done.stderr
    assert "winner #1" in done.stderr and not (tmp_path / "o").exists()


@needs_cxx
def test_tampered_winner_objects_are_refused(tmp_path):
    w = Winner(**_row())
    bad = Winner(**{**w.to_json(), "config": {k: 7 for k in w.config}})
    with pytest.raises(BuildError, match="refusing a winner of the winners given"):
        build("a10", tmp_path, winners=[w, bad], log=lambda _: None)


@needs_cxx
def test_no_winners_for_that_gpu(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(dumps([Winner(**_row())], "a10"))
    with pytest.raises(BuildError, match=r"no winners for GPU 'l4' in .*w\.json \(it has winners "
                                         r"for \['a10'\]\); tune first: autotune run --gpu l4"):
        build("l4", tmp_path / "o", winners_file=path, log=lambda _: None)
    with pytest.raises(BuildError, match="unknown kernel 'nope'"):
        build("a10", tmp_path / "o", winners_file=path, kernel_names=["nope"], log=lambda _: None)
    with pytest.raises(BuildError, match="cannot read winners file"):
        build("a10", tmp_path / "o", winners_file=tmp_path / "missing.json", log=lambda _: None)


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    w = [Winner(**_row())]
    monkeypatch.setenv("CXX", "no-such-compiler-anywhere")
    with pytest.raises(BuildError, match="no C\\+\\+ compiler: 'no-such-compiler-anywhere' is "
                                         "not on PATH"):
        build("a10", tmp_path, winners=w, log=lambda _: None)
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BuildError, match="no C\\+\\+ compiler: 'g\\+\\+'"):
        build("a10", tmp_path, winners=w, log=lambda _: None)


@needs_cxx
def test_interpreted_triton_kernels_are_refused(tmp_path):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("only meaningful where Triton runs interpreted")
    w = [x for x in make_winners("a10", ["layernorm"], statics=1, dtypes=("float16",))
         if x.impl == "triton"]
    with pytest.raises(BuildError, match="TRITON_INTERPRET=1"):
        build("a10", tmp_path, winners=w, log=lambda _: None)


def test_generated_names_and_literals_are_checked():
    assert codegen.ident("hidden", "dim") == "hidden"
    for bad in ("x;y", "1x", "int", "ct_x", "dtype", "a" * 80, "", "é"):
        with pytest.raises(BuildError):
            codegen.ident(bad, "dim")
    assert codegen.integer(5) == "INT64_C(5)" and codegen.integer(-3) == "(-INT64_C(3))"
    for bad in (True, "5", 5.0, 2**63):
        with pytest.raises(BuildError):
            codegen.integer(bad)
    assert codegen.real(1e-5) == "0x1.4f8b588e368f1p-17f"
    with pytest.raises(BuildError):
        codegen.real(float("nan"))
    assert codegen.comment("a */ b\nsecond line") == "a   b"
    assert codegen.trt_expr("cdiv(T, 2) % 3", {"T": 1}).count("ct::trt::op") == 5


# ---- every kernel in the registry joins without kernel-specific code -------------------------

@needs_cxx
@pytest.mark.parametrize("name", sorted(kernels.registry()))
def test_every_registered_kernel_generates_valid_cpp(tmp_path, name):
    """Generation for each kernel's launches (binaries faked, so no compiler of kernels runs) must
    compile: tables, C ABI, header, and the TensorRT specs where headers exist."""
    k = kernels.get(name)
    spec = gpu.by_name("h100")
    ws = make_winners("h100", [name], scales=(1, 64))
    variants = []
    for w in ws:
        impl = k.impl(w.impl)
        consts = contract.resolved_constants(k, impl, w.config, w.bucket, w.dtype)
        env = {**w.config, **consts}
        static = {**{d: w.bucket[d] for d in k.static_dims}, **env}
        launches = tuple(CompiledLaunch(
            lc, Binary(b"\x7fELF" + bytes([i]), "triton" if lc.kernel in impl.fns else "cuda"),
            lc.kernel,
            threads=32 * expr.evaluate(lc.num_warps, static) if lc.kernel in impl.fns else lc.threads,
            smem=0 if lc.kernel in impl.fns else lc.smem, smem_attr=0,
            n_scratch=2 if lc.kernel in impl.fns else 0, pdl=lc.pdl)
            for i, lc in enumerate(impl.launches))
        variants.append(codegen.Variant(w, impl, CompiledVariant(consts, env, launches)))
    plan = codegen.KernelPlan(k, tuple(variants))
    tables = codegen.Tables()
    src = tmp_path / "src"
    src.mkdir()
    (src / "ct_kernels.cpp").write_text(codegen.kernels_source([plan], "h100", spec.arch, spec.cc,
                                                               b"{}", tables))
    (src / "conformer_trt.h").write_text(codegen.header([plan], "h100", spec.arch))
    for f in ("ct_runtime.h", "ct_trt.h"):
        shutil.copyfile(REPO / "plugin_gen" / f, src / f)
    units = ["ct_kernels.cpp"]
    if HAS_TRT and isinstance(plan.dynamic_sources(), dict):
        (src / "ct_plugins.cpp").write_text(codegen.plugins_source([plan]))
        units.append("ct_plugins.cpp")
    includes = [f"-I{src}", f"-I{toolchain.cuda_include(CUDA_INCLUDE, runtime=HAS_TRT)}"] + \
        ([f"-I{TRT_INCLUDE}"] if HAS_TRT else [])
    for unit in units:
        done = subprocess.run([*toolchain.compiler(), *toolchain.CXXFLAGS, "-fsyntax-only",
                               *includes, str(src / unit)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]


# ---- the TensorRT layer --------------------------------------------------------------------

def harness(tmp_path_factory) -> Path:
    """Compile plugin_gen/ct_harness.cpp against the TensorRT headers (no libnvinfer)."""
    exe = tmp_path_factory.getbasetemp() / "ct_harness"
    if not exe.exists():
        subprocess.run([*toolchain.compiler(), "-O1", "-std=c++17", "-Wno-deprecated-declarations",
                        f"-I{TRT_INCLUDE}", f"-I{toolchain.cuda_include(CUDA_INCLUDE, runtime=True)}",
                        str(REPO / "plugin_gen" / "ct_harness.cpp"), "-o", str(exe), "-ldl"],
                       check=True)
    return exe


def write_cases(path: Path, lib: Library, kernel: str, shapes, data_dir: Path | None = None,
                reference=None) -> None:
    """Harness cases: the plugin's fields from the shape; inputs from ``reference`` (a function
    shape, dtype -> (inputs, outputs) of numpy-convertible tensors) or empty files, and outputs
    compared with the float64 reference (or not compared: '-')."""
    k = kernels.get(kernel)
    lines = []
    for i, (dtype, shape, refuse) in enumerate(shapes):
        lines.append(f"case {kernel}{i} ct_{kernel}")
        for d in k.dims:
            if not d.dynamic:
                lines.append(f"field {d.name} {'i64' if d.ctype == 'i64' else 'i32'} {shape[d.name]}")
        for s, v in k.scalars.items():
            lines.append(f"field {s} f64 {v!r}")
        data = reference(shape, dtype, i) if reference else None
        for t in k.present(shape):
            dims = [expr.evaluate(e, shape) for e in t.dims]
            tdtype = dtype if t.dtype == "act" else t.dtype
            if t.role == "in":
                path_ = data[0][t.name] if data else "/dev/null"
                lines.append(f"input {t.name} {tdtype} {len(dims)} {' '.join(map(str, dims))} {path_}")
            else:
                path_, tol = (data[1][t.name], k.tolerance[dtype]) if data else ("-", 0)
                lines.append(f"output {t.name} {tdtype} {len(dims)} {' '.join(map(str, dims))} "
                             f"{path_} {tol}")
        if refuse:
            lines.append(f"refuse {refuse}")
        lines.append("end")
    path.write_text("\n".join(lines) + "\n")


@needs_trt
def test_plugin_layer_compiles_against_tensorrt_10_and_11(libs, tmp_path):
    """The generated TensorRT layer of the a10 library against every TensorRT include directory at
    hand (third_party/tensorrt-*/include, TENSORRT_ROOT): it needs IPluginV3, TensorRT >= 10."""
    src = libs["a10"][0] / "src"
    dirs = {TRT_INCLUDE.resolve()} | {p.resolve() for p in (REPO / "third_party").glob("tensorrt*/include")
                                      if (p / "NvInferRuntime.h").is_file()}
    for inc in sorted(dirs):
        for unit in ("ct_trt.cpp", "ct_plugins.cpp"):
            done = subprocess.run([*toolchain.compiler(), *toolchain.CXXFLAGS, "-fsyntax-only",
                                   f"-I{src}", f"-I{inc}",
                                   f"-I{toolchain.cuda_include(CUDA_INCLUDE, runtime=True)}",
                                   str(src / unit)], capture_output=True, text=True)
            assert done.returncode == 0, f"{inc}: {done.stderr[-3000:]}"


def _has_driver() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@needs_trt
def test_plugins_through_their_tensorrt_interfaces(libs, stub, tmp_path_factory, tmp_path):
    """The harness drives each plugin as TensorRT would: without a driver, creation fails clearly;
    with the stub driver, everything up to and including enqueue (its launches logged, the values
    unchecked: the GPU test checks those)."""
    exe = harness(tmp_path_factory)
    lib_path = libs["a10"][0] / "libconformer_trt.so"
    lib = Library(lib_path)
    cases = tmp_path / "cases.txt"
    write_cases(cases, lib, "layernorm", [
        ("float16", {"rows": 37, "hidden": 257, "with_residual": 1}, None),
        ("bfloat16", {"rows": 5000, "hidden": 32, "with_residual": 0}, None),
        ("float16", {"rows": 8, "hidden": 300, "with_residual": 1}, "no tuned winner for float16 hidden=300")])
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    if not _has_driver():   # where a real driver is installed, creation cannot lack one
        done = subprocess.run([str(exe), str(lib_path), str(cases), "--no-gpu"],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "createPlugin without a GPU fails clearly: the CUDA driver (libcuda.so.1)" in done.stdout
    log = tmp_path / "launches.log"
    done = subprocess.run([str(exe), str(lib_path), str(cases)], capture_output=True, text=True,
                          env={**env, "LD_LIBRARY_PATH": str(stub), "CT_STUB_CC": "8.6",
                               "CT_STUB_LOG": str(log)})
    assert done.returncode == 0, done.stdout + done.stderr
    for check in ("fields round trip", "getOutputShapes", "refuses a non-linear format",
                  "configurePlugin refuses an input of the wrong shape", "enqueue",
                  "refuses an unknown field", "createPlugin refused"):
        assert f"ok layernorm0 {check}" in done.stdout or f"ok layernorm2 {check}" in done.stdout, check
    launched = [line.split()[1] for line in log.read_text().splitlines()]
    assert launched == ["layernorm_fwd", "layernorm_fwd"]     # one enqueue per runnable case
    # on a GPU of another architecture, plugin creation fails and says why
    write_cases(cases, lib, "layernorm", [("float16", {"rows": 37, "hidden": 257, "with_residual": 1},
                                           "built and tuned for a10 (sm_86); the current GPU is "
                                           "Stub GPU (sm_90)")])
    done = subprocess.run([str(exe), str(lib_path), str(cases)], capture_output=True, text=True,
                          env={**env, "LD_LIBRARY_PATH": str(stub), "CT_STUB_CC": "9.0"})
    assert done.returncode == 0 and "ok layernorm0 createPlugin refused" in done.stdout, done.stdout


def test_db_backed_build(tmp_path):
    """Winners read through the tuner's store (cache.open_store), where it exists."""
    try:
        from cache import open_store
    except ImportError:
        pytest.skip("cache.open_store (the tuner's store) is not in this checkout yet")
    if not HAS_CXX:
        pytest.skip("no C++ compiler")
    url = f"sqlite:///{tmp_path / 'w.db'}"
    store = open_store(url)
    for w in make_winners("a10", ["layernorm"], statics=1, dtypes=("float16",), scales=(1,)):
        store.record_winner(w)
    done = cli("build", "--gpu", "a10", "--db", url, "--out", str(tmp_path / "o"),
               env={**os.environ, "CONFORMER_TRT_CACHE": str(tmp_path / "cache")})
    assert "1 winners of 1 kernels for a10" in done.stdout
    assert Library(tmp_path / "o" / "libconformer_trt.so").manifest["kernels"]["layernorm"]
    done = cli("build", "--gpu", "l4", "--db", url, "--out", str(tmp_path / "o2"), check=False)
    assert done.returncode == 2 and "no winners for GPU 'l4'" in done.stderr
