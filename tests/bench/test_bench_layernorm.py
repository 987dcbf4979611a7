"""LayerNorm (+ residual) at Conformer shapes: Triton, CUDA and torch.nn.functional.layer_norm,
and for reference two copies of the same bytes in the same harness, which pay the fixed costs of
a launch of that size (the copy bandwidth of a 1 GiB buffer does not): torch's device copy, and
a Triton copy launched like our kernels (a programmatic dependent launch on sm_90+, waiting for
the kernel ahead before it reads) -- the speed of light of a kernel that moves those bytes.

Configs are the tuner's winners for this GPU where the cache has them (``autotune run``), else the
implementation's heuristic; extra_info records which.
"""
import pytest
import torch
import triton
import triton.language as tl

import kernels
from kernels import launch, timing
from kernels.triton_common import wait_for_predecessor
from tests.bench.configs import config_for

K = kernels.get("layernorm")
SHAPES = [(rows, hidden) for rows in (16000, 65536) for hidden in (144, 256, 512, 1024)]


COPY_BLOCKS = (1024, 4096, 16384)   # int32 words per program of 8 warps: 4 to 64 per thread


@triton.jit
def _copy_words(X, Y, n, BLOCK: tl.constexpr, GDC: tl.constexpr):
    wait_for_predecessor(GDC)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    tl.store(Y + offs, tl.load(X + offs, mask=keep), mask=keep)


def _triton_copy(a, b, block):
    n = a.numel()
    return lambda: _copy_words[(triton.cdiv(n, block),)](
        a, b, n, BLOCK=block, num_warps=8, **launch.triton_pdl_args())


def _inputs(shape, n_sets, dtype=torch.float16):
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [K.make_inputs(shape, dtype, "cuda", gen) for _ in range(n_sets)]


@pytest.mark.parametrize("residual", [1, 0], ids=["residual", "plain"])
@pytest.mark.parametrize("rows, hidden", SHAPES, ids=[f"{r}x{h}" for r, h in SHAPES])
@pytest.mark.parametrize("impl", ["torch", "triton", "cuda", "copy"] + [f"triton_copy{b}" for b in COPY_BLOCKS])
def test_layernorm(measure, benchmark, impl, rows, hidden, residual):
    shape = {"rows": rows, "hidden": hidden, "with_residual": residual}
    cost = K.cost(shape, "float16")
    sets = _inputs(shape, timing.rotation(cost.bytes))
    benchmark.group = f"layernorm fp16 {rows}x{hidden} {'residual' if residual else 'plain'}"
    eps = {"eps": 1e-5}
    if "copy" in impl:   # read and write cost.bytes / 2 each, one kernel per call
        words = cost.bytes // 8
        bufs = [(torch.empty(words, dtype=torch.int32, device="cuda"),
                 torch.empty(words, dtype=torch.int32, device="cuda")) for _ in sets]
        if impl == "copy":
            measure([lambda a=a, b=b: b.copy_(a) for a, b in bufs], cost,
                    role="reference (a torch copy of the same bytes)", impl=impl)
        else:
            block = int(impl.removeprefix("triton_copy"))
            measure([_triton_copy(a, b, block) for a, b in bufs], cost,
                    role="speed of light (a Triton copy of the same bytes, launched like ours)",
                    impl=impl, config={"BLOCK": block})
        return
    if impl == "torch":
        calls = [lambda s=s: K.baseline(s, shape, eps) for s in sets]
        measure(calls, cost, role="baseline", impl=impl)
        return
    chosen = K.impl(impl)
    config, source = config_for(K, chosen, shape)
    outs = [launch.empty_outputs(K, shape, "float16", "cuda") for _ in sets]
    calls = [lambda s=s, o=o: launch.run(K, chosen, config, {**s, **o}, shape, eps)
             for s, o in zip(sets, outs)]
    measure(calls, cost, role="candidate", impl=impl, config=config, config_source=source)

