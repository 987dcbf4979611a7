"""Every registered kernel honours the contract; adding a kernel is adding a folder."""
import dataclasses
import importlib
import itertools
import sys
import textwrap

import pytest
import triton

import kernels
from kernels import contract, gpu
from kernels.contract import ModelDims

KERNELS = sorted(kernels.registry())


def test_registry_finds_layernorm():
    assert "layernorm" in KERNELS
    with pytest.raises(ValueError, match="unknown kernel 'nope'"):
        kernels.get("nope")


@pytest.mark.parametrize("name", KERNELS)
def test_declarations_are_complete(name):
    k = kernels.get(name)
    contract.validate_declaration(k)
    assert k.impls and k.dtypes and k.examples
    assert set(k.tolerance) >= set(k.dtypes)
    for shape in k.tune_shapes(ModelDims()) + list(k.examples):
        shape = contract.check_shape(k, shape)
        cost = k.cost(shape, k.dtypes[0])
        assert cost.bytes > 0 and cost.flops >= 0


def _any_valid(impl, shape, dtype, spec) -> bool:
    return any(impl.valid(dict(zip(impl.space, values)), shape, dtype, spec) is None
               for values in itertools.product(*impl.space.values()))


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("target", sorted(gpu.KNOWN_GPUS))
def test_heuristic_configs_are_valid_everywhere(name, target):
    k, spec = kernels.get(name), gpu.by_name(target)
    for impl in k.impls:
        for shape in k.tune_shapes(ModelDims()) + list(k.examples):
            for dtype in k.dtypes_of(impl):
                config = contract.check_config(impl, impl.heuristic(shape, dtype, spec))
                reason = impl.valid(config, shape, dtype, spec)
                if not impl.runs_on(spec):   # an sm_90a kernel elsewhere: refused, with a reason
                    assert reason, (impl.name, target)
                    continue
                if reason and not _any_valid(impl, shape, dtype, spec):
                    continue   # a shape this impl leaves to another (refused with a reason)
                assert reason is None, (impl.name, shape, dtype)
                consts = contract.resolved_constants(k, impl, config, shape, dtype)
                env = contract.launch_env(shape, consts, config)
                for launch in impl.launches:
                    assert all(g >= 1 for g in contract.grid_of(launch, env))


def test_tampered_or_stale_configs_are_refused():
    impl = kernels.get("layernorm").impl("cuda")
    good = {"VEC": 8, "WARPS_PER_ROW": 1, "ROWS_PER_BLOCK": 4, "STREAM": 0}
    assert contract.check_config(impl, good) == good
    for bad in ({**good, "VEC": 3}, {**good, "VEC": "8"}, {**good, "VEC": True},
                {"VEC": 8, "WARPS_PER_ROW": 1, "ROWS_PER_BLOCK": 4}, {**good, "EXTRA": 1},
                {**good, "VEC": "8); system(\"rm -rf /\"); (0"}, [("VEC", 8)]):
        with pytest.raises(ValueError):
            contract.check_config(impl, bad)


def test_shapes_out_of_range_are_refused():
    k = kernels.get("layernorm")
    with pytest.raises(ValueError, match="hidden=16 is outside"):
        contract.check_shape(k, {"rows": 4, "hidden": 16, "with_residual": 0})
    with pytest.raises(ValueError, match="hidden=8193 is outside"):
        contract.check_shape(k, {"rows": 4, "hidden": 8193, "with_residual": 0})
    with pytest.raises(ValueError, match="unknown dims"):
        contract.check_shape(k, {"rows": 4, "hidden": 64, "with_residual": 0, "x": 1})


def test_a_new_kernel_is_a_new_folder(tmp_path, monkeypatch):
    pkg = tmp_path / "toy_scale"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from kernels.contract import Cost, Dim, Impl, Kernel, Launch, TensorSpec
        IMPL = Impl(name="cuda", sources=(), space={"B": (64, 128)},
                    launches=(Launch("scale", ("cdiv(n, B)", "1", "1"), ("x", "y", "n"),
                                     threads="B"),),
                    constants=lambda c, s, d: {"B": c["B"]},
                    valid=lambda c, s, d, g: None, heuristic=lambda s, d, g: {"B": 64})
        KERNEL = Kernel(name="toy_scale", doc="y = 2x", dims=(Dim("n", dynamic=True),),
                        tensors=(TensorSpec("x", ("n",)), TensorSpec("y", ("n",), role="out")),
                        scalars={}, dtypes=("float32",), impls=(IMPL,),
                        reference=lambda i, s, a: {"y": 2 * i["x"].double()},
                        baseline=lambda i, s, a: 2 * i["x"],
                        make_inputs=lambda *a: {}, cost=lambda s, d: Cost(8 * s["n"], s["n"]),
                        tune_shapes=lambda m: [{"n": m.batch * m.seq_len}],
                        examples=({"n": 3},))
    '''))
    monkeypatch.setattr(kernels, "__path__", [*kernels.__path__, str(tmp_path)])
    kernels.registry.cache_clear()
    try:
        assert kernels.get("toy_scale").impl("cuda").space == {"B": (64, 128)}
    finally:
        kernels.registry.cache_clear()
        sys.modules.pop("kernels.toy_scale", None)
        importlib.invalidate_caches()


def test_gpu_names():
    assert gpu.by_name("H100").arch == "sm_90"
    assert gpu.identify("NVIDIA A10", (8, 6)).name == "a10"
    assert gpu.identify("NVIDIA A100-SXM4-80GB", (8, 0)).name == "a100"
    assert gpu.identify("NVIDIA H100 80GB HBM3", (9, 0)).name == "h100"
    assert gpu.identify("NVIDIA L4", (8, 9)).name == "l4"
    assert gpu.identify("NVIDIA GeForce RTX 4090", (8, 9)) is None
    with pytest.raises(ValueError, match="unknown GPU 'b200'"):
        gpu.by_name("b200")
    assert gpu.for_arch("sm_86").smem_per_block == 101376
    with pytest.raises(ValueError, match="unsupported architecture"):
        gpu.for_arch("sm_61")


def test_buckets_round_dynamic_dims_only():
    k = kernels.get("layernorm")
    assert contract.bucket_of(k, {"rows": 16000, "hidden": 257, "with_residual": 1}) == \
        {"rows": 16384, "hidden": 257, "with_residual": 1}
    tuned = [{"rows": r, "hidden": 256, "with_residual": 1} for r in (4096, 16384, 65536)]
    pick = contract.nearest_bucket
    assert pick(k, {"rows": 16000, "hidden": 256, "with_residual": 1}, tuned)["rows"] == 16384
    assert pick(k, {"rows": 9000, "hidden": 256, "with_residual": 1}, tuned)["rows"] == 16384
    assert pick(k, {"rows": 3, "hidden": 256, "with_residual": 1}, tuned)["rows"] == 4096
    assert pick(k, {"rows": 10**7, "hidden": 256, "with_residual": 1}, tuned)["rows"] == 65536
    assert pick(k, {"rows": 16000, "hidden": 512, "with_residual": 1}, tuned) is None
    # ties between two tuned neighbours go to the larger bucket
    two = [{"rows": r, "hidden": 256, "with_residual": 1} for r in (4096, 65536)]
    assert pick(k, {"rows": 16000, "hidden": 256, "with_residual": 1}, two)["rows"] == 65536


@pytest.mark.parametrize("name", KERNELS)
def test_constants_do_not_depend_on_dynamic_dims(name):
    """A bucket covers many dynamic values, so one compiled binary must serve them all."""
    k = kernels.get(name)
    for impl in k.impls:
        for shape in k.examples:
            config = impl.heuristic(shape, k.dtypes[0], None)
            a = impl.constants(config, shape, k.dtypes[0])
            other = {**shape, **{d: shape[d] + 1 for d in k.dynamic_dims}}
            assert impl.constants(config, other, k.dtypes[0]) == a, impl.name


def test_a_pdl_launch_needs_a_kernel_that_waits():
    """A Triton launch declared ``pdl`` must take the GDC constexpr that makes it wait for its
    predecessor; one without it is refused when the kernel is registered."""
    k = kernels.get("layernorm")
    impl = k.impl("triton")
    assert impl.launches[0].pdl
    contract.validate_declaration(k)

    @triton.jit
    def no_wait(X, R, W, B, Y, S, rows, eps):
        pass

    bad = dataclasses.replace(impl, fns={impl.launches[0].kernel: no_wait})
    with pytest.raises(ValueError, match="no constexpr GDC = 0 parameter"):
        contract.validate_declaration(dataclasses.replace(k, impls=(bad,)))
