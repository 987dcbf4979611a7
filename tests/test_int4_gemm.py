"""INT4 weight-only GEMM without a GPU: quantisation, the packed layout (nibble by nibble, against
the fragment order the CUDA kernel reads), the public function through the Triton interpreter,
and bad input refused before launch."""
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import kernels
from kernels import contract
from kernels.int4_gemm import KERNEL, dequantize, int4_linear, packing, prepare
from tests.sass import sass_of

# The launcher's checks and the public function run on the GPU where there is one, else through
# Triton's interpreter on the CPU.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _nibble(qweight, n, k):
    """The nibble of w[n, k] read the way a lane of the CUDA kernel reads it: row pair, word of
    lane t for m16n8k16 step j, then (w >> 4 * register) & 0x000f000f for register 0..3."""
    row, hi = 8 * (n // 16) + n % 8, (n % 16) // 8
    c, j, khalf, t, e = k // 64, (k % 64) // 16, (k % 16) // 8, (k % 8) // 2, k % 2
    word = int(qweight[row, 16 * c + 4 * t + j]) & 0xFFFFFFFF
    register = hi + 2 * khalf            # a0: (g, k), a1: (g + 8, k), a2: (g, k + 8), a3: ...
    return (word >> (4 * register + 16 * e)) & 0xF


@pytest.mark.parametrize("n, k", [(16, 64), (33, 96), (40, 384)])
def test_packing_round_trip_and_fragment_order(n, k):
    g = torch.Generator().manual_seed(n)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    packed = packing.pack_q(q)
    assert packed.dtype == torch.int32 and packed.shape == (packing.cdiv(n, 16) * 8, packing.cdiv(k, 64) * 16)
    assert torch.equal(packing.unpack_q(packed, n, k), q)
    for nn in range(n):
        for kk in range(0, k, 7):
            assert _nibble(packed, nn, kk) == q[nn, kk], (nn, kk)


@pytest.mark.parametrize("asym", [True, False])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_quantisation_error_is_that_of_4_bits(asym, group):
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(group))
    t = packing.pack_weight(w, group, asym, torch.float16)
    assert set(t) == ({"qweight", "scales", "zeros"} if asym else {"qweight", "scales"})
    back = dequantize(t["qweight"], t["scales"], t.get("zeros"), 48, 256, group)
    err = ((back - w.double()).norm() / w.norm()).item()
    assert err < (0.12 if asym else 0.14)
    # a weight that is exactly representable comes back exactly
    exact = back.float()
    t2 = packing.pack_weight(exact, group, asym, torch.float16)
    again = dequantize(t2["qweight"], t2["scales"], t2.get("zeros"), 48, 256, group)
    assert ((again - back).norm() / back.norm()).item() < 2e-3


@pytest.mark.parametrize("impl", ["triton", "triton_splitk"])
def test_public_function_triton(impl):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(40, 96, generator=g).to(DEV)
    x = torch.randn(2, 3, 96, generator=g).half().to(DEV)
    b = torch.randn(40, generator=g).half().to(DEV)
    wq = prepare(w, group=32)
    y = int4_linear(x, wq, bias=b, impl=impl)
    assert y.shape == (2, 3, 40) and y.dtype == torch.float16
    dense = dequantize(wq.tensors["qweight"], wq.tensors["scales"], wq.tensors["zeros"], 40, 96, 32)
    ref = x.double() @ dense.t() + b.double()
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize("make, error, match", [
    (lambda: prepare(torch.randn(8, 100), group=32), ValueError, "multiple of the group size 32"),
    (lambda: prepare(torch.randn(8, 96), group=48), ValueError, "group must be one of"),
    (lambda: prepare(torch.randn(8, 96).int(), group=32), TypeError, "floating-point"),
    (lambda: prepare(torch.randn(8, 96), group=32, dtype=torch.float32), TypeError, "fp16 or bf16"),
])
def test_bad_weights_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def _packed(n=40, k=96, group=32):
    return prepare(torch.randn(n, k, generator=torch.Generator().manual_seed(0)).to(DEV), group=group)


def _broken(field, value):
    w = _packed()
    return type(w)({**w.tensors, field: value}, w.n, w.k, w.group)


@pytest.mark.parametrize("args, error, match", [
    (lambda w: (torch.randn(4, 95, device=DEV).half(), w), ValueError, r"\[\.\.\., K=96\]"),
    (lambda w: (torch.randn(4, 96, device=DEV).half(), w.tensors), TypeError, "Int4Weight"),
    (lambda w: ("x", w), TypeError, "torch.Tensor"),
    (lambda w: (torch.randn(96, 4, device=DEV).half().t(), w), ValueError, "K=96|contiguous"),
    (lambda w: (torch.randn(4, 96, device=DEV).half(), _broken("qweight", w.tensors["qweight"][:, :-1].clone())),
     ValueError, "qweight has shape"),
    (lambda w: (torch.randn(4, 96, device=DEV).half(), _broken("qweight", w.tensors["qweight"].to(torch.int64))),
     TypeError, "qweight has dtype"),
    (lambda w: (torch.randn(4, 96, device=DEV).half(), _broken("zeros", w.tensors["zeros"].float())),
     TypeError, "zeros has dtype"),
    (lambda w: (torch.randn(4, 96, device=DEV).bfloat16(), w), TypeError, "scales has dtype"),
])
def test_bad_calls_are_refused_before_launch(args, error, match):
    with pytest.raises(error, match=match):
        int4_linear(*args(_packed()), impl="triton")


def test_shape_rules_hold_for_the_contract_too():
    bad = {"M": 4, "N": 40, "K": 100, "group": 32, "asym": 1, "with_bias": 0}
    for impl in KERNEL.impls:
        config = impl.heuristic({**bad, "K": 96}, "float16", None)
        assert "multiple of the group" in impl.valid(config, bad, "float16", None)
        with pytest.raises(ValueError, match="multiple of the group"):
            impl.constants(config, bad, "float16")


# Compiled in a subprocess: Triton's ahead-of-time compiler needs JIT functions, which a process
# under TRITON_INTERPRET=1 (this one, without a GPU) does not have.
_AOT = """
import json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from kernels.int4_gemm import KERNEL, triton_impl
shape = {"M": 16000, "N": 1024, "K": 256, "group": 128, "asym": 1, "with_bias": 1}
impl = KERNEL.impl("triton")
config = impl.heuristic(shape, "float16", None)
consts = impl.constants(config, shape, "float16")
fn = triton_impl.w4a16_gemm
sig = {"X": "*fp16", "QW": "*i32", "S": "*fp16", "Z": "*u8", "B": "*fp16", "Y": "*fp16",
       "WS": "*u8", "M": "i32"}
const = {p.name: consts[p.name] for p in fn.params if p.name not in sig}
sig.update({name: "constexpr" for name in const})
target = GPUTarget("cuda", 90, 32)
options = make_backend(target).parse_options({"num_warps": config["num_warps"],
                                              "num_stages": config["num_stages"]}).__dict__
c = triton.compile(ASTSource(fn, sig, const, {(i,): [["tt.divisibility", 16]] for i in range(7)}),
                   target=target, options=options)
tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
usage = None
if os.path.exists(tool):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(c.asm["cubin"]); f.flush()
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
print(json.dumps({"config": config, "wgmma": c.asm["ptx"].count("wgmma.mma_async"),
                  "local": re.findall(r"LOCAL:(\\d+)", usage) if usage else None}))
"""


def test_large_m_triton_tiles_compile_to_wgmma_without_spilling():
    """The large-M heuristic tile, compiled ahead of time for sm_90: warpgroup MMAs, no local
    memory (a spill would show as LOCAL > 0 in the cubin's resource usage)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_AOT)], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["wgmma"] > 0, result
    if result["local"] is None:
        pytest.skip("Triton's bundled cuobjdump is missing: spills not checked")
    assert result["local"] and all(v == "0" for v in result["local"]), result


def test_wgmma_impl_is_for_sm90_only_and_compiles_to_hgmma():
    """cuda_wgmma: refused (with the reason) on every GPU but sm_90; no OVERLAP (below); the
    large-M heuristic config, compiled for an H100 (NVRTC, sm_90a), holds warpgroup MMAs whose A
    operand is a register (the dequantised weight), as its cuobjdump SASS shows."""
    from kernels import gpu

    impl = KERNEL.impl("cuda_wgmma")
    shape = {"M": 16000, "N": 1024, "K": 256, "group": 128, "asym": 1, "with_bias": 1}
    h100 = gpu.by_name("h100")
    config = impl.heuristic(shape, "float16", h100)
    assert impl.valid(config, shape, "float16", h100) is None
    for name in ("a10", "l4", "a100"):
        assert "sm_90" in impl.valid(config, shape, "float16", gpu.by_name(name))
    with pytest.raises(ValueError, match="OVERLAP=1 is not one of"):
        contract.check_config(impl, {**config, "OVERLAP": 1})
    sass = sass_of("int4_gemm", "cuda_wgmma", config, shape)
    hgmma = re.findall(r"HGMMA\.64x128x16\.F32\S* (R\d+), (\S+), gdesc", sass)
    assert hgmma and all(a.startswith("R") for _, a in hgmma), sass[-2000:]


@pytest.mark.parametrize("bt", [64, 256])
def test_overlap_would_overwrite_running_a_fragments(bt):
    """Why cuda_wgmma has no OVERLAP: compiled with it anyway (MT 1, sm_90a), the SASS gives the
    next stage's dequantised fragments the registers that the running stage's wgmma reads
    (kernels/sass.py; on an H100 such configs gave wrong results). The check that clears
    sparse24_gemm's OVERLAP finds it here, and as that kernel's binary_check it refuses the
    binary when it is built -- a clear error, before any launch."""
    import dataclasses

    from kernels import launch, sass
    from tests.sass import sass_of_constants

    impl = KERNEL.impl("cuda_wgmma")
    shape = {"M": 1000, "N": 1024, "K": 1024, "group": 128, "asym": 1, "with_bias": 0}
    consts = impl.constants({"WG": 2, "BT": bt, "MT": 1, "STAGES": 4, "OVERLAP": 1}, shape, "float16")
    hazards = sass.overlap_register_hazards(sass_of_constants(impl, consts))
    assert any("HGMMA" not in h for h in hazards), hazards
    checked = dataclasses.replace(impl, binary_check=sass.overlap_check)
    with pytest.raises(launch.BinaryRefused, match="overwrites registers a running wgmma reads"):
        launch.cuda_cubin(checked, consts, "float16", "sm_90")
    launch.cuda_cubin(checked, {**consts, "OVERLAP": 0}, "float16", "sm_90")   # passes without


@pytest.mark.parametrize("k, group", [(256, 128), (96, 32)])
def test_resident_slab_wgmma_impl_pipelines_its_mmas(k, group):
    """cuda_wgmma_kres: refused past K = 256 and on every GPU but sm_90; every config compiles
    for sm_90a without local memory, its wgmma of a tile issued back to back with one wait
    (ptxas serialises them -- a wait after each -- when anything reads their accumulators before
    the wait, as a first version with two accumulator sets did), the A operand in registers."""
    from kernels import gpu

    impl = KERNEL.impl("cuda_wgmma_kres")
    h100 = gpu.by_name("h100")
    shape = {"M": 16000, "N": 1024, "K": k, "group": group, "asym": 1, "with_bias": 1}
    assert "K <= 256" in impl.valid(impl.heuristic({**shape, "K": 512}, "float16", h100),
                                     {**shape, "K": 512}, "float16", h100)
    for name in ("a10", "l4", "a100"):
        assert "sm_90" in impl.valid(impl.heuristic(shape, "float16", h100), shape, "float16", gpu.by_name(name))
    for values in itertools.product(*impl.space.values()):
        config = dict(zip(impl.space, values))
        assert impl.valid(config, shape, "float16", h100) is None, config
        sass = sass_of("int4_gemm", "cuda_wgmma_kres", config, shape)
        res = sass_of("int4_gemm", "cuda_wgmma_kres", config, shape, flag="-res-usage")
        assert "LOCAL:0" in res, (config, res[-300:])
        hgmma = re.findall(r"HGMMA\.64x(?:64|128)x16\.F32\S* R\d+, (\S+), gdesc", sass)
        assert len(hgmma) == k // 16 and all(a.startswith("R") for a in hgmma), config
        assert sass.count("WARPGROUP.DEPBAR") == 1, config


@pytest.mark.parametrize("kernel", ["int4_gemm", "sparse24_gemm"])
def test_split_k_is_a_cluster_on_sm90_only(kernel):
    """SPLIT > 1 is refused before sm_90 and past K's k-tiles; where taken, the cubin declares
    the cluster (cuobjdump -elf: EIATTR_CTA_PER_CLUSTER), so a plain launch forms it -- without
    it the cluster barrier and the distributed shared-memory loads fault (seen on an H100)."""
    from kernels import gpu

    k = kernels.get(kernel)
    impl = k.impl("cuda")
    shape = {"M": 16, "N": 200, "K": 640, "with_bias": 1}
    if kernel == "int4_gemm":
        shape.update(group=64, asym=1)
    h100 = gpu.by_name("h100")
    base = {**impl.heuristic(shape, "float16", h100), "WARPS_K": 2}     # 5 k-tiles of 128
    for split in (2, 4):
        config = {**base, "SPLIT": split}
        assert impl.valid(config, shape, "float16", h100) is None
        assert "sm_90" in impl.valid(config, shape, "float16", gpu.by_name("a100"))
        elf = sass_of(kernel, "cuda", config, shape, flag="-elf")
        assert "EIATTR_CTA_PER_CLUSTER" in elf and "EIATTR_EXPLICIT_CLUSTER" in elf
    assert "k-tiles" in impl.valid({**base, "SPLIT": 4, "WARPS_K": 4}, shape, "float16", h100)
    assert "CLUSTER" not in sass_of(kernel, "cuda", {**base, "SPLIT": 1}, shape, flag="-elf")


@pytest.mark.parametrize("m, n, k, gpu_name, want", [
    (16000, 1024, 256, "h100", "cuda_wgmma_kres"),
    (16000, 256, 1024, "h100", "cuda_wgmma"),
    (1, 4096, 4096, "h100", "cuda"),
    (16000, 1024, 256, "a10", "cuda"),
])
def test_auto_impl_by_shape_and_gpu(m, n, k, gpu_name, want):
    from kernels import gpu
    from kernels.int4_gemm import tiles

    shape = {"M": m, "N": n, "K": k, "group": 128, "asym": 1, "with_bias": 0}
    assert tiles.auto_impl(KERNEL, shape, "float16", gpu.by_name(gpu_name)) == want
