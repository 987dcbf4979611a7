"""plugin_gen on the GPU: a library built here for this GPU, from winners made in the test (every
registered kernel: its dtypes and its examples' static shapes, two buckets each; the heuristic
configs stand in for tuned ones), called through its C ABI from Python (ctypes + torch) against
each kernel's float64 reference for every winner; captured in a CUDA graph; refused on a GPU of
another architecture; and its TensorRT plugins driven by the C++ harness (when TensorRT's headers
are there, see tests/test_plugin_gen.py).

Environment: PLUGIN_GEN_TEST_KERNELS=a,b limits the kernels; PLUGIN_GEN_CUDA_INCLUDE names a
directory with cuda.h (else the usual search).
"""
import os
import subprocess

import pytest
import torch

import kernels
from kernels import expr, gpu, launch, verify
from plugin_gen import build
from plugin_gen.loader import Library, LibraryError
from tests.test_plugin_gen import (CUDA_INCLUDE, HAS_TRT, TRT_INCLUDE, harness, make_winners,
                                   write_cases)

pytestmark = pytest.mark.gpu


def kernel_names() -> list[str]:
    chosen = os.environ.get("PLUGIN_GEN_TEST_KERNELS")
    return chosen.split(",") if chosen else sorted(kernels.registry())


def build_for_this_gpu(out, kernel_names, extra=None, **winner_args):
    """Build a library for the running GPU from make_winners(**winner_args) (statics=1) and, with
    ``extra``, make_winners(**{**winner_args, **extra}) (all static shapes)."""
    running = gpu.running()
    spec = running.spec
    common = dict(spec=spec, device_name=running.device_name, cc=f"{running.cc[0]}.{running.cc[1]}")
    winners = make_winners(spec.name, kernel_names, **common, **{"statics": 1, **winner_args})
    if extra:
        winners += make_winners(spec.name, kernel_names, **common, **{**winner_args, **extra})
    return build(spec.name, out, winners=winners,
                 tensorrt_include=TRT_INCLUDE if HAS_TRT else None, cuda_include=CUDA_INCLUDE,
                 log=print)


@pytest.fixture(scope="module", params=kernel_names())
def built(request, tmp_path_factory):
    """(library path, Library): one library per kernel (a kernel that fails to build fails only
    its own tests) with every dtype at the first static shape, the first dtype at the others, two
    buckets each."""
    name = request.param
    first = kernels.get(name).dtypes[:1]
    result = build_for_this_gpu(tmp_path_factory.mktemp(name), [name], scales=(1, 8),
                                extra=dict(dtypes=first))
    return result.library, Library(result.library)


def inside(k, bucket: dict) -> dict:
    """A shape whose bucket is ``bucket``: odd dynamic dims just past the previous power of two."""
    return {d: (v // 2 + 1 if d in k.dynamic_dims else v) for d, v in bucket.items()}


def test_c_abi_matches_the_reference_for_every_winner(built):
    _, lib = built
    checked = 0
    for name, entry in lib.manifest["kernels"].items():
        k = kernels.get(name)
        for index, v in enumerate(entry["variants"]):
            shape = inside(k, v["bucket"])
            assert lib.select(name, v["dtype"], shape) == index
            gen = torch.Generator(device="cuda").manual_seed(index)
            inputs = k.make_inputs(shape, launch.torch_dtype(v["dtype"]), "cuda", gen)
            outputs = launch.empty_outputs(k, shape, v["dtype"], "cuda", poison=True)
            lib.launch(name, {**inputs, **outputs}, shape, k.scalars)
            torch.cuda.synchronize()
            ref = k.reference(inputs, shape, k.scalars)
            errors = {o: verify.relative_error(outputs[o], ref[o]) for o in ref}
            tol = k.tolerance[v["dtype"]]
            assert all(e <= tol for e in errors.values()), (name, v["impl"], v["config"], shape, errors)
            checked += 1
    print(f"{checked} winners of {len(lib.manifest['kernels'])} kernels match their references")
    assert checked == sum(len(e["variants"]) for e in lib.manifest["kernels"].values())


def test_c_abi_launches_replay_in_a_cuda_graph(built):
    _, lib = built
    name, entry = next(iter(lib.manifest["kernels"].items()))
    k, v = kernels.get(name), entry["variants"][-1]
    shape = inside(k, v["bucket"])
    gen = torch.Generator(device="cuda").manual_seed(1)
    inputs = k.make_inputs(shape, launch.torch_dtype(v["dtype"]), "cuda", gen)
    outputs = launch.empty_outputs(k, shape, v["dtype"], "cuda", poison=True)
    workspace = torch.empty(max(1, lib.workspace_size(name, v["dtype"], shape)), dtype=torch.uint8,
                            device="cuda")
    lib.launch(name, {**inputs, **outputs}, shape, workspace=workspace)   # loads the modules
    for t in outputs.values():
        t.fill_(float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lib.launch(name, {**inputs, **outputs}, shape, workspace=workspace)
    graph.replay()
    torch.cuda.synchronize()
    ref = k.reference(inputs, shape, k.scalars)
    assert all(verify.relative_error(outputs[o], ref[o]) <= k.tolerance[v["dtype"]] for o in ref)


def test_a_library_for_another_arch_is_refused(tmp_path):
    other = "a10" if gpu.running().cc != (8, 6) else "h100"
    spec = gpu.by_name(other)
    winners = make_winners(other, ["layernorm"], statics=1, dtypes=("float16",), scales=(1,))
    lib = Library(build(other, tmp_path, winners=winners, cuda_include=CUDA_INCLUDE,
                        log=print).library)
    with pytest.raises(LibraryError, match=f"WRONG_GPU: .*built and tuned for {other} "
                                           f"\\({spec.arch}\\); the current GPU is"):
        lib.check_device()
    x = torch.zeros(8, 32, dtype=torch.float16, device="cuda")
    w = torch.ones(32, dtype=torch.float16, device="cuda")
    with pytest.raises(LibraryError, match="WRONG_GPU"):
        lib.launch("layernorm", {"x": x, "weight": w, "bias": w, "y": torch.empty_like(x)},
                   {"rows": 8, "hidden": 32, "with_residual": 0})


@pytest.mark.skipif(not HAS_TRT, reason=f"TensorRT headers not found at {TRT_INCLUDE}")
def test_tensorrt_plugins_through_the_harness(built, tmp_path_factory, tmp_path):
    """creator → createPlugin from fields → clone → output types/shapes → formats → configure →
    workspace → serialise/deserialise → onShapeChange → enqueue, checked against the reference,
    for one shape in every winner's bucket of every kernel with a plugin."""
    library, lib = built
    exe = harness(tmp_path_factory)
    ran = 0
    for name, entry in lib.manifest["kernels"].items():
        if not entry["tensorrt_plugin"]:
            continue
        k = kernels.get(name)
        cases = [(v["dtype"], inside(k, v["bucket"]), None) for v in entry["variants"]]

        def reference(shape, dtype, i, k=k):
            gen = torch.Generator(device="cuda").manual_seed(i)
            inputs = k.make_inputs(shape, launch.torch_dtype(dtype), "cuda", gen)
            ref = k.reference(inputs, shape, k.scalars)
            files = ({}, {})
            for n, t in inputs.items():
                if t is not None:
                    files[0][n] = tmp_path / f"{name}{i}_{n}.bin"
                    t.contiguous().cpu().view(torch.uint8).numpy().tofile(files[0][n])
            for n, t in ref.items():
                files[1][n] = tmp_path / f"{name}{i}_{n}.f64"
                t.double().cpu().numpy().tofile(files[1][n])
            return files

        path = tmp_path / f"{name}.cases"
        write_cases(path, lib, name, cases, reference=reference)
        done = subprocess.run([str(exe), str(library), str(path)], capture_output=True,
                              text=True)
        print(done.stdout[-4000:])
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr
        assert done.stdout.count(" enqueue ") == len(cases)
        ran += len(cases)
    assert ran > 0


def test_grids_beyond_cuda_limits_are_refused(built):
    """A dim so large that a launch would need more blocks than CUDA allows fails cleanly."""
    _, lib = built
    for name, entry in lib.manifest["kernels"].items():
        k = kernels.get(name)
        v = entry["variants"][0]
        env = {**v["config"], **v["constants"]}
        dims = {d.name: d for d in k.dims}
        for dyn in k.dynamic_dims:
            shape = {**inside(k, v["bucket"]), dyn: dims[dyn].hi}
            grid = [expr.evaluate(g, {**shape, **env}) for g in v["launches"][0]["grid"]]
            if grid[0] < 2**31 and max(grid[1:]) <= 65535:
                continue
            with pytest.raises(LibraryError, match="beyond CUDA's limits"):
                lib.launch(name, {t.name: 4096 for t in k.present(shape)}, shape,
                           dtype=v["dtype"])
            return
    pytest.skip("no kernel's grid outgrows CUDA's limits within its dims' ranges")
