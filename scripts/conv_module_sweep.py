"""The conv module's stages on a GPU: each stage alone (the impl's launches one at a time), the
whole module with programmatic dependent launch on or off for each launch (every combination),
and (``--sweep``) the whole module over a sweep of one stage's configs with the others at the
heuristic. Every whole-module candidate is first checked against the
float64 reference on poisoned outputs.

    python3 scripts/conv_module_sweep.py [--causal] [--impl cuda_dw] [--sweep] [--no-trigger]

B=32, T=500, D=256, K=31, fp16, full lengths (issue 4's shape); µs per call from CUDA-graph
replays over rotated inputs larger than the L2 (kernels.timing.bench_graph).
"""
import argparse
import dataclasses
import itertools

import torch
import triton
import triton.language as tl
from tqdm import tqdm

from kernels import gpu as gpus
from kernels import launch, timing
from kernels.conv_module import KERNEL as K
from kernels.conv_module import triton_impl


@triton.jit
def _wait_only(GDC: tl.constexpr):
    if GDC:
        tl.extra.cuda.gdc_wait()


PW1 = [dict(zip(("BM1", "BN1", "BK1", "W1", "S1"), v)) for v in (
    (128, 64, 64, 8, 3), (128, 64, 64, 4, 3), (128, 64, 64, 4, 4), (128, 64, 64, 8, 4),
    (128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (64, 128, 64, 4, 3), (64, 256, 64, 8, 3),
    (64, 64, 64, 4, 4), (256, 64, 64, 8, 3), (128, 32, 64, 4, 4))]
PW2 = [dict(zip(("BM2", "BN2", "BK2", "W2", "S2"), v)) for v in (
    (128, 128, 32, 4, 4), (128, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3),
    (64, 256, 64, 4, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 4),
    (64, 64, 64, 4, 4), (256, 128, 64, 8, 3))]
DW = [dict(zip(("TT", "TC", "VEC", "R"), v)) for v in (
    (64, 32, 1, 16), (128, 32, 1, 16), (64, 64, 1, 16), (128, 32, 1, 32), (64, 32, 1, 32),
    (128, 64, 1, 32), (128, 32, 2, 16), (128, 32, 2, 32), (128, 64, 2, 16), (256, 32, 1, 32))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--impl", default="cuda_dw")
    ap.add_argument("--sweep", action="store_true", help="also sweep each stage's configs")
    ap.add_argument("--no-trigger", action="store_true",
                    help="Triton kernels wait for their predecessor but do not let the next "
                         "launch start early (gdc_launch_dependents left out)")
    args = ap.parse_args()
    if args.no_trigger:
        triton_impl.wait_for_predecessor = _wait_only
    shape = {"B": 32, "T": 500, "D": 256, "K": 31, "causal": int(args.causal),
             "mask_after_glu": 0}
    impl = full = K.impl(args.impl)
    gpu = gpus.running().spec
    cost = K.cost(shape, "float16")
    gen = torch.Generator(device="cuda").manual_seed(0)
    sets = [K.make_inputs(shape, torch.float16, "cuda", gen)
            for _ in range(timing.rotation(cost.bytes))]
    for s in sets:
        s["lengths"].fill_(shape["T"])
    ref = K.reference(sets[0], shape, {})["y"]
    outs = [launch.empty_outputs(K, shape, "float16", "cuda") for _ in sets]
    base = launch.default_config(K, impl, shape, "float16")
    print("heuristic", base, flush=True)

    def calls(config, which=None):
        run_impl = impl if which is None else dataclasses.replace(
            impl, launches=tuple(l for l in impl.launches if l.kernel == which))
        return [lambda s=s, o=o: launch.run(K, run_impl, config, {**s, **o}, shape)
                for s, o in zip(sets, outs)]

    def whole(config):
        if impl.valid(config, shape, "float16", gpu):
            return None
        outs[0]["y"].fill_(float("nan"))
        calls(config)[0]()
        err = ((outs[0]["y"].double() - ref).norm() / ref.norm()).item()
        if not err < 1e-2:
            raise AssertionError(f"{config}: relative error {err}")
        return timing.bench_graph(calls(config), reps=15).median_us

    print("stages alone:", flush=True)
    for l in impl.launches:
        print(f"  {l.kernel:14s} {timing.bench_graph(calls(base, l.kernel), reps=15).median_us:8.2f} us",
              flush=True)
    print("whole module, programmatic dependent launch per launch (1 = on):", flush=True)
    names = [l.kernel for l in impl.launches]
    for flags in itertools.product((False, True), repeat=len(names)):
        impl = dataclasses.replace(full, launches=tuple(
            dataclasses.replace(l, pdl=f) for l, f in zip(full.launches, flags)))
        print(f"  {' '.join(f'{n}={int(f)}' for n, f in zip(names, flags))}: "
              f"{whole(base):.2f} us", flush=True)
    impl = full
    if not args.sweep:
        return
    sweeps = [("pw1", [{**base, **c} for c in PW1]),
              ("pw2", [{**base, **c, "TILES2": t} for c, t in itertools.product(PW2, (1, 2))])]
    if "TT" in base:
        sweeps.append(("dw", [{**base, **c} for c in DW]))
    best = dict(base)
    for name, configs in sweeps:
        rows = []
        for config in tqdm(configs, desc=name):
            try:
                us = whole(config)
            except Exception as e:   # a failed candidate is reported, the sweep goes on
                print(f"  {name} {config}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            if us is not None:
                rows.append((us, config))
        rows.sort(key=lambda r: r[0])
        keys = {"pw1": ("BM1", "BN1", "BK1", "W1", "S1"),
                "pw2": ("BM2", "BN2", "BK2", "W2", "S2", "TILES2"),
                "dw": ("TT", "TC", "VEC", "R")}[name]
        for us, config in rows[:6]:
            print(f"  {name} {us:8.2f} us  {[config[k] for k in keys]}", flush=True)
        best.update({k: rows[0][1][k] for k in keys})
    print("best combined", best, flush=True)
    print(f"whole module: heuristic {whole(base):.2f} us, best combined {whole(best):.2f} us",
          flush=True)
    for l in impl.launches:
        print(f"  {l.kernel:14s} {timing.bench_graph(calls(best, l.kernel), reps=15).median_us:8.2f} us",
              flush=True)


if __name__ == "__main__":
    main()
