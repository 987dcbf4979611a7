// Relative-position multi-head self-attention on the tensor cores (mma.sync m16n8k16), flash
// style (online softmax over key blocks, fp32 statistics and accumulator; FlashAttention-2's
// per-warp rows, arXiv:2307.08691). One CTA: BM = 16 MT WARPS queries of one (batch, head);
// each warp owns 16 MT of them, MT m16 tiles that share every B fragment (K, p, V) it loads
// from shared memory. Per key block of BN keys, a cp.async pipeline of STAGES stages brings K,
// V and the rows of p the block needs into shared memory (XOR-swizzled rows, conflict-free
// ldmatrix), and each warp computes
//   s   = (q + u) . k^T                              16 MT x BN, A = q + u in registers
//   bd  = rel_shift((q + v) . p^T)  (REL 1)          the warp's band, then the skew (below)
//       = (q + v) . p[key]^T        (REL 2, WeNet's un-shifted form over p of T rows)
//   softmax(s + bd) . v                              the probabilities stay in registers as the
//                                                    A fragments of the P . V mma
// The skew. After ESPnet's rel_shift the score of query i and key j uses p[T - 1 - i + j]. For
// the CTA's query rows i0 + a and the block's keys j0 + c that is window row BM - 1 - a + c of
// the BM + BN rows of p from pw0 = T - i0 - BM + j0, so warp w (a = 16 MT w + r) needs window
// rows BM - 16 MT (w + 1) + [0, BN + 16 MT): its band, a product with q + v of which its m16 tile
// m takes n8 tiles 2 (MT - 1 - m) + [0, BN / 8 + 2) (those of rows 16 m + [0, 16)), so that
// bd[r][c] = band_m[r][c + 15 - r] in each tile's own columns. The warp (MT 1) writes its band (fp32) to its own shared-memory rows, and each
// lane reads back the shifted elements of its own score fragment: ESPnet's pad-and-reshape as
// shared-memory addressing, with only a warp barrier between. It does so in two halves of the
// block's keys (a half's scores need BN / 2 + 16 band columns), into the space where q + u and
// q + v were staged, so that shared memory leaves room for three CTAs per SM.
// With SKEW (needed for MT 2) the skew is done in registers instead (attn_skew_add: one shuffle
// per score element, no shared memory), and as consecutive blocks' bands overlap by 16
// columns, the last two band n8 tiles of each m16 tile are kept as its first two of the next
// block (only BN / 8 tiles are new).
// The rows of p. Consecutive key blocks' windows overlap (by BM rows in the ESPnet form), so p
// lives in a ring of POV + STAGES BN rows: the first block loads its whole window, every later
// one only its last BN rows; row r of block b's window is ring row (b BN + r) mod PRING.
// Fragment layouts are the PTX ISA's ("Matrix Fragments for mma.m16n8k16"): lane = 4 g + t; A
// rows g, g + 8; B column g; C rows g, g + 8, columns 2 t, 2 t + 1. Masks, the online softmax and
// the output rows: attn_common.cuh.
// Macros: HEADS, HEAD_DIM (32/64/128), REL (0 plain, 1 ESPnet, 2 WeNet legacy), CHUNK (0: none),
// LEFT (-1: all), PACKED (q | k | v in one tensor of rows 3 HEADS HEAD_DIM), BN (16/32/64 keys per
// block), WARPS, MT (BM = 16 MT WARPS), STAGES (2/3), SKEW (0/1, above), SMEM (dynamic shared
// bytes).

constexpr int BM = 16 * MT * WARPS;
constexpr int THREADS = 32 * WARPS;
constexpr int HD = HEADS * HEAD_DIM;
constexpr int QS = (1 + 2 * PACKED) * HD;      // row stride of q, k and v
constexpr int RB = HEAD_DIM * 2;                     // bytes of a shared-memory row
constexpr int CH = HEAD_DIM / 8;                     // 16-byte chunks per row
constexpr int KS = HEAD_DIM / 16;                    // k16 steps over the head dim
constexpr int POV = REL == 1 ? BM : 0;                  // rows a block's p window shares with the next
constexpr int PWIN = REL ? POV + BN : 0;                // rows of p one block reads
constexpr int PRING = REL ? POV + STAGES * BN : 0;      // rows of the ring of p
constexpr int PRING_ = PRING > 0 ? PRING : 1;           // the divisor where REL != 0
constexpr int NB = BN / 8 + 2;                 // n8 tiles of an m16 tile's band (REL 1)
constexpr int HT = BN / 16;                    // score n8 tiles per half of the block
constexpr int SB0 = 8 * (HT + 2);              // band columns a half needs
constexpr int SB = SB0 + ((8 - SB0) % 16 + 16) % 16;   // band row stride (floats), = 8 mod 16
constexpr int KV_BYTES = 2 * BN * RB;          // one stage of K and V
constexpr int Q_BYTES = BM * RB;
constexpr int BAND_BYTES = REL == 1 && !SKEW ? WARPS * 16 * SB * 4 : 0;
constexpr int AREA = (1 + (REL != 0)) * Q_BYTES > BAND_BYTES ? (1 + (REL != 0)) * Q_BYTES : BAND_BYTES;
static_assert(HEAD_DIM % 32 == 0 && BN % 16 == 0 && STAGES >= 2, "unsupported tile");
static_assert(REL != 1 || MT == 1 || SKEW, "MT 2 skews the band in registers (SKEW)");
static_assert(STAGES * KV_BYTES + PRING * RB + AREA <= SMEM, "tiles exceed SMEM");

// Byte offset of 16-byte chunk q of row r in a tile of RB-byte rows.
__device__ __forceinline__ int at(int r, int q) { return r * RB + gt_swz<RB>(r, q) * 16; }

// ROWS rows of HEAD_DIM elements from ``src_base`` (row stride STRIDE elements) starting at row
// ``first``, into tile rows slot, slot + 1, ... modulo ``wrap`` (slot < wrap, ROWS <= wrap); rows
// outside [0, limit) are zero-filled. Each thread's share of the copies is fixed (copy i: row
// i / CH, chunk i % CH, by thread i % THREADS; THREADS being a multiple of CH, a thread keeps its
// chunk q and takes rows r0, r0 + RS, ...): its source offset and shared offsets are computed
// once, so a load only adds its rows' origin and its slot and checks the rows' limits. A row's
// swizzle is that of its row in the block as long as ``slot`` and ``wrap`` are multiples of 8
// (they are: BN, BM and the ring are multiples of 16), and repeats every RS rows when RS is a
// multiple of 8 (then one shared offset is kept, else one per copy). (A generic copy loop, not
// unrolled and redoing the division, the wrap and the swizzle per copy, was about a third of the
// key-block loop's SASS: 1537 -> 1060 instructions per block at MT 2, BN 32, d_k 64, sm_90.)
template <int ROWS, int STRIDE>
struct RowShare {
  static constexpr int RS = THREADS / CH, N = (ROWS + RS - 1) / RS, ND = RS % 8 == 0 ? 1 : N;
  static_assert(THREADS % CH == 0, "a thread's copies share their chunk");
  int r0, src0, dst[ND];

  __device__ __forceinline__ RowShare() : r0(threadIdx.x / CH), src0(r0 * STRIDE + threadIdx.x % CH * 8) {
#pragma unroll
    for (int j = 0; j < ND; ++j) dst[j] = at(r0 + j * RS, threadIdx.x % CH);
  }

  // Where every row is inside [0, limit) and the slots do not wrap (a uniform branch: all but the edge blocks), the copies
  // need no check and take their offsets from one source and one shared address as immediates.
  __device__ __forceinline__ void load(char* tile, const ct_t* src_base, int first, int limit, int slot = 0,
                                       int wrap = ROWS) const {
    const ct_t* from = src_base + static_cast<ct_i64>(first) * STRIDE + src0;
    if (first >= 0 && first + ROWS <= limit && slot + ROWS <= wrap) {
      char* to = tile + slot * RB;
#pragma unroll
      for (int j = 0; j < N; ++j)
        if (ROWS % RS == 0 || r0 + j * RS < ROWS)
          gt_cp_async<16>(to + (ND == 1 ? dst[0] + j * RS * RB : dst[j]), from + j * RS * STRIDE, true);
      return;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int r = r0 + j * RS;   // row in the block
      if (ROWS % RS == 0 || r < ROWS) {
        const bool ok = first + r >= 0 && first + r < limit;
        const int d = (ND == 1 ? dst[0] + j * RS * RB : dst[j]) + (slot + r >= wrap ? slot - wrap : slot) * RB;
        gt_cp_async<16>(tile + d, ok ? from + j * RS * STRIDE : src_base, ok);
      }
    }
  }
};

// The A fragments of the warp's MT m16 tiles (rows 16 (MT w + m) ..) of a Q tile: a[m][ks].
__device__ __forceinline__ void a_frags(unsigned (&a)[MT][KS][4], const char* tile, int w, int lane) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
      gt_ldmatrix_x4(a[m][ks], tile + at(16 * (MT * w + m) + lane % 8 + 8 * ((lane / 8) % 2),
                                         2 * ks + lane / 16));
}

// The B fragments (two n8 tiles) of rows row0 + [0, 16) of a [row][dim] tile (K or p), k16
// step ks, rows taken modulo ``wrap`` (row0 < wrap). row0 and wrap are multiples of 8, so the
// lane's row is 8-row group r8 (wrapped as a whole), row lane % 8 in it, whose swizzle is that of
// row lane % 8: at(r8 + lane % 8, q) = r8 RB + at(lane % 8, q), the second term fixed per lane.
__device__ __forceinline__ void b_frags(unsigned (&b)[4], const char* tile, int row0, int ks, int lane,
                                        int wrap) {
  int r8 = row0 + 8 * (lane / 16);
  r8 = r8 >= wrap ? r8 - wrap : r8;
  gt_ldmatrix_x4(b, tile + r8 * RB + at(lane % 8, 2 * ks + (lane / 8) % 2));
}

// acc[m][nt] += a[m] . B^T for NT n8 tiles of B rows row0 + 8 nt (rows of K or p: [key][dim]),
// tile rows taken modulo ``wrap`` (row0 < wrap, 8 NT <= wrap); each B fragment serves every m.
template <int M, int NT>
__device__ __forceinline__ void qk(float (&acc)[M][NT][4], const unsigned (&a)[M][KS][4],
                                   const char* tile, int row0, int lane, int wrap = 8 * NT) {
  static_assert(NT % 2 == 0, "n8 tiles in pairs");
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      unsigned b[4];
      b_frags(b, tile, row0 + 8 * nt, ks, lane, wrap);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        gt_mma(acc[m][nt], a[m][ks], b[0], b[1]);
        gt_mma(acc[m][nt + 1], a[m][ks], b[2], b[3]);
      }
    }
  }
}

// The register band (SKEW): m16 tile m's n8 tiles j of the warp's band are the window's tiles
// 2 (MT - 1 - m) + j; those with LO <= j < HI are added to ``band`` (block 0's first two before
// the loop, then each block's j >= 2: the others are carried). prow: ring row of the warp's band
// tile 0.
template <int LO, int HI>
__device__ __forceinline__ void band_mma(float (&band)[MT][NB][4], const unsigned (&a)[MT][KS][4],
                                         const char* s_p, int prow, int lane) {
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
    for (int i = 0; i < NB + 2 * (MT - 1); i += 2) {
      bool used = false;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const int j = i - 2 * (MT - 1 - m);
        used |= j >= LO && j < HI;
      }
      if (!used) continue;
      unsigned b[4];
      b_frags(b, s_p, prow + 8 * i, ks, lane, PRING_);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const int j = i - 2 * (MT - 1 - m);
        if (j >= LO && j < HI) {
          gt_mma(band[m][j], a[m][ks], b[0], b[1]);
          gt_mma(band[m][j + 1], a[m][ks], b[2], b[3]);
        }
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(THREADS)
relpos_attn_fwd(const ct_t* __restrict__ qg, const ct_t* __restrict__ kg,
                const ct_t* __restrict__ vg, const ct_t* __restrict__ pg,
                const ct_t* __restrict__ pos_u, const ct_t* __restrict__ pos_v,
                const int* __restrict__ lengths, ct_t* __restrict__ out, int T) {
  extern __shared__ __align__(128) char smem[];
  char* s_p = smem + STAGES * KV_BYTES;
  char* s_qu = s_p + PRING * RB;
  char* s_qv = s_qu + Q_BYTES;
  float* s_band = reinterpret_cast<float*>(s_qu);   // once q + u and q + v are in registers
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, t = lane % 4;
  const AttnCta<BM, HEADS, HEAD_DIM, PACKED, REL> cta(qg, kg, vg, pg, lengths, T);
  const int b = cta.b, h = cta.h, i0 = cta.i0, length = cta.length;
  const ct_t *kh = cta.k, *vh = cta.v, *ph = cta.p;

  int lo;   // key window of the block as a whole (rows narrow it further below)
  const int n_blocks = attn_key_blocks<BN, CHUNK, LEFT>(i0, BM, length, lo);

  const RowShare<BN, QS> kv_share;
  const RowShare<BN, HD> p_share;
  const RowShare<(PWIN > 0 ? PWIN : 1), HD> p0_share;   // block 0's whole window
  // block's K and V (block < n_blocks); the global row of p of its window's row 0
  auto issue_kv = [&](int block) {
    char* st = smem + (block % STAGES) * KV_BYTES;
    const int j0 = lo + block * BN;
    kv_share.load(st, kh, j0, T);
    kv_share.load(st + BN * RB, vh, j0, T);
    return REL == 1 ? T - i0 - BM + j0 : j0;
  };
  constexpr int P_LIMIT_T = REL == 1 ? 2 : 1;   // p has 2T - 1 rows (rel 1) or T
  // block 0's copies: its whole p window (the prologue's only)
  auto issue_first = [&]() {
    if (0 < n_blocks) {
      const int first = issue_kv(0);
      if constexpr (REL != 0) p0_share.load(s_p, ph, first, P_LIMIT_T * T - (REL == 1), 0, PRING);
    }
    gt_cp_commit();
  };
  // a later block's: the rows of its p window past the previous block's, into the ring
  auto issue = [&](int block) {
    if (block < n_blocks) {
      const int first = issue_kv(block);
      if constexpr (REL != 0) {
        const int slot = block * BN % PRING_;
        const int tail = slot + POV >= PRING ? slot + POV - PRING : slot + POV;
        p_share.load(s_p, ph, first + POV, P_LIMIT_T * T - (REL == 1), tail, PRING);
      }
    }
    gt_cp_commit();
  };
  issue_first();
#pragma unroll
  for (int s = 1; s < STAGES - 1; ++s) issue(s);

  // q + u and q + v, rounded to the activation dtype, staged once
  attn_stage_q<BM, HEAD_DIM, THREADS, REL>(s_qu, s_qv, cta.q, QS, i0, T,
                                           REL ? pos_u + h * HEAD_DIM : pos_u,
                                           REL ? pos_v + h * HEAD_DIM : pos_v,
                                           [](int r, int c) { return at(r, c); });
  if (REL == 1 && SKEW) gt_cp_wait<STAGES - 2>();   // block 0's window of p is in (below)
  __syncthreads();
  unsigned a_u[MT][KS][4], a_v[MT][KS][4];
  a_frags(a_u, s_qu, w, lane);
  if (REL) a_frags(a_v, s_qv, w, lane);
  // SKEW: block 0's first two band tiles, which later blocks carry over from the block before,
  // so that the loop has no branch for block 0 (garbage, unused, when there is no block)
  float band_r[MT][NB][4];   // the band, its last two tiles carried
  if constexpr (REL == 1 && SKEW) {
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) band_r[m][nt][0] = band_r[m][nt][1] = band_r[m][nt][2] = band_r[m][nt][3] = 0.0f;
    band_mma<0, 2>(band_r, a_v, s_p, BM - 16 * MT * (w + 1), lane);
  }

  // the two query rows of this lane in each m16 tile, and their key windows
  const int row0 = i0 + 16 * MT * w + g;
  int row_lo[MT][2], row_hi[MT][2];
#pragma unroll
  for (int m = 0; m < MT; ++m) attn_row_windows<CHUNK, LEFT>(row_lo[m], row_hi[m], row0 + 16 * m, length);
  const float qk_scale = 1.4426950408889634f * rsqrtf(static_cast<float>(HEAD_DIM));   // softmax in base 2
  constexpr int OT = HEAD_DIM / 8 + 1;   // o's n8 tiles, the last the rows' sums of P (below)
  float m_i[MT][2];   // m finite: no NaN when masked
  float o[MT][OT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    m_i[m][0] = m_i[m][1] = -1.0e30f;
#pragma unroll
    for (int nd = 0; nd < OT; ++nd) o[m][nd][0] = o[m][nd][1] = o[m][nd][2] = o[m][nd][3] = 0.0f;
  }
  float* band_w = s_band + w * 16 * SB;   // written only after the loop's first CTA barrier

  for (int block = 0; block < n_blocks; ++block) {
    issue(block + STAGES - 1);
    gt_cp_wait<STAGES - 1>();
    __syncthreads();
    const char* st = smem + (block % STAGES) * KV_BYTES;
    const char* sk = st;
    const char* sv = st + BN * RB;
    const int j0 = lo + block * BN;
    const int pbase = block * BN % PRING_;   // ring row of the window's row 0 (REL != 0)

    // the scores start as the shifted position term (ESPnet form), then gather (q + u) . k^T
    float s[MT][BN / 8][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) s[m][nt][0] = s[m][nt][1] = s[m][nt][2] = s[m][nt][3] = 0.0f;
    if (REL == 1 && SKEW) {
      int prow = pbase + BM - 16 * MT * (w + 1);   // ring row of the warp's band tile 0
      prow = prow >= PRING ? prow - PRING : prow;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) band_r[m][nt][e] = nt < 2 ? band_r[m][nt][e] : 0.0f;
        }
      }
      band_mma<2, NB>(band_r, a_v, s_p, prow, lane);
#pragma unroll
      for (int m = 0; m < MT; ++m)
        attn_skew_add<BN / 8, NB, 1, 0, true>(reinterpret_cast<float (&)[BN / 2]>(s[m]),
                                        reinterpret_cast<const float (&)[4 * NB]>(band_r[m]), lane);
#pragma unroll
      for (int m = 0; m < MT; ++m)   // the next block's first two tiles
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) band_r[m][nt][e] = band_r[m][NB - 2 + nt][e];
    } else if (REL == 1) {   // MT 1
      float band[1][NB][4];
#pragma unroll
      for (int nt = 0; nt < NB; ++nt) band[0][nt][0] = band[0][nt][1] = band[0][nt][2] = band[0][nt][3] = 0.0f;
      const int prow = pbase + BM - 16 - 16 * w;
      qk<1, NB>(band, reinterpret_cast<const unsigned (&)[1][KS][4]>(a_v), s_p,
                prow >= PRING ? prow - PRING : prow, lane, PRING);
#pragma unroll
      for (int h = 0; h < 2; ++h) {   // band tiles h HT .. h HT + HT + 1 serve score tiles h HT ..
#pragma unroll
        for (int nt = h * HT; nt < h * HT + HT + 2; ++nt) {
          const int c = 8 * (nt - h * HT) + 2 * t;
          *reinterpret_cast<float2*>(band_w + g * SB + c) = make_float2(band[0][nt][0], band[0][nt][1]);
          *reinterpret_cast<float2*>(band_w + (g + 8) * SB + c) = make_float2(band[0][nt][2], band[0][nt][3]);
        }
        __syncwarp();
#pragma unroll
        for (int nt = h * HT; nt < h * HT + HT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = 8 * (nt - h * HT) + 2 * t + e;
            s[0][nt][e] = band_w[g * SB + c + 15 - g];
            s[0][nt][2 + e] = band_w[(g + 8) * SB + c + 7 - g];
          }
        }
        __syncwarp();   // every lane has read this half before the next one overwrites it
      }
    }
    qk<MT, BN / 8>(s, a_u, sk, 0, lane);
    if (REL == 2) qk<MT, BN / 8>(s, a_v, s_p, pbase, lane, PRING);

    // scale, mask, online softmax
    const bool masked = CHUNK > 0 || j0 + BN > length;
#pragma unroll
    for (int m = 0; m < MT; ++m)
      attn_softmax_rows<BN / 8, OT>(reinterpret_cast<float (&)[BN / 2]>(s[m]), m_i[m],
                                    reinterpret_cast<float (&)[4 * OT]>(o[m]), j0, row_lo[m], row_hi[m],
                                    masked, qk_scale, t);
    // o += P . V: the C fragments of two n8 score tiles are the A fragment of one k16 step; P
    // times a B of ones sums each row of P (its fp32 sums, every column alike, in o's last tile:
    // one mma per k16 step instead of an add per probability and a quad reduction at the end)
    constexpr unsigned ONES = CT_DTYPE == 0 ? 0x3C003C00u : 0x3F803F80u;   // 1.0 twice, fp16 / bf16
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      unsigned a[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) attn_p_frag(a[m], reinterpret_cast<const float (&)[BN / 2]>(s[m]), kk);
#pragma unroll
      for (int nd = 0; nd < HEAD_DIM / 8; nd += 2) {
        unsigned bv[4];
        gt_ldmatrix_x4_trans(bv, sv + at(16 * kk + lane % 8 + 8 * ((lane / 8) % 2), nd + lane / 16));
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          gt_mma(o[m][nd], a[m], bv[0], bv[1]);
          gt_mma(o[m][nd + 1], a[m], bv[2], bv[3]);
        }
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) gt_mma(o[m][OT - 1], a[m], ONES, ONES);
    }
    __syncthreads();   // this stage is refilled by a later issue()
  }
  gt_cp_wait<0>();

#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const float l[2] = {o[m][OT - 1][0], o[m][OT - 1][2]};
    attn_store_rows<HEAD_DIM / 8, false>(out, static_cast<ct_i64>(b) * T * HD + h * HEAD_DIM, HD,
                                         reinterpret_cast<const float (&)[HEAD_DIM / 2]>(o[m]), l,
                                         row0 + 16 * m, T, length, t);
  }
}
