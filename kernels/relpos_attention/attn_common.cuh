// What both CUDA attention kernels (relpos_attn.cu: mma.sync, relpos_attn_wgmma.cu: wgmma) do
// the same way: the keys each query attends to, the online softmax of one key block, and the
// output rows. A warp owns 16 query rows; its scores and output are in the m16n8k16 C layout
// (that of each warp's 16 rows of wgmma's D as well), flat: n8 tile nt, element e at
// s[4 nt + e], row g (e < 2) or g + 8, column 8 nt + 2 t + e % 2 (lane = 4 g + t).
// The chunk mask is a template argument (a header precedes the kernel's config macros): CHUNK
// frames per chunk (0: none), LEFT chunks of history (-1: all).

#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ unsigned pack2(float lo, float hi) {
#if CT_DTYPE == 0
  return ct_bits<unsigned>(__floats2half2_rn(lo, hi));
#else
  return ct_bits<unsigned>(__floats2bfloat162_rn(lo, hi));
#endif
}

// A CTA's (batch, head) and first query row i0 (grid: cdiv(T, BM) query blocks x B x H,
// flattened), its sequence's length (clamped to [0, T]) and the heads of q, k, v (row stride
// QS elements) and p. Reads the lengths after waiting for the grid ahead of this one
// (programmatic dependent launch).
template <int BM, int HEADS, int HEAD_DIM, int PACKED, int REL>
struct AttnCta {
  static constexpr int HD = HEADS * HEAD_DIM, QS = (1 + 2 * PACKED) * HD;
  int b, h, i0, length;
  const ct_t *q, *k, *v, *p;
  __device__ __forceinline__ AttnCta(const ct_t* qg, const ct_t* kg, const ct_t* vg, const ct_t* pg,
                                     const int* lengths, int T) {
    const int n_qb = (T + BM - 1) / BM, bh = blockIdx.x / n_qb;
    b = bh / HEADS;
    h = bh % HEADS;
    i0 = blockIdx.x % n_qb * BM;
    ct_wait_for_predecessor();
    length = min(max(lengths[b], 0), T);
    const ct_i64 off = static_cast<ct_i64>(b) * T * QS + h * HEAD_DIM;
    q = qg + off;
    k = kg + off + PACKED * HD;
    v = vg + off + 2 * PACKED * HD;
    p = REL ? pg + h * HEAD_DIM : pg;   // p is absent (null) for plain attention
  }
};

// q + u and q + v (q alone without REL) of query rows i0 + [0, ROWS) into two tiles (16-byte chunk
// c of row r at at(r, c)), each sum rounded once to the activation dtype (packed adds, as the
// eager reference's fp16 / bf16 q + u); rows at or past T are q = 0. u, v: this head's biases,
// 16-byte aligned. Every thread of the CTA (THREADS) takes part and keeps one chunk column, so it
// loads its chunk of u and v once.
template <int ROWS, int HEAD_DIM, int THREADS, int REL, typename At>
__device__ __forceinline__ void attn_stage_q(char* s_qu, char* s_qv, const ct_t* q, int qs, int i0,
                                             int T, const ct_t* u, const ct_t* v, At at) {
  constexpr int CH = HEAD_DIM / 8;
  static_assert(THREADS % CH == 0, "a thread keeps its chunk column");
  // chunks as uint4 (a struct of four half2 would be copied as four 4-byte loads)
  auto add = [](unsigned a, unsigned b) { return ct_bits<unsigned>(__hadd2(ct_bits<gt_v2>(a), ct_bits<gt_v2>(b))); };
  const int c = threadIdx.x % CH;
  uint4 bu{}, bv{};
  if (REL) {
    bu = *reinterpret_cast<const uint4*>(u + c * 8);
    bv = *reinterpret_cast<const uint4*>(v + c * 8);
  }
  for (int i = threadIdx.x; i < ROWS * CH; i += THREADS) {
    const int r = i / CH, row = i0 + r;
    uint4 x{};
    if (row < T) x = *reinterpret_cast<const uint4*>(q + row * qs + c * 8);
    if (REL) {
      *reinterpret_cast<uint4*>(s_qu + at(r, c)) =
          make_uint4(add(x.x, bu.x), add(x.y, bu.y), add(x.z, bu.z), add(x.w, bu.w));
      *reinterpret_cast<uint4*>(s_qv + at(r, c)) =
          make_uint4(add(x.x, bv.x), add(x.y, bv.y), add(x.z, bv.z), add(x.w, bv.w));
    } else {
      *reinterpret_cast<uint4*>(s_qu + at(r, c)) = x;
    }
  }
}

// The key blocks of BN keys that query rows [i0, i0 + rows) need, for a sequence of ``length``
// valid frames: the first key ``lo`` (a multiple of BN) and the count.
template <int BN, int CHUNK, int LEFT>
__device__ __forceinline__ int attn_key_blocks(int i0, int rows, int length, int& lo) {
  constexpr int CHUNK_ = CHUNK > 0 ? CHUNK : 1;  // the divisor where CHUNK > 0
  int hi = length;
  lo = 0;
  if constexpr (CHUNK > 0) {
    const int last = max(min(i0 + rows, length) - 1, 0);
    hi = min((last / CHUNK_ + 1) * CHUNK_, length);
    if (LEFT >= 0) lo = max((i0 / CHUNK_ - LEFT) * CHUNK_, 0);
  }
  if (i0 >= length) hi = 0;
  lo = lo / BN * BN;
  return hi > lo ? (hi - lo + BN - 1) / BN : 0;
}

// The keys [lo, hi) of a lane's two query rows, i and i + 8.
template <int CHUNK, int LEFT>
__device__ __forceinline__ void attn_row_windows(int (&lo)[2], int (&hi)[2], int i, int length) {
  constexpr int CHUNK_ = CHUNK > 0 ? CHUNK : 1;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = i + 8 * half;
    lo[half] = 0;
    hi[half] = length;
    if constexpr (CHUNK > 0) {
      hi[half] = min((row / CHUNK_ + 1) * CHUNK_, length);
      if (LEFT >= 0) lo[half] = max((row / CHUNK_ - LEFT) * CHUNK_, 0);
    }
  }
}

// One key block (keys j0 + [0, 8 NT)) of the online softmax, in base 2: the raw scores s,
// masked outside each row's window (where ``masked``), become unnormalised probabilities
// exp2(scale (s - m)) (``scale`` > 0 includes log2 e: one fma per score, the running max m kept
// unscaled), and the running sum l and output o (OT n8 tiles) are rescaled only where some row
// of the warp has a max more than RESCALE_LOG2 (in base 2) above its m: else m stays, the
// block's probabilities are at most 2^RESCALE_LOG2 (256, well inside fp16 and bf16), and o and
// l need no multiply (a lazy rescale: the final o / l is the same whatever m the block used, up
// to rounding). m starts finite (-1e30), so a fully masked row yields zeros, never NaN; its
// first unmasked block always rescales. attn_softmax_rows (below) leaves the sums to its caller.
#define RESCALE_LOG2 8.0f
template <int NT, int OT, bool SUM = true>
__device__ __forceinline__ void attn_softmax_block(float (&s)[4 * NT], float (&m)[2], float (&l)[2],
                                                   float (&o)[4 * OT], int j0, const int (&lo)[2],
                                                   const int (&hi)[2], bool masked, float scale,
                                                   int t) {
  // the mask in a branch of its own (ptxas predicates a per-element test into every block)
  if (masked) {
#pragma unroll
    for (int i = 0; i < 4 * NT; ++i) {
      const int half = (i % 4) / 2, j = j0 + 8 * (i / 4) + 2 * t + i % 2;
      if (j < lo[half] || j >= hi[half]) s[i] = NEG_INF;
    }
  }
  // each row's max and sum as four independent chains (element i % 2 of n8 tiles of one parity),
  // not one dependent instruction per score
  float mx[2][4];
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int c = 0; c < 4; ++c) mx[half][c] = NEG_INF;
#pragma unroll
  for (int i = 0; i < 4 * NT; ++i) {
    float& x = mx[(i % 4) / 2][i % 2 + 2 * ((i / 4) % 2)];
    x = fmaxf(x, s[i]);
  }
  bool grow = false;
  float row_max[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float x = fmaxf(fmaxf(mx[half][0], mx[half][1]), fmaxf(mx[half][2], mx[half][3]));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
    row_max[half] = x;
    grow |= (x - m[half]) * scale > RESCALE_LOG2;
  }
  if (__any_sync(0xffffffffu, grow)) {
    float alpha[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float m_new = fmaxf(m[half], row_max[half]);
      alpha[half] = exp2f((m[half] - m_new) * scale);
      m[half] = m_new;
      if (SUM) l[half] *= alpha[half];
    }
#pragma unroll
    for (int i = 0; i < 4 * OT; ++i) o[i] *= alpha[(i % 4) / 2];
  }
  const float bias[2] = {-m[0] * scale, -m[1] * scale};
  float sum[2][4] = {};
#pragma unroll
  for (int i = 0; i < 4 * NT; ++i) {
    s[i] = exp2f(fmaf(s[i], scale, bias[(i % 4) / 2]));
    sum[(i % 4) / 2][i % 2 + 2 * ((i / 4) % 2)] += s[i];
  }
  if (SUM) {
#pragma unroll
    for (int half = 0; half < 2; ++half) l[half] += (sum[half][0] + sum[half][1]) + (sum[half][2] + sum[half][3]);
  }
}

// attn_softmax_block for a caller that sums the probabilities itself (as the last of o's tiles,
// rescaled with it): no running sum here.
template <int NT, int OT>
__device__ __forceinline__ void attn_softmax_rows(float (&s)[4 * NT], float (&m)[2], float (&o)[4 * OT], int j0,
                                                  const int (&lo)[2], const int (&hi)[2], bool masked,
                                                  float scale, int t) {
  float unused[2];
  attn_softmax_block<NT, OT, false>(s, m, unused, o, j0, lo, hi, masked, scale, t);
}

// The ESPnet form's skew in registers: s[4 nt + 2 hf + e] += the band value at row g + 8 hf,
// column 8 (nt + A_hf) + 2 t + e + 7 - g, of a band whose n8 tiles are in the same flat C
// layout (band[4 i + 2 hf + e]: row g + 8 hf, column 8 i + 2 t + e). The shift 7 - g = 2 beta +
// eps is the same for the four lanes of a row (a quad), so each element comes from lane
// t + beta (+ 1 for e = 1 when eps) of the quad, which wraps into the next n8 tile for the lanes
// t < beta (+ eps): each lane offers the value its destination needs, one shuffle per element.
// No shared memory and no barrier, where storing the band and reading it back skewed (ESPnet's
// pad-and-reshape as addressing) costs a round trip through shared memory per block.
// Only n8 tiles [NT0, NT1) of s (a piece whose band is ready while the rest is computed).
template <int NT, int NBT, int A0, int A1, bool SET = false, int NT0 = 0, int NT1 = NT>   // SET: s = the band's value
__device__ __forceinline__ void attn_skew_add(float (&s)[4 * NT], const float (&band)[4 * NBT], int lane) {
  static_assert(NT + (A0 > A1 ? A0 : A1) < NBT, "the band is narrower than the shift needs");
  static_assert(0 <= NT0 && NT0 < NT1 && NT1 <= NT, "an empty or outside range of tiles");
  const int t = lane % 4, sig = 7 - lane / 4, beta = sig >> 1, eps = sig & 1;
  const int src0 = (lane & ~3) | ((t + beta) & 3), src1 = (lane & ~3) | ((t + beta + eps) & 3);
  const bool wrap0 = t < beta, wrap1 = t < beta + eps;
#pragma unroll
  for (int nt = NT0; nt < NT1; ++nt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float* lo = band + 4 * (nt + (hf ? A1 : A0)) + 2 * hf;
      const float* hi = lo + 4;
      const float v0 = wrap0 ? (eps ? hi[1] : hi[0]) : (eps ? lo[1] : lo[0]);
      const float v1 = wrap1 ? (eps ? hi[0] : hi[1]) : (eps ? lo[0] : lo[1]);
      const float b0 = __shfl_sync(0xffffffffu, v0, src0), b1 = __shfl_sync(0xffffffffu, v1, src1);
      s[4 * nt + 2 * hf] = SET ? b0 : s[4 * nt + 2 * hf] + b0;
      s[4 * nt + 2 * hf + 1] = SET ? b1 : s[4 * nt + 2 * hf + 1] + b1;
    }
  }
}

// The probabilities of k16 step kk (n8 tiles 2 kk, 2 kk + 1) as an m16k16 A fragment.
template <int N>
__device__ __forceinline__ void attn_p_frag(unsigned (&a)[4], const float (&s)[N], int kk) {
  const float* p = s + 8 * kk;
  a[0] = pack2(p[0], p[1]);
  a[1] = pack2(p[2], p[3]);
  a[2] = pack2(p[4], p[5]);
  a[3] = pack2(p[6], p[7]);
}

// The lane's two output rows i and i + 8 of ``out`` (row stride HD elements, from o_off):
// o / l, or zeros for rows at or past ``length`` and rows that attended to no key. l_part: the
// lane's share of each row's sum (QUAD: summed over the quad here) or the whole sum.
template <int OT, bool QUAD = true>
__device__ __forceinline__ void attn_store_rows(ct_t* out, ct_i64 o_off, int hd, const float (&o)[4 * OT],
                                                const float (&l_part)[2], int i, int T, int length,
                                                int t) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float l = l_part[half];
    if (QUAD) {
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
    }
    const int row = i + 8 * half;
    if (row >= T) continue;
    const bool ok = row < length && l > 0.0f;
    const float inv = ok ? 1.0f / l : 0.0f;
#pragma unroll
    for (int nd = 0; nd < OT; ++nd)
      *reinterpret_cast<unsigned*>(out + o_off + static_cast<ct_i64>(row) * hd + 8 * nd + 2 * t) =
          pack2(o[4 * nd + 2 * half] * inv, o[4 * nd + 2 * half + 1] * inv);
  }
}
