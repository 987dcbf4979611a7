"""CUDA sources compile with NVRTC for every architecture we ship, with no GPU present."""
import re

import pytest

import kernels
from kernels import contract, gpu, launch, nvrtc

ARCHES = ("sm_80", "sm_86", "sm_89", "sm_90")
CUDA_IMPLS = [(k.name, i.name) for k in kernels.registry().values() for i in k.impls
              if i.lang != "triton"]


@pytest.mark.parametrize("name, impl_name", CUDA_IMPLS)
@pytest.mark.parametrize("arch", ARCHES)
def test_cuda_impls_compile_for_every_arch(name, impl_name, arch):
    k = kernels.get(name)
    impl = k.impl(impl_name)
    spec = gpu.for_arch(arch)
    compiled = 0
    for dtype in k.dtypes_of(impl):
        for shape in k.examples:
            config = impl.heuristic(shape, dtype, spec)
            if not impl.runs_on(spec) or impl.valid(config, shape, dtype, spec):
                continue   # e.g. wgmma before sm_90, or at a head dim it leaves to another impl
            compiled += 1
            consts = contract.resolved_constants(k, impl, config, shape, dtype)
            cubin = launch.cuda_cubin(impl, consts, dtype, arch)
            assert cubin[:4] == b"\x7fELF"
            for lch in impl.launches:
                if lch.kernel not in impl.fns:
                    assert lch.kernel.encode() in cubin
    assert compiled or not impl.runs_on(spec)


LAMBDA = re.compile(r"\[[&=\w\s,*]*\]\s*\(([^()]*)\)")


def test_no_generic_lambdas_in_device_code():
    """No lambda with an ``auto`` parameter in any CUDA source: NVRTC 13.5 (this machine, CI)
    compiles them, the GPU machine's NVRTC refused them in JIT mode ("A function without execution
    space annotations ... is considered a host function"; H100, 2026-12-07, 113 attention tests)."""
    sources = {p for k in kernels.registry().values() for i in k.impls for p in i.sources
               if p.suffix in (".cu", ".cuh")}
    assert sources
    generic = [f"{p.name}: [...]({m.group(1)})" for p in sorted(sources)
               for m in LAMBDA.finditer(p.read_text()) if re.search(r"\bauto\b", m.group(1))]
    assert not generic, generic


def test_compile_error_carries_the_log():
    with pytest.raises(nvrtc.NvrtcError, match="identifier \"undefined_thing\" is undefined"):
        nvrtc.compile_source('extern "C" __global__ void k() { undefined_thing(); }', "bad.cu",
                             "sm_86", {})


def test_disk_cache_is_keyed_by_source_options_and_arch(tmp_path, monkeypatch):
    monkeypatch.setenv("CONFORMER_TRT_CACHE", str(tmp_path))
    src = 'extern "C" __global__ void k(float* x) { x[threadIdx.x] = VALUE; }'
    a = nvrtc.compile_source(src, "k.cu", "sm_86", {"VALUE": 1})
    files = set((tmp_path / "cubin").iterdir())
    assert len(files) == 1
    assert nvrtc.compile_source(src, "k.cu", "sm_86", {"VALUE": 1}) == a   # from the cache
    assert len(set((tmp_path / "cubin").iterdir())) == 1
    nvrtc.compile_source(src, "k.cu", "sm_86", {"VALUE": 2})
    nvrtc.compile_source(src, "k.cu", "sm_90", {"VALUE": 1})
    nvrtc.compile_source(src + "\n", "k.cu", "sm_86", {"VALUE": 1})
    assert len(set((tmp_path / "cubin").iterdir())) == 4


@pytest.mark.parametrize("macros", [{"A B": 1}, {"A": 1.5}, {"A": "1; x"}, {"A": True}])
def test_macros_are_checked(macros):
    with pytest.raises(ValueError):
        nvrtc.options("sm_86", macros)


def test_arch_is_checked():
    with pytest.raises(ValueError, match="sm_90"):
        nvrtc.options("90", {})
