"""Relative-position multi-head self-attention (ESPnet/WeNet ``RelPositionMultiHeadedAttention``),
or plain attention (torchaudio's Conformer), fused flash style: the T x T scores never exist.

``out = softmax(((q + u) . k^T + rel_shift((q + v) . p^T)) / sqrt(d_k)) . v`` per head, under a
key-padding mask from ``lengths`` and an optional U2 chunk mask (``chunk`` frames per chunk,
``left_chunks`` chunks of history, -1 for all); with ``rel=0`` the scores are q . k^T / sqrt(d_k);
with ``rel=2`` the position term is WeNet's un-shifted ``(q + v) . p^T`` over p [T, H*d_k]
(``linear_pos`` of the absolute sinusoid table, WeNet's ``RelPositionalEncoding``).
Tensors are in the layout the projections produce: q, k, v, out [B, T, H*d_k], p [2T-1, H*d_k]
(with ``packed=1`` q, k and v are one tensor [B, T, 3*H*d_k], q | k | v along the last dim, as
one fused projection makes it: the same tensor is given for all three)
(``linear_pos`` of the 2T-1-row relative position table, row n = relative position T-1-n),
pos_bias_u/pos_bias_v [H, d_k], lengths [B] int32. Query rows at or past their sequence's length
come out as zeros; rows with no key to attend too, never NaN. Softmax statistics and the
accumulator are fp32. Lengths outside [0, T] are clamped in the kernel (never an out-of-bounds
read); ``rel_pos_attention(..., check_lengths=True)`` refuses them instead, at the cost of a sync.

Implementations:

* ``triton`` (``triton_impl.py``): every dtype; the position term's shift is a ``tl.gather`` of
  the band, which Triton stages in shared memory.
* ``cuda`` (``relpos_attn.cu``, fp16/bf16): mma.sync with MT (1 or 2) m16 tiles of query rows
  per warp, which share every K, p and V fragment the warp loads from shared memory; the band of
  position scores is skewed either through each warp's own shared-memory rows (written, read
  back shifted, only a warp barrier between; ``SKEW`` 0) or in registers by quad shuffles
  (``SKEW`` 1, which MT 2 needs in the ESPnet form); the rows of p in a ring that each key block
  tops up with BN new rows. A programmatic dependent launch on sm_90+ (it waits before its
  first read). On an H100 (2026-12-07) every valid MT 2 and SKEW 1 config passed the reference
  checks; the heuristic takes the fastest config swept per form and head dim (BENCHMARKS.md).
* ``cuda_wgmma`` (``relpos_attn_wgmma.cu``, sm_90 only, compiled for sm_90a; d_k 64 and 128):
  Hopper's warpgroup MMA, 64 query rows per warpgroup, K, p and V read by the tensor cores from
  shared memory once per warpgroup (V transposed by the MMA), the band of position scores
  m64 x (BN + 64) skewed through each warp's shared-memory rows as in ``cuda``; ``CARRY`` keeps
  the band's last n64 piece in registers for the next key block; ``SKEW`` 1 (it spills at d_k 64
  with 128-key blocks; correct on an H100 in every valid config) skews in registers as ``cuda``
  does. The same
  launch and masks.
  Measured on an H100 (2026-12-07): correct at d_k 128 and at d_k 64 with 128-key blocks, wrong
  at d_k 64 with 64-key blocks (refused). ``WS`` 1 specialises warps as FlashAttention-3 does (a
  producer warpgroup copying K, V and p into the stages, two computing warpgroups, mbarriers
  between them, no CTA-wide barrier in the loop); ``PP`` 1 makes the two take turns issuing
  their score MMAs. Every SKEW 1 config, WS and PP included, passed the H100's reference checks
  (2026-12-08); the heuristic's (BN 128, one warpgroup, SKEW 1: two CTAs per SM) is the fastest
  timed at issue 5's shape (BENCHMARKS.md).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import launch
from ..contract import Cost, Dim, Impl, Kernel, Launch, TensorSpec, elt_size, pow2
from . import reference, triton_impl

HERE = Path(__file__).parent
HEAD_DIMS = (32, 64, 128)
MAX_WORDS_PER_THREAD = 256   # live 32-bit words per thread beyond which the tiles surely spill


def _check_head_dim(dk: int) -> None:
    if dk not in HEAD_DIMS:
        raise ValueError(f"relpos_attention: head dim d_k={dk} is not supported; "
                         f"use one of {list(HEAD_DIMS)}")


_ARGS = ("q", "k", "v", "p", "pos_bias_u", "pos_bias_v", "lengths", "out", "T")   # every impl's kernel

# rows of p: 2T-1 relative positions (rel=1, ESPnet), T absolute ones (rel=2, WeNet legacy)
P_ROWS = "(3 - rel) * T + rel - 2"


def _p_rows(t: int, rel: int) -> int:
    return (3 - rel) * t + rel - 2


# ---- Triton --------------------------------------------------------------------------------

def _triton_constants(config, shape, dtype):
    _check_head_dim(shape["DK"])
    return {"HEADS": shape["H"], "HEAD_DIM": shape["DK"], "REL": shape["rel"],
            "CHUNK": shape["chunk"], "LEFT": shape["left_chunks"], "PACKED": shape["packed"],
            "BLOCK_M": config["BLOCK_M"],
            "BLOCK_N": config["BLOCK_N"]}


def _triton_valid(config, shape, dtype, gpu):
    bm, bn, warps, dk, rel = (config["BLOCK_M"], config["BLOCK_N"], config["num_warps"],
                              shape["DK"], shape["rel"])
    if rel == 1 and bm > bn:
        return "BLOCK_M > BLOCK_N: the position band would not fit in two key chunks"
    if max(bm, bn) > max(16, pow2(shape["T"])):
        return "a block longer than the sequence"
    if -(-shape["T"] // bm) * shape["B"] * shape["H"] > 2**31 - 1:
        return "more than 2^31-1 programs"
    threads = 32 * warps
    if bm * bn < 4 * threads:
        return "fewer than 4 scores per thread"
    e = elt_size(dtype)
    # fp32 accumulator, q (+u, +v) as operands, and the fp32 score-sized tiles in flight
    words = (bm * dk + (2 if rel else 1) * bm * dk * e // 4
             + (3 if rel else 2) * bm * bn) // threads
    if words > MAX_WORDS_PER_THREAD:
        return f"about {words} live words per thread would spill"
    # pipelined K, V (and p) tiles, q, and the band the skew stages in shared memory
    smem = (config["num_stages"] * (2 + bool(rel)) * bn * dk * e + bm * dk * e
            + (rel == 1) * bm * 2 * bn * 4)
    if gpu is not None and smem > gpu.smem_per_block:
        return f"about {smem} bytes of shared memory"
    return None


def _triton_heuristic(shape, dtype, gpu):
    """64x64 blocks, 4 warps, 3 stages: the fastest of the H100 sweeps for d_k 32, 64 and 128,
    T 500 and 2000, with and without relative positions (BENCHMARKS.md); smaller blocks for
    short T, fewer stages where shared memory is smaller (A10, L4)."""
    block = max(16, min(64, pow2(shape["T"])))
    for stages in (3, 2, 1):
        config = {"BLOCK_M": block, "BLOCK_N": block, "num_warps": 4 if block >= 32 else 2,
                  "num_stages": stages}
        if gpu is None or _triton_valid(config, shape, dtype, gpu) is None:
            break
    return config


TRITON = Impl(
    name="triton",
    sources=(HERE.parent / "triton_common.py", HERE / "triton_impl.py"),
    space={"BLOCK_M": (16, 32, 64, 128), "BLOCK_N": (16, 32, 64, 128), "num_warps": (1, 2, 4, 8),
           "num_stages": (1, 2, 3, 4)},
    launches=(Launch("relpos_attn_fwd", ("cdiv(T, BLOCK_M) * B * H", "1", "1"),
                     _ARGS,
                     num_stages="num_stages", pdl=True),),
    constants=_triton_constants,
    valid=_triton_valid,
    heuristic=_triton_heuristic,
    fns={"relpos_attn_fwd": triton_impl.relpos_attn_fwd},
)


# ---- CUDA ----------------------------------------------------------------------------------

CUDA_SPACE = {"BN": (16, 32, 64), "WARPS": (2, 4, 8), "MT": (1, 2), "STAGES": (2, 3), "SKEW": (0, 1)}


def _cuda_smem(config, shape) -> int:
    """relpos_attn.cu's layout: STAGES x (K, V), the ring of p (the ESPnet form's BM overlap of
    consecutive windows plus STAGES blocks of BN rows), and q + u (and q + v), whose space each
    warp's band of position scores takes over (ESPnet form, unless SKEW skews it in registers;
    half a block's keys at a time, rows padded to 8 mod 16 floats)."""
    bn, warps, rel, rb = config["BN"], config["WARPS"], shape["rel"], 2 * shape["DK"]
    bm = 16 * config["MT"] * warps
    ring = ((bm if rel == 1 else 0) + config["STAGES"] * bn) if rel else 0
    half = bn // 2 + 16
    band = 16 * warps * (half + (8 - half) % 16) * 4 if rel == 1 and not config["SKEW"] else 0
    return config["STAGES"] * 2 * bn * rb + ring * rb + max((1 + bool(rel)) * bm * rb, band)


def _cuda_constants(config, shape, dtype):
    _check_head_dim(shape["DK"])
    return {"HEADS": shape["H"], "HEAD_DIM": shape["DK"], "REL": shape["rel"], "CHUNK": shape["chunk"],
            "LEFT": shape["left_chunks"], "PACKED": shape["packed"], "BN": config["BN"],
            "WARPS": config["WARPS"], "MT": config["MT"], "STAGES": config["STAGES"],
            "SKEW": config["SKEW"],
            "SMEM": _cuda_smem(config, shape)}


def _cuda_valid(config, shape, dtype, gpu):
    if dtype not in CUDA_DTYPES:
        return f"{dtype} activations: the tensor-core kernel takes {list(CUDA_DTYPES)}"
    if shape["DK"] not in HEAD_DIMS:
        return f"head dim {shape['DK']} is not one of {list(HEAD_DIMS)}"
    bn, mt, dk, rel = config["BN"], config["MT"], shape["DK"], shape["rel"]
    bm = 16 * mt * config["WARPS"]
    if config["SKEW"] and rel != 1:
        return "SKEW skews the ESPnet form's band: no band in this form"
    if mt > 1 and rel == 1 and not config["SKEW"]:
        return "MT 2 skews the ESPnet form's band in registers: SKEW 1"
    if max(bm, bn) > max(32, pow2(shape["T"])):
        return "a block longer than the sequence"
    if -(-shape["T"] // bm) * shape["B"] * shape["H"] > 2**31 - 1:
        return "more than 2^31-1 CTAs"
    # fp32 registers per thread: q + u (and q + v) fragments, the output accumulator, the
    # scores, and the band the skew stores (ESPnet form), for each of the warp's m16 tiles
    words = mt * (dk // 4 * (1 + bool(rel)) + dk // 2 + bn // 2 + (rel == 1) * (bn // 2 + 8))
    if words > MAX_CUDA_WORDS:
        return f"about {words} live registers per thread for tiles alone would spill"
    smem = _cuda_smem(config, shape)
    cap = gpu.smem_per_block if gpu is not None else 99 * 1024
    if smem > cap:
        return f"{smem} bytes of shared memory (limit {cap})"
    return None


# The fastest config of each (rel, d_k) swept on an H100 at B 32, H 4, fp16, T 500 and T 2000
# (scripts/relpos_sweep.py; BENCHMARKS.md, H100, 2026-12-07, sixth session), at both lengths
# within 2.5 % of the best: rel 1 (ESPnet) takes 64-key blocks with the band skewed in registers,
# rel 0 (no positions) and rel 2 (WeNet's unshifted band) two m16 query tiles per warp. The
# figures: the heuristic's config at T 500 / T 2000, last measured on eae088a unless named.
_CUDA_MEASURED = {
    (1, 32): {"BN": 64, "WARPS": 4, "STAGES": 2, "MT": 1, "SKEW": 1},    # 39.23 / 498.90 us
    (1, 64): {"BN": 64, "WARPS": 4, "STAGES": 2, "MT": 1, "SKEW": 1},    # 62.03 / 780.66 us
    (1, 128): {"BN": 64, "WARPS": 8, "STAGES": 2, "MT": 1, "SKEW": 1},   # 125.84 / 1525.41 us
    (0, 64): {"BN": 64, "WARPS": 4, "STAGES": 2, "MT": 2, "SKEW": 0},    # 38.66 / 464.12 us (818b8ed)
    (2, 64): {"BN": 64, "WARPS": 4, "STAGES": 2, "MT": 2, "SKEW": 0},    # 51.96 / 612.35 us (818b8ed)
}


def _cuda_heuristic(shape, dtype, gpu):
    """The measured winner of the shape's form and head dim (_CUDA_MEASURED) where it is valid;
    else (unswept forms, short sequences, small shared memory) 64 queries (4 warps) per CTA, 64
    keys per block (32 at d_k 128, for registers), two stages, smaller where the sequence or the
    shared memory is."""
    firsts = [dict(_CUDA_MEASURED[shape["rel"], shape["DK"]])] \
        if (shape["rel"], shape["DK"]) in _CUDA_MEASURED else []
    bn = 32 if shape["DK"] == 128 else 64
    for config in (*firsts, {"BN": bn, "WARPS": 4, "STAGES": 2}, {"BN": 32, "WARPS": 4, "STAGES": 2},
                   {"BN": 32, "WARPS": 2, "STAGES": 2}, {"BN": 16, "WARPS": 2, "STAGES": 2}):
        config.setdefault("MT", 1)
        config.setdefault("SKEW", 0)
        if _cuda_valid(config, shape, dtype, gpu) is None:
            return config
    return config


CUDA_DTYPES = ("float16", "bfloat16")
MAX_CUDA_WORDS = 216

CUDA = Impl(
    name="cuda",
    sources=(HERE.parent / "cuda_common.cuh", HERE.parent / "int4_gemm" / "gemm_tiles.cuh",
             HERE / "attn_common.cuh", HERE / "relpos_attn.cu"),
    space=CUDA_SPACE,
    launches=(Launch("relpos_attn_fwd", ("cdiv(T, 16 * MT * WARPS) * B * H", "1", "1"),
                     _ARGS,
                     threads="32 * WARPS", smem="SMEM", pdl=True),),
    constants=_cuda_constants,
    valid=_cuda_valid,
    heuristic=_cuda_heuristic,
    dtypes=CUDA_DTYPES,
)


# ---- CUDA, Hopper warpgroup MMA ------------------------------------------------------------

WGMMA_SPACE = {"BN": (64, 128), "WG": (1, 2), "STAGES": (2, 3), "CARRY": (0, 1), "SKEW": (0, 1),
               "WS": (0, 1), "PP": (0, 1)}
WGMMA_HEAD_DIMS = (64, 128)   # rows of 128-byte panels; d_k 32 stays with ``cuda``


def _wgmma_band_stride(bn: int) -> int:
    """Floats per row of a warp's band in relpos_attn_wgmma.cu (BN + 16 columns, = 8 mod 16)."""
    return bn + 16 + (8 - (bn + 16)) % 16


def _wgmma_smem(config, shape) -> int:
    """relpos_attn_wgmma.cu's layout: STAGES x (K, V and the block's rows of p: BN + 64 WG in
    the ESPnet form, BN in WeNet's), q + u (and q + v) in the last stage where they fit (else
    after the stages; always after them with WS), each warp's band (ESPnet form), a full and an
    empty mbarrier per stage (WS), and 1024 bytes to align the swizzle atoms."""
    bn, wg, rel, rb = config["BN"], config["WG"], shape["rel"], 2 * shape["DK"]
    p_rows = bn + 64 * wg if rel == 1 else bn if rel == 2 else 0
    band = 4 * wg * 16 * _wgmma_band_stride(bn) * 4 if rel == 1 and not config["SKEW"] else 0
    stage, q = (2 * bn + p_rows) * rb, (1 + bool(rel)) * 64 * wg * rb
    bars = 16 * config["STAGES"] if config["WS"] else 0
    return config["STAGES"] * stage + (0 if q <= stage and not config["WS"] else q) + band + bars + 1024


def _wgmma_registers(config, shape) -> int:
    """Live registers per thread while the scores are computed, roughly: the output, score and
    band (ESPnet form) accumulators, the q + u (and q + v) fragments, addressing. Against
    ptxas for sm_90a: 184 → 205 used (d_k 64, BN 64, ESPnet; 236 with CARRY, whose carried
    piece stays live through P . V), 248 → 255 with no spill (d_k 64, BN 128) or 64 bytes of
    spill (d_k 128, BN 64). With WS q + u and q + v are read from shared memory (no
    fragments)."""
    bn, dk, rel = config["BN"], shape["DK"], shape["rel"]
    q = 0 if config["WS"] else dk // 4 * (1 + bool(rel))
    return dk // 2 + bn // 2 + (rel == 1) * (bn + 64) // 2 + q + 24


def _wgmma_constants(config, shape, dtype):
    _check_head_dim(shape["DK"])
    return {"HEADS": shape["H"], "HEAD_DIM": shape["DK"], "REL": shape["rel"], "CHUNK": shape["chunk"],
            "LEFT": shape["left_chunks"], "PACKED": shape["packed"], **config,
            "SMEM": _wgmma_smem(config, shape)}


def _wgmma_valid(config, shape, dtype, gpu):
    if not CUDA_WGMMA.runs_on(gpu):
        return "wgmma needs an sm_90 GPU (compiled for sm_90a)"
    if dtype not in CUDA_DTYPES:
        return f"{dtype} activations: the tensor-core kernel takes {list(CUDA_DTYPES)}"
    if shape["DK"] not in WGMMA_HEAD_DIMS:
        return f"head dim {shape['DK']} is not one of {list(WGMMA_HEAD_DIMS)} (cuda takes it)"
    if config["CARRY"] and shape["rel"] != 1:
        return "CARRY keeps a piece of the ESPnet form's band: no band in this form"
    if config["SKEW"] and shape["rel"] != 1:
        return "SKEW skews the ESPnet form's band: no band in this form"
    if config["WS"] and (config["WG"] != 2 or config["CARRY"] or (shape["rel"] == 1 and not config["SKEW"])):
        return "WS (a producer warpgroup) takes WG 2, no CARRY and, in the ESPnet form, SKEW 1"
    if config["PP"] and not config["WS"]:
        return "PP orders the computing warpgroups of WS: WS 1"
    if config["BN"] == 64 and shape["DK"] == 64:
        return ("BN 64 at head dim 64 gives wrong results on an H100 (2026-12-07, every form; "
                "cause not yet found): BN 128")
    if -(-shape["T"] // (64 * config["WG"])) * shape["B"] * shape["H"] > 2**31 - 1:
        return "more than 2^31-1 CTAs"
    regs, limit = _wgmma_registers(config, shape), 240 if config["WS"] else 255
    if regs > limit:
        return f"about {regs} live registers per thread would spill (limit {limit})"
    smem = _wgmma_smem(config, shape)
    if smem > gpu.smem_per_block:
        return f"{smem} bytes of shared memory (limit {gpu.smem_per_block})"
    return None


def _wgmma_heuristic(shape, dtype, gpu):
    """One warpgroup (64 queries) per CTA, two stages; 64 keys per block (128 at head dim 64,
    where 64 is refused). At head dim 64 the ESPnet band is skewed in registers, which leaves
    room for two CTAs per SM: the fastest config swept on an H100 at issue 5's shape, T 500 and
    2000, and faster there than ``cuda`` (BENCHMARKS.md, 2026-12-08). At head dim 128 (not
    timed) the band goes through shared memory, as before."""
    return {"BN": 128 if shape["DK"] == 64 else 64, "WG": 1, "STAGES": 2, "CARRY": 0,
            "SKEW": int(shape["rel"] == 1 and shape["DK"] == 64), "WS": 0, "PP": 0}


CUDA_WGMMA = Impl(
    name="cuda_wgmma",
    sources=(HERE.parent / "cuda_common.cuh", HERE.parent / "int4_gemm" / "gemm_tiles.cuh",
             HERE.parent / "wgmma.cuh", HERE / "attn_common.cuh", HERE / "relpos_attn_wgmma.cu"),
    space=WGMMA_SPACE,
    launches=(Launch("relpos_attn_wgmma", ("cdiv(T, 64 * WG) * B * H", "1", "1"),
                     _ARGS,
                     threads="128 * (WG + WS)", smem="SMEM", pdl=True),),
    constants=_wgmma_constants,
    valid=_wgmma_valid,
    heuristic=_wgmma_heuristic,
    dtypes=CUDA_DTYPES,
    arch_suffix="a",
    ccs=((9, 0),),
)


# ---- the declaration -----------------------------------------------------------------------

def _reference(inputs, shape, scalars):
    x = {k: (t.double() if t is not None and t.is_floating_point() else t)
         for k, t in inputs.items()}
    return {"out": _attention(x, shape)}


def _baseline(inputs, shape, scalars):
    return _attention(inputs, shape)


def _attention(x, shape):
    q, k, v = x["q"], x["k"], x["v"]
    if shape["packed"]:
        q, k, v = q.chunk(3, dim=-1)
    return reference.attention(q, k, v, x["lengths"], shape["H"], x.get("p"),
                               x.get("pos_bias_u"), x.get("pos_bias_v"), shape["chunk"],
                               shape["left_chunks"], legacy=shape["rel"] == 2)


def _make_inputs(shape, dtype, device, gen):
    def randn(*dims, scale=1.0):
        return (scale * torch.randn(*dims, generator=gen, device=device)).to(dtype)

    b, t, h, dk = shape["B"], shape["T"], shape["H"], shape["DK"]
    if shape["packed"]:
        qkv = randn(b, t, 3 * h * dk)
        inputs = {"q": qkv, "k": qkv, "v": qkv}
    else:
        inputs = {name: randn(b, t, h * dk) for name in ("q", "k", "v")}
    lengths = torch.randint(1, t + 1, (b,), generator=gen, device=device, dtype=torch.int32)
    lengths[0] = t                       # one full sequence, and one empty one when B >= 3
    if b >= 3:
        lengths[2] = 0
    inputs["lengths"] = lengths
    if shape["rel"]:
        inputs.update(p=randn(_p_rows(t, shape["rel"]), h * dk), pos_bias_u=randn(h, dk, scale=0.5),
                      pos_bias_v=randn(h, dk, scale=0.5))
    return inputs


def _cost(shape, dtype):
    """Reads q, k, v (and p, biases), writes out; flops of q.k^T and P.v (and the T x T position
    scores) over every (query, key) pair, padding included."""
    b, t, h, dk, rel = shape["B"], shape["T"], shape["H"], shape["DK"], shape["rel"]
    e = elt_size(dtype)
    data = 4 * b * t * h * dk * e + bool(rel) * (_p_rows(t, rel) + 2) * h * dk * e + 4 * b
    return Cost(bytes=data, flops=(4 + 2 * bool(rel)) * b * h * t * t * dk)


def _tune_shapes(dims):
    return [{"B": dims.batch, "T": dims.seq_len, "H": dims.heads, "DK": dims.d_model // dims.heads,
             "chunk": 0, "left_chunks": -1, "packed": packed, "rel": rel}
            for packed in (1, 0) for rel in (1, 2, 0)]


KERNEL = Kernel(
    name="relpos_attention",
    doc=__doc__,
    dims=(Dim("B", 1, 2**20, dynamic=True), Dim("T", 1, 65536, dynamic=True), Dim("H", 1, 64),
          Dim("DK", 32, 128), Dim("chunk", 0, 65536), Dim("left_chunks", -1, 65536),
          Dim("packed", 0, 1), Dim("rel", 0, 2)),
    tensors=(TensorSpec("q", ("B", "T", "(1 + 2 * packed) * H * DK")),
             TensorSpec("k", ("B", "T", "(1 + 2 * packed) * H * DK")),
             TensorSpec("v", ("B", "T", "(1 + 2 * packed) * H * DK")),
             TensorSpec("p", (P_ROWS, "H * DK"), when="rel"),
             TensorSpec("pos_bias_u", ("H", "DK"), when="rel"),
             TensorSpec("pos_bias_v", ("H", "DK"), when="rel"),
             TensorSpec("lengths", ("B",), dtype="int32"),
             TensorSpec("out", ("B", "T", "H * DK"), role="out")),
    scalars={},
    dtypes=("float16", "bfloat16", "float32"),
    impls=(TRITON, CUDA, CUDA_WGMMA),
    reference=_reference,
    baseline=_baseline,
    make_inputs=_make_inputs,
    cost=_cost,
    tune_shapes=_tune_shapes,
    # bf16 keeps 8 significant bits: q + u, q + v and the probabilities are rounded to it, as in
    # the eager bf16 module, which itself measures 4-9e-3 from float64 on make_inputs' data.
    tolerance={"float16": 1e-2, "bfloat16": 2e-2, "float32": 1e-5},
    examples=tuple(dict(zip(("B", "T", "H", "DK", "chunk", "left_chunks", "packed", "rel"), v))
                   for v in ((3, 37, 2, 32, 0, -1, 0, 1), (2, 1, 1, 64, 0, -1, 0, 1),
                             (3, 45, 1, 32, 8, 1, 0, 1), (2, 21, 1, 128, 0, -1, 0, 0),
                             (3, 29, 2, 32, 0, -1, 0, 2), (2, 40, 1, 64, 16, 0, 0, 2),
                             (3, 33, 2, 32, 0, -1, 1, 1), (2, 19, 2, 32, 8, -1, 1, 0))),
)


def rel_pos_attention(q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None,
                      lengths: torch.Tensor,
                      num_heads: int, p: torch.Tensor | None = None,
                      pos_bias_u: torch.Tensor | None = None,
                      pos_bias_v: torch.Tensor | None = None, chunk_size: int | None = None,
                      num_left_chunks: int = -1, check_lengths: bool = False,
                      legacy: bool = False, impl: str = "triton", config=None) -> torch.Tensor:
    """Attention context [B, T, H*d_k] (before the output projection) of q, k, v [B, T, H*d_k];
    with ``k`` and ``v`` None, ``q`` is the three packed [B, T, 3*H*d_k] (q | k | v, one fused
    projection's output).

    With ``p`` [2T-1, H*d_k], ``pos_bias_u`` and ``pos_bias_v`` [H, d_k]: relative-position
    attention (``legacy=True``: WeNet's un-shifted form, p [T, H*d_k]); without them, plain
    attention. ``chunk_size`` (>= 1) adds the U2 chunk mask with
    ``num_left_chunks`` chunks of history (negative: all). ``lengths`` is int32 [B];
    ``check_lengths=True`` verifies 0 <= lengths <= T on the host (a device sync).
    """
    packed = k is None and v is None
    if packed:
        k = v = q
    for name, t in (("q", q), ("k", k), ("v", v), ("lengths", lengths)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 3:
        raise ValueError(f"q must be [B, T, {'3*' if packed else ''}H*d_k], got shape "
                         f"{tuple(q.shape)}")
    if packed and q.shape[2] % 3:
        raise ValueError(f"packed q | k | v must have a last dim divisible by 3, got {q.shape[2]}")
    hd = q.shape[2] // 3 if packed else q.shape[2]
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 \
            or hd % num_heads:
        raise ValueError(f"num_heads={num_heads!r} must be a positive int dividing "
                         f"H*d_k={hd}")
    _check_head_dim(hd // num_heads)
    rel_given = [t is not None for t in (p, pos_bias_u, pos_bias_v)]
    if any(rel_given) and not all(rel_given):
        raise ValueError("p, pos_bias_u and pos_bias_v go together: give all three for "
                         "relative positions, none for plain attention")
    if legacy and not all(rel_given):
        raise ValueError("legacy=True is a form of relative-position attention: give p, "
                         "pos_bias_u and pos_bias_v")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be an int >= 1 (or None for no chunk mask), "
                         f"got {chunk_size!r}")
    if isinstance(num_left_chunks, bool) or not isinstance(num_left_chunks, int):
        raise ValueError(f"num_left_chunks must be an int, got {num_left_chunks!r}")
    b, t = q.shape[:2]
    if check_lengths and lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > t):
        raise ValueError(f"lengths must lie in [0, T={t}], got min {int(lengths.min())}, "
                         f"max {int(lengths.max())}")
    shape = {"B": b, "T": t, "H": num_heads, "DK": hd // num_heads, "chunk": chunk_size or 0,
             "left_chunks": max(num_left_chunks, -1), "packed": int(packed),
             "rel": (2 if legacy else 1) if all(rel_given) else 0}
    inputs = {"q": q, "k": k, "v": v, "p": p, "pos_bias_u": pos_bias_u,
              "pos_bias_v": pos_bias_v, "lengths": lengths}
    return launch.call(KERNEL, inputs, shape, impl, config)["out"]
