"""Ways to do the rel-pos attention's per-row shift ("skew") of the position scores, measured side
by side on a GPU: the kernel in use (a ``tl.gather`` of the band flattened to one axis, staged in
shared memory by Triton), the band written to a per-program scratch in global memory (L1/L2
resident) and read back with the skewed addresses (fp32 or fp16, both chunks each step or a
two-slot ring that stores only the new one), and no shift at all (wrong results: the shift's
cost by difference). Beside them the production kernel with rel=1, rel=2 (WeNet's unshifted
form: the same extra GEMM, no shift) and rel=0 (plain attention). Variants run REL=1 without
chunk masks; each is first checked against the float64 reference with ragged lengths and
poisoned outputs, then timed with full lengths (kernels.timing.bench_graph).

    python3 scripts/relpos_variants.py [--T 500] [--dk 64]
"""
import argparse

import torch
import triton
import triton.language as tl

from kernels import launch, timing
from kernels.relpos_attention import KERNEL as K
from kernels.relpos_attention.triton_impl import _chunk, _mm, _skew

NO_SHIFT, GATHER, SCRATCH, RING = (tl.constexpr(i) for i in range(4))


@triton.jit
def attn_variant(Q, Kt, V, P, U, VB, LENGTHS, O, SCR, T, HEADS: tl.constexpr, DK: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SKEW: tl.constexpr):
    HD: tl.constexpr = HEADS * DK
    n_qb = tl.cdiv(T, BLOCK_M)
    pid = tl.program_id(0)
    qb = pid % n_qb
    bh = pid // n_qb
    b = bh // HEADS
    h = bh % HEADS
    length = tl.minimum(tl.maximum(tl.load(LENGTHS + b), 0), T)
    i0 = qb * BLOCK_M
    ar = tl.arange(0, BLOCK_M)
    ac = tl.arange(0, BLOCK_N)
    rows = i0 + ar
    d = tl.arange(0, DK)
    kv_off = b.to(tl.int64) * T * HD + h * DK
    q = tl.load(Q + kv_off + rows[:, None] * HD + d[None, :], mask=rows[:, None] < T, other=0.0)
    dt = q.dtype
    qk_scale = 1.4426950408889634 / tl.sqrt(DK * 1.0)
    u = tl.load(U + h * DK + d).to(tl.float32)
    vb = tl.load(VB + h * DK + d).to(tl.float32)
    qu = (q.to(tl.float32) + u[None, :]).to(dt)
    qv = (q.to(tl.float32) + vb[None, :]).to(dt)
    p_off = h * DK
    base = T - i0 - BLOCK_M
    c_lo = _chunk(qv, P, p_off, base, 2 * T - 1, HD, DK, BLOCK_N)
    scr = SCR + pid.to(tl.int64) * (BLOCK_M * 2 * BLOCK_N)
    srow = scr + ar[:, None] * (2 * BLOCK_N)
    st = SCR.dtype.element_ty    # the band is stored in the scratch's dtype (fp32 or fp16)
    if SKEW >= SCRATCH:
        tl.store(srow + ac[None, :], c_lo.to(st))
    hi = tl.where(i0 < length, length, 0)
    acc = tl.zeros([BLOCK_M, DK], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    for j0 in range(0, hi, BLOCK_N):
        cols = j0 + ac
        kt = tl.load(Kt + kv_off + cols[None, :] * HD + d[:, None], mask=cols[None, :] < T,
                     other=0.0)
        s = _mm(qu, kt)
        c_hi = _chunk(qv, P, p_off, base + j0 + BLOCK_N, 2 * T - 1, HD, DK, BLOCK_N)
        r = ac[None, :] - ar[:, None] + (BLOCK_M - 1)
        if SKEW == NO_SHIFT:
            s += c_hi
        elif SKEW == GATHER:
            s += _skew(c_lo, c_hi, r, BLOCK_M, BLOCK_N)
            c_lo = c_hi
        elif SKEW == SCRATCH:      # both chunks, every step
            tl.debug_barrier()
            tl.store(srow + ac[None, :], c_lo.to(st))
            tl.store(srow + BLOCK_N + ac[None, :], c_hi.to(st))
            tl.debug_barrier()
            s += tl.load(srow + r).to(tl.float32)
            c_lo = c_hi
        else:                      # RING: the low chunk sits in slot step % 2
            slot = (j0 // BLOCK_N) % 2
            tl.debug_barrier()     # everyone has read the slot about to be overwritten
            tl.store(srow + (1 - slot) * BLOCK_N + ac[None, :], c_hi.to(st))
            tl.debug_barrier()
            s += tl.load(srow + (r + slot * BLOCK_N) % (2 * BLOCK_N)).to(tl.float32)
        s = s * qk_scale
        s = tl.where(cols[None, :] < length, s, float("-inf"))
        v = tl.load(V + kv_off + cols[:, None] * HD + d[None, :], mask=cols[:, None] < T,
                    other=0.0)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        pr = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        acc = tl.dot(pr.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    ok = (rows < length) & (l_i > 0)
    out = tl.where(ok[:, None], acc / tl.where(ok, l_i, 1.0)[:, None], 0.0)
    tl.store(O + kv_off + rows[:, None] * HD + d[None, :], out.to(dt), mask=rows[:, None] < T)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=500)
    ap.add_argument("--dk", type=int, default=64)
    args = ap.parse_args()
    shape = {"B": 32, "T": args.T, "H": 4, "DK": args.dk, "chunk": 0, "left_chunks": -1,
             "packed": 0, "rel": 1}
    b, t, h, dk = shape["B"], shape["T"], shape["H"], shape["DK"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    cost = K.cost(shape, "float16")
    sets = [K.make_inputs(shape, torch.float16, "cuda", gen)
            for _ in range(timing.rotation(cost.bytes))]
    ref = K.reference(sets[0], shape, {})["out"]
    full = [{**s, "lengths": torch.full_like(s["lengths"], t)} for s in sets]
    impl = K.impl("triton")
    for rel in (1, 2, 0):
        sh = {**shape, "rel": rel}
        ins = [K.make_inputs(sh, torch.float16, "cuda", gen) for _ in sets]
        for s in ins:
            s["lengths"].fill_(t)
        outs = [launch.empty_outputs(K, sh, "float16", "cuda") for _ in ins]
        config = launch.default_config(K, impl, sh, "float16")
        us = timing.bench_graph([lambda s=s, o=o: launch.run(K, impl, config, {**s, **o}, sh)
                                 for s, o in zip(ins, outs)], reps=15).median_us
        print(f"production kernel rel={rel} {config}: {us:8.2f} us", flush=True)
    for bm, bn, warps, stages in ((64, 64, 4, 3), (64, 64, 4, 2), (64, 128, 8, 2),
                                  (128, 128, 8, 2), (32, 64, 4, 3)):
        n_prog = triton.cdiv(t, bm) * b * h
        for skew, half, name in ((GATHER, 0, "gather (in use)"), (SCRATCH, 0, "scratch fp32"),
                                 (SCRATCH, 1, "scratch fp16"), (RING, 0, "ring fp32"),
                                 (RING, 1, "ring fp16"), (NO_SHIFT, 0, "no shift (wrong)")):
            out = torch.full((b, t, h * dk), float("nan"), device="cuda", dtype=torch.float16)
            scratch = torch.empty(n_prog * bm * 2 * bn, device="cuda",
                                  dtype=torch.float16 if half else torch.float32)

            def call(s, o=out, scratch=scratch):
                attn_variant[(n_prog,)](s["q"], s["k"], s["v"], s["p"], s["pos_bias_u"],
                                        s["pos_bias_v"], s["lengths"], o, scratch, t, h, dk, bm,
                                        bn, skew, num_warps=warps, num_stages=stages)
            try:
                call(sets[0])
                err = ((out.double() - ref).norm() / ref.norm()).item()
                us = timing.bench_graph([lambda s=s: call(s) for s in full], reps=15).median_us
            except Exception as e:   # a variant Triton cannot build is reported, the rest go on
                print(f"  {bm}x{bn} w{warps} s{stages} {name}: FAILED {type(e).__name__}: "
                      f"{str(e)[:160]}", flush=True)
                continue
            flag = "" if err < 1e-2 or skew == NO_SHIFT else "  WRONG"
            print(f"  {bm}x{bn} w{warps} s{stages} {name:18s} {us:8.2f} us  (error {err:.1e}){flag}",
                  flush=True)


if __name__ == "__main__":
    main()
