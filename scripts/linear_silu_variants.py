"""Linear + SiLU GEMM designs on a Hopper GPU, measured side by side (BENCHMARKS.md, third
session of 2026-12-03): kernels/linear_silu with one tile per program (its previous design) and
with a persistent grid (``TILES`` > 1), and the same GEMM with TMA through device-side tensor
descriptors (``tl.make_tensor_descriptor``; needs Triton's global scratch, which the plugin's C
ABI does not provide), persistent or not, with and without a split epilogue store. Each candidate is checked
against an fp32 result on poisoned outputs before it is timed (kernels.timing.bench_graph).

    python3 scripts/linear_silu_variants.py [MxNxK ...]     # 16000x1024x256 always
"""
import itertools
import sys

import torch
import triton
import triton.language as tl

from kernels import launch, timing
from kernels.linear_silu import KERNEL as K
from kernels.triton_gemm import _tile

@triton.jit
def _epi(acc, BIAS, cols):
    y = acc + tl.load(BIAS + cols).to(tl.float32)[None, :]
    return y * tl.sigmoid(y)

@triton.jit
def ls_tma(X, W, BIAS, Y, M, N: tl.constexpr, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
           BK: tl.constexpr, GROUP_M: tl.constexpr, NPROG: tl.constexpr, SUBTILE: tl.constexpr):
    x_d = tl.make_tensor_descriptor(X, [M, K], [K, 1], [BM, BK])
    w_d = tl.make_tensor_descriptor(W, [N, K], [K, 1], [BN, BK])
    y_d = tl.make_tensor_descriptor(Y, [M, N], [N, 1], [BM, BN // 2 if SUBTILE else BN])
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BM)
    tiles_n: tl.constexpr = N // BN
    num_tiles = tiles_m * tiles_n
    tile_c = pid - NPROG
    for tile in tl.range(pid, num_tiles, NPROG, flatten=True):
        pm, pn = _tile(tile, tiles_m, tiles_n, GROUP_M)
        acc = tl.zeros((BM, BN), tl.float32)
        for ki in range(K // BK):
            a = x_d.load([pm * BM, ki * BK])
            b = w_d.load([pn * BN, ki * BK])
            acc = tl.dot(a, b.T, acc)
        tile_c += NPROG
        pm, pn = _tile(tile_c, tiles_m, tiles_n, GROUP_M)
        cols = pn * BN + tl.arange(0, BN)
        y = _epi(acc, BIAS, cols).to(Y.dtype.element_ty)
        if SUBTILE:
            y0, y1 = tl.split(tl.permute(tl.reshape(y, (BM, 2, BN // 2)), (0, 2, 1)))
            y_d.store([pm * BM, pn * BN], y0)
            y_d.store([pm * BM, pn * BN + BN // 2], y1)
        else:
            y_d.store([pm * BM, pn * BN], y)


def main():
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = [(16000, 1024, 256)] + [tuple(map(int, s.split("x"))) for s in sys.argv[1:]]
    for M, N, Kd in shapes:
        shape = {"M": M, "N": N, "K": Kd}
        cost = K.cost(shape, "float16")
        gen = torch.Generator(device="cuda").manual_seed(0)
        sets = [K.make_inputs(shape, torch.float16, "cuda", gen) for _ in range(timing.rotation(cost.bytes))]
        ref = torch.nn.functional.silu(torch.nn.functional.linear(sets[0]["x"].float(), sets[0]["weight"].float(), sets[0]["bias"].float()))
        outs = [torch.empty(M, N, dtype=torch.float16, device="cuda") for _ in sets]
        res = []
        def bench(name, calls, check):
            try:
                outs[0].fill_(float("nan"))
                check()
                torch.cuda.synchronize()
                err = ((outs[0].float() - ref).norm() / ref.norm()).item()
                t = timing.bench_graph(calls, reps=15)
                res.append((t.median_us, name, err))
                print(f"{M}x{N}x{Kd} {name:60s} {t.median_us:8.2f} us  err {err:.1e}  {cost.bytes/t.median_us/1e3:.0f} GB/s", flush=True)
            except Exception as e:
                print(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        for fn, nm in ((lambda s: torch.nn.functional.linear(s["x"], s["weight"], s["bias"]), "cublas gemm only"),
                       (lambda s: torch.nn.functional.silu(torch.nn.functional.linear(s["x"], s["weight"], s["bias"])), "cublas+silu")):
            calls = [lambda s=s, fn=fn: fn(s) for s in sets]
            t = timing.bench_graph(calls, reps=15)
            print(f"{M}x{N}x{Kd} {nm:60s} {t.median_us:8.2f} us", flush=True)
        for cfg in (launch.default_config(K, K.impl("triton"), shape, "float16"),
                    {"BM": 64, "BN": 256, "BK": 64, "GROUP_M": 1, "num_warps": 8, "num_stages": 2, "TILES": 1}):
            calls = [lambda s=s, o=o, c=cfg: launch.run(K, K.impl("triton"), c, {**s, "y": o}, shape) for s, o in zip(sets, outs)]
            bench(f"kernels.linear_silu {cfg}", calls, calls[0])
        for bm, bn, bk, st, w, g in itertools.product((128,), (128, 256), (64,), (3, 4), (4, 8), (8,)):
            if bn > N: continue
            for occ in ((1, 2) if bn == 128 else (1,)):
                np_ = sms * occ
                kw = dict(N=N, K=Kd, BM=bm, BN=bn, BK=bk, GROUP_M=g, NPROG=np_, num_warps=w, num_stages=st)
                tiles = -(-M // bm) * (N // bn)
                cfg = {"BM": bm, "BN": bn, "BK": bk, "GROUP_M": g, "num_warps": w, "num_stages": st,
                       "TILES": max(t for t in (1, 2, 4, 8) if t == 1 or -(-tiles // t) >= 0.9 * np_)}
                calls = [lambda s=s, o=o, c=cfg: launch.run(K, K.impl("triton"), c, {**s, "y": o}, shape) for s, o in zip(sets, outs)]
                bench(f"kernels.linear_silu persistent {cfg}", calls, calls[0])
                for sub in (0, 1):
                    calls = [lambda s=s, o=o: ls_tma[(np_,)](s["x"], s["weight"], s["bias"], o, M, SUBTILE=sub, **kw) for s, o in zip(sets, outs)]
                    bench(f"tma persist bm{bm} bn{bn} bk{bk} st{st} w{w} occ{occ} sub{sub}", calls, calls[0])
            for sub in (0, 1):   # one tile per program
                grid = triton.cdiv(M, bm) * (N // bn)
                kw = dict(N=N, K=Kd, BM=bm, BN=bn, BK=bk, GROUP_M=g, NPROG=grid, num_warps=w, num_stages=st)
                calls = [lambda s=s, o=o: ls_tma[(grid,)](s["x"], s["weight"], s["bias"], o, M, SUBTILE=sub, **kw) for s, o in zip(sets, outs)]
                bench(f"tma one tile per program bm{bm} bn{bn} bk{bk} st{st} w{w} sub{sub}", calls, calls[0])
        res.sort()
        print("BEST", M, N, Kd, res[:5])

if __name__ == "__main__":
    main()
