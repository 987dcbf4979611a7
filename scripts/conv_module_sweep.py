"""The conv module's stages on a GPU: each stage alone (the impl's launches one at a time) and the
whole module over a sweep of one stage's configs with the others at the heuristic. Every
whole-module candidate is first checked against the float64 reference on poisoned outputs.

    python3 scripts/conv_module_sweep.py [--causal] [--impl cuda_dw]

B=32, T=500, D=256, K=31, fp16, full lengths (issue 4's shape); µs per call from CUDA-graph
replays over rotated inputs larger than the L2 (kernels.timing.bench_graph).
``gemm_ws`` is a weight-stationary variant of the GEMM stages measured beside them: each program
keeps its column slice of the weight (all of K; value and gate for GLU) in shared memory and
walks row tiles with full-K dots, so the weights cross L2 once per program.
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


@triton.jit
def gemm_ws(X, LEN, W, BIAS, Y, M, T, D: tl.constexpr, N: tl.constexpr, GLU: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, STAGES: tl.constexpr):
    tiles_n: tl.constexpr = N // BN
    pid = tl.program_id(0)
    pid_n = pid % tiles_n
    step = tl.num_programs(0) // tiles_n
    cols = pid_n * BN + tl.arange(0, BN)
    kk = tl.arange(0, D)
    wv = tl.load(W + cols[None, :] * D + kk[:, None])
    bv = tl.load(BIAS + cols).to(tl.float32)
    if GLU:
        wg = tl.load(W + (N + cols[None, :]) * D + kk[:, None])
        bg = tl.load(BIAS + N + cols).to(tl.float32)
    r = tl.arange(0, BM)
    for mt in tl.range(pid // tiles_n, tl.cdiv(M, BM), step, num_stages=STAGES):
        row0 = mt.to(tl.int64) * BM
        r_in = tl.minimum(r, M - 1 - row0).to(tl.int32)
        a = tl.load(X + row0 * D + r_in[:, None] * D + kk[None, :])
        y = tl.dot(a, wv) + bv[None, :]
        rows = row0 + r
        ln = tl.load(LEN + rows // T, mask=rows < M, other=0)
        live = rows % T < tl.minimum(tl.maximum(ln, 0), T)
        keep = rows < M
        if GLU:
            y = y * tl.sigmoid(tl.dot(a, wg) + bg[None, :])
            keep = keep & live
        else:
            y = tl.where(live[:, None], y, 0.0)
        tl.store(Y + row0 * N + r[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty),
                 mask=keep[:, None])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--impl", default="cuda_dw")
    args = ap.parse_args()
    shape = {"B": 32, "T": 500, "D": 256, "K": 31, "causal": int(args.causal),
             "mask_after_glu": 0}
    impl = K.impl(args.impl)
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

    try:   # optional: kernels/conv_module/triton_impl.py of 167dd9e saved there (its import
        # made absolute), for a side-by-side comparison with the GEMM stages before 2026-12-03
        import _prev_conv_gemms as prev
    except ImportError:
        prev = None
    if prev is not None:
        s0, o0 = sets[0], outs[0]
        h = torch.empty_like(s0["x"])
        m, d = shape["B"] * shape["T"], shape["D"]
        for bm, bn, bk, w, st in ((128, 64, 64, 8, 3), (128, 64, 64, 4, 3), (128, 128, 64, 8, 3)):
            f = [lambda s=s: prev.pw1_glu[(triton.cdiv(m, bm), triton.cdiv(d, bn), 1)](
                s["x"], s["lengths"], s["w1"], s["b1"], h, shape["B"], shape["T"], d, BM1=bm,
                BN1=bn, BK1=bk, EVEN_K1=1, num_warps=w, num_stages=st) for s in sets]
            print(f"  previous pw1_glu {[bm, bn, bk, w, st]} {timing.bench_graph(f, reps=15).median_us:8.2f} us")
        for bm, bn, bk, w, st in ((128, 128, 32, 4, 4), (128, 128, 64, 4, 3)):
            f = [lambda s=s: prev.pw2[(triton.cdiv(m, bm), triton.cdiv(d, bn), 1)](
                h, s["lengths"], s["b1"], s["dw_w"], s["dw_b"], s["w2"], s["b2"], o0["y"],
                shape["B"], shape["T"], d, shape["K"], shape["causal"], 0, 15, FUSE_DW=0,
                BM2=bm, BN2=bn, BK2=bk, EVEN_K2=1, num_warps=w, num_stages=st) for s in sets]
            print(f"  previous pw2 {[bm, bn, bk, w, st]} {timing.bench_graph(f, reps=15).median_us:8.2f} us")
    h = torch.empty_like(sets[0]["x"])
    m, d = shape["B"] * shape["T"], shape["D"]
    for glu, bm, bn, w, st in ((1, 64, 128, 4, 2), (1, 64, 128, 8, 2), (1, 64, 128, 4, 3),
                               (0, 64, 256, 4, 2), (0, 64, 256, 8, 2), (0, 128, 128, 8, 2),
                               (0, 64, 128, 4, 2), (0, 64, 128, 4, 3)):
        progs = gpu.sms - gpu.sms % (d // bn)
        if glu:
            f = [lambda s=s: gemm_ws[(progs,)](s["x"], s["lengths"], s["w1"], s["b1"], h, m,
                 shape["T"], d, d, 1, bm, bn, st, num_warps=w) for s in sets]
            ref_h = torch.nn.functional.glu(torch.nn.functional.linear(
                sets[0]["x"].float(), sets[0]["w1"].float(), sets[0]["b1"].float()), -1)
        else:
            f = [lambda s=s: gemm_ws[(progs,)](s["x"], s["lengths"], s["w2"], s["b2"], h, m,
                 shape["T"], d, d, 0, bm, bn, st, num_warps=w) for s in sets]
            ref_h = torch.nn.functional.linear(sets[0]["x"].float(), sets[0]["w2"].float(),
                                               sets[0]["b2"].float())
        try:
            h.fill_(float("nan"))
            f[0]()
            err = ((h.float() - ref_h).norm() / ref_h.norm()).item()
            print(f"  weight-stationary {'pw1_glu' if glu else 'pw2'} {[bm, bn, w, st]} "
                  f"{timing.bench_graph(f, reps=15).median_us:8.2f} us (error {err:.1e})",
                  flush=True)
        except Exception as e:
            print(f"  weight-stationary {[glu, bm, bn, w, st]}: FAILED {type(e).__name__}: "
                  f"{str(e)[:200]}", flush=True)
    print("stage alone at the heuristic:", flush=True)
    for l in impl.launches:
        print(f"  {l.kernel:14s} {timing.bench_graph(calls(base, l.kernel), reps=15).median_us:8.2f} us",
              flush=True)
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
