"""The rel-pos attention's CUDA implementations over their whole config spaces on a GPU, beside the
Triton kernel's default config and SDPA without relative positions (the speed of light of the
same q.k^T and P.v), at issue 5's shape: B=32, H=4, d_k=64 (or --dk), fp16, full lengths.

Every config is first checked against the float64 reference (B=4, ragged lengths with an empty
sequence, poisoned output; a wrong one is reported and never timed), then timed as CUDA-graph
replays over rotated input sets larger than the L2 (kernels.timing.bench_graph, median).
Compiles run in parallel processes first (NVRTC's disk cache then serves the timing process).

    python3 scripts/relpos_sweep.py [--T 500 2000] [--rel 1] [--dk 64] [--top 8] [--impl cuda cuda_wgmma]
                                    [--only BN=64 MT=1,2 ...]
"""
import argparse
import itertools
import os
from concurrent.futures import ProcessPoolExecutor

import torch
from tqdm import tqdm

import kernels
from kernels import contract, launch, timing, verify
from kernels import gpu as gpus

K = kernels.get("relpos_attention")


def _shape(t, rel, dk, b=32):
    return {"B": b, "T": t, "H": 4, "DK": dk, "chunk": 0, "left_chunks": -1, "packed": 0, "rel": rel}


def _configs(impl, shape, spec, only):
    space = {name: tuple(v for v in values if name not in only or v in only[name])
             for name, values in impl.space.items()}
    every = (dict(zip(space, v)) for v in itertools.product(*space.values()))
    return [c for c in every if impl.valid(c, shape, "float16", spec) is None]


def _compile(job):
    name, config, shape, arch = job
    impl = K.impl(name)
    launch.cuda_cubin(impl, contract.resolved_constants(K, impl, config, shape, "float16"),
                      "float16", arch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--rel", type=int, default=1, choices=(0, 1, 2))
    ap.add_argument("--dk", type=int, default=64, choices=(32, 64, 128))
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--impl", nargs="+", default=["cuda", "cuda_wgmma"])
    ap.add_argument("--only", nargs="*", default=[], metavar="NAME=VALUE",
                    help="restrict the spaces: NAME=INT[,INT...] (names absent from an impl's space are ignored)")
    args = ap.parse_args()
    only = {}
    for item in args.only:
        name, _, value = item.partition("=")
        if not name or not all(v.lstrip("-").isdigit() for v in value.split(",")):
            ap.error(f"--only {item!r}: want NAME=INT[,INT...]")
        only[name] = tuple(int(v) for v in value.split(","))
    spec = gpus.running().spec
    cudas = [K.impl(name) for name in args.impl if K.impl(name).runs_on(spec)]
    triton_impl = K.impl("triton")
    jobs = [(impl.name, c, _shape(t, args.rel, args.dk), spec.arch) for t in args.T for impl in cudas
            for c in _configs(impl, _shape(t, args.rel, args.dk), spec, only)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(tqdm(pool.map(_compile, jobs), total=len(jobs), desc="compile"))
    failed = []
    for t in args.T:
        shape = _shape(t, args.rel, args.dk)
        cost = K.cost(shape, "float16")
        gen = torch.Generator(device="cuda").manual_seed(0)
        sets = [K.make_inputs(shape, torch.float16, "cuda", gen)
                for _ in range(timing.rotation(cost.bytes, max_sets=16))]
        for s in sets:
            s["lengths"].fill_(t)
        outs = [launch.empty_outputs(K, shape, "float16", "cuda") for _ in sets]

        def per_call(impl, config):
            return timing.bench_graph([lambda s=s, o=o: launch.run(K, impl, config, {**s, **o}, shape)
                                       for s, o in zip(sets, outs)], reps=15).median_us

        rows = []
        for impl in cudas:
            for config in tqdm(_configs(impl, shape, spec, only), desc=f"{impl.name} T={t}"):
                v = verify.verify(K, impl, config, {**shape, "B": 4}, "float16", "cuda", seed=t)
                if not v.ok:
                    failed.append(f"{impl.name} T={t} {config}: {v}")
                    print(f"WRONG {failed[-1]}", flush=True)
                    continue
                rows.append((per_call(impl, config), impl.name, config))
        rows.sort(key=lambda r: r[0])
        heads = lambda s: [s[n].view(32, t, 4, args.dk).transpose(1, 2) for n in ("q", "k", "v")]  # noqa: E731
        sdpa = timing.bench_graph([lambda s=s: torch.nn.functional.scaled_dot_product_attention(*heads(s))
                                   for s in sets], reps=15).median_us
        tri_config = launch.default_config(K, triton_impl, shape, "float16")
        tri = per_call(triton_impl, tri_config)
        tflops = lambda us: cost.flops / (us * 1e-6) / 1e12   # noqa: E731
        print(f"relpos_attention rel={args.rel} B32 H4 dk{args.dk} T={t}: {len(rows)} CUDA configs; "
              f"SDPA (no rel-pos) {sdpa:.2f} us; triton {tri_config} {tri:.2f} us", flush=True)
        for impl in cudas:
            default = launch.default_config(K, impl, shape, "float16")
            print(f"  {impl.name} default {default}: {per_call(impl, default):.2f} us")
        for us, name, config in rows[:args.top]:
            print(f"  {us:8.2f} us  {us / sdpa:.2f}x SDPA  {tflops(us):6.1f} TFLOP/s  {name} {config}",
                  flush=True)
    if failed:
        raise SystemExit("wrong results:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
