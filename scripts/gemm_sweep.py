"""The INT4 and 2:4 CUDA GEMMs on a GPU: every valid tile config (of ``cuda``: whose token tile
fits M), each checked against the float64 reference on poisoned outputs, then timed as a chain
of calls in one CUDA graph over rotated inputs larger than the L2 (kernels.timing.bench_graph),
as a programmatic dependent launch (the kernel fetches its weight before waiting for the one
ahead) and, for the best few, as a plain launch; cuBLAS fp16 on the dense weight alongside, and
a speed of light for the harness: a Triton kernel that only reads the same weight bytes (packed
weight, scales, zeros) and writes one sum per program, in the same graph, as a programmatic
dependent launch that reads before its wait (as the GEMMs do) and as a plain one.

    python3 scripts/gemm_sweep.py [--kernel int4_gemm] [--impl cuda] [--m 1 16] [--n 4096]
                                  [--k 4096] [--only WARPS_K=8 SPLIT=2,4 ...]

fp16, group 128, asymmetric, no bias (the decode-like case of issue 6). Compiles run in
parallel processes first (NVRTC's disk cache then serves the timing process).
"""
import argparse
import dataclasses
import itertools
import os
from concurrent.futures import ProcessPoolExecutor

import torch
import triton
import triton.language as tl
from tqdm import tqdm

import kernels
from kernels import contract, launch, timing, verify
from kernels import gpu as gpus
from kernels.int4_gemm import tiles
from kernels.triton_common import wait_for_predecessor


def _shape(kernel, m, n, k):
    if kernel == "int4_gemm":
        return {"M": m, "N": n, "K": k, "group": 128, "asym": 1, "with_bias": 0}
    return {"M": m, "N": n, "K": k, "with_bias": 0}


def candidates(kernel, impl, shape, spec, only=None):
    """Valid configs (of ``cuda``: whose token tile BM is at most M rounded up to a multiple of
    8) that hold one of the values in ``only`` (a dict of name: tuple of values) for each name."""
    bm_max = max(8, -(-shape["M"] // 8) * 8)
    fits = (lambda c: tiles.sizes(c)["BM"] <= bm_max) if impl.name == "cuda" else (lambda c: True)
    out = []
    for values in itertools.product(*impl.space.values()):
        config = dict(zip(impl.space, values))
        if any(config[k] not in v for k, v in (only or {}).items()):
            continue
        if fits(config) and impl.valid(config, shape, "float16", spec) is None:
            out.append(config)
    return out


@triton.jit
def _read(X, OUT, n, BLOCK: tl.constexpr, GDC: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    total = tl.sum(tl.load(X + offs, mask=offs < n, other=0))
    wait_for_predecessor(GDC)   # like the GEMMs: the constant weight before the wait, y after
    tl.store(OUT + tl.program_id(0), total)


def read_only_us(sets, pdl: bool) -> float:
    """Per call, reading every weight tensor of one input set (as int32 words) and writing one
    sum per program, rotated like the GEMMs' inputs; ``pdl``: as a programmatic dependent launch
    (sm_90+) that reads before its wait, as the GEMMs do."""
    block = 4096

    def weight_words(inputs):
        raw = torch.cat([t.reshape(-1).view(torch.uint8) for k, t in inputs.items()
                         if k not in ("x", "bias")])
        return torch.nn.functional.pad(raw, (0, -raw.numel() % 4)).view(torch.int32)
    words = [weight_words(s) for s in sets]
    outs = [torch.empty(triton.cdiv(w.numel(), block), dtype=torch.int32, device="cuda") for w in words]
    opts = launch.triton_pdl_args() if pdl else {"GDC": 0}

    def call(w, o):
        return lambda: _read[(o.numel(),)](w, o, w.numel(), BLOCK=block, num_warps=8, **opts)
    return timing.bench_graph([call(w, o) for w, o in zip(words, outs)], reps=15).median_us


def _compile(job):
    kernel, impl_name, config, shape, arch = job
    k = kernels.get(kernel)
    impl = k.impl(impl_name)
    launch.cuda_cubin(impl, contract.resolved_constants(k, impl, config, shape, "float16"),
                      "float16", arch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="int4_gemm", choices=("int4_gemm", "sparse24_gemm"))
    ap.add_argument("--impl", default="cuda", choices=("cuda", "cuda_wgmma", "cuda_wgmma_kres"))
    ap.add_argument("--m", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--only", nargs="*", default=[], metavar="NAME=VALUE",
                    help="sweep only the configs with these values (NAME=V or NAME=V1,V2)")
    args = ap.parse_args()
    K = kernels.get(args.kernel)
    impl = K.impl(args.impl)
    only = {}
    for item in args.only:
        name, _, value = item.partition("=")
        values = value.split(",")
        if name not in impl.space or not all(v.lstrip("-").isdigit() for v in values):
            ap.error(f"--only {item!r}: want NAME=INT[,INT...] with NAME one of {', '.join(impl.space)}")
        only[name] = tuple(int(v) for v in values)
    plain = dataclasses.replace(impl, launches=tuple(
        dataclasses.replace(lc, pdl=False) for lc in impl.launches))
    spec = gpus.running().spec
    shapes = [_shape(args.kernel, m, args.n, args.k) for m in args.m]
    jobs = [(args.kernel, args.impl, c, s, spec.arch) for s in shapes for c in candidates(K, impl, s, spec, only)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(tqdm(pool.map(_compile, jobs, chunksize=4), total=len(jobs), desc="compile"))
    failed = []
    for shape in shapes:
        cost = K.cost(shape, "float16")
        gen = torch.Generator(device="cuda").manual_seed(0)
        sets = [K.make_inputs(shape, torch.float16, "cuda", gen)
                for _ in range(timing.rotation(cost.bytes, max_sets=24))]
        outs = [launch.empty_outputs(K, shape, "float16", "cuda") for _ in sets]
        ref = K.reference(sets[0], shape, {})["y"]

        def per_call(which, config):
            return timing.bench_graph([lambda s=s, o=o: launch.run(K, which, config, {**s, **o}, shape)
                                       for s, o in zip(sets, outs)], reps=15).median_us

        rows = []
        for config in tqdm(candidates(K, impl, shape, spec, only), desc=f"M={shape['M']}"):
            outs[0]["y"].fill_(float("nan"))
            launch.run(K, impl, config, {**sets[0], **outs[0]}, shape)
            err = verify.relative_error(outs[0]["y"], ref)
            if not err < 1e-2:          # reported below, never timed
                failed.append(f"M={shape['M']} {config}: relative error {err}")
                print(f"WRONG {failed[-1]}", flush=True)
                continue
            rows.append((per_call(impl, config), config))
        rows.sort(key=lambda r: r[0])
        cublas = timing.bench_graph([lambda s=s: K.baseline(s, shape, {}) for s in sets], reps=15).median_us
        default = launch.default_config(K, impl, shape, "float16")   # a stored winner, else the heuristic
        gbps = lambda us: cost.bytes / (us * 1e-6) / 1e9   # noqa: E731
        print(f"{args.kernel} M={shape['M']} N={shape['N']} K={shape['K']}: {len(rows)} configs, "
              f"cuBLAS fp16 {cublas:.2f} us; reading the weight bytes alone: pdl "
              f"{read_only_us(sets, True):.2f} us, plain {read_only_us(sets, False):.2f} us", flush=True)
        print(f"  default {default}: pdl {per_call(impl, default):.2f} us, "
              f"plain {per_call(plain, default):.2f} us")
        for us, config in rows[:args.top]:
            print(f"  {us:7.2f} us ({cublas / us:.2f}x cuBLAS, {gbps(us):.0f} GB/s), plain "
                  f"{per_call(plain, config):7.2f} us  {config}", flush=True)
    if failed:
        raise SystemExit("wrong results:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
