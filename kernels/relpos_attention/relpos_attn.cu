// Relative-position multi-head self-attention on the tensor cores (mma.sync m16n8k16), flash
// style (online softmax over key blocks, fp32 statistics and accumulator; FlashAttention-2's
// per-warp rows, arXiv:2307.08691). One CTA: BM = 16 WARPS queries of one (batch, head); each
// warp owns 16 of them. Per key block of BN keys, a cp.async pipeline of STAGES stages brings K,
// V and the rows of p the block needs into shared memory (XOR-swizzled rows, conflict-free
// ldmatrix), and each warp computes
//   s   = (q + u) . k^T                              16 x BN, A = q + u in registers
//   bd  = rel_shift((q + v) . p^T)  (REL 1)          the warp's band, then the skew (below)
//       = (q + v) . p[key]^T        (REL 2, WeNet's un-shifted form over p of T rows)
//   softmax(s + bd) . v                              the probabilities stay in registers as the
//                                                    A fragments of the P . V mma
// The skew. After ESPnet's rel_shift the score of query i and key j uses p[T - 1 - i + j]. For
// the CTA's query rows i0 + a and the block's keys j0 + c that is window row BM - 1 - a + c of
// the BM + BN rows of p from pw0 = T - i0 - BM + j0, so warp w (a = 16 w + r) needs window rows
// BM - 16 - 16 w + [0, BN + 16): its band, a [16, BN + 16] product with q + v. bd[r][c] =
// band[r][c + 15 - r]: the warp writes its band (fp32) to its own shared-memory rows, and each
// lane reads back the shifted elements of its own score fragment: ESPnet's pad-and-reshape as
// shared-memory addressing, with only a warp barrier between. It does so in two halves of the
// block's keys (a half's scores need BN / 2 + 16 band columns), into the space where q + u and
// q + v were staged, so that shared memory leaves room for three CTAs per SM.
// The rows of p. Consecutive key blocks' windows overlap (by BM rows in the ESPnet form), so p
// lives in a ring of POV + STAGES BN rows: the first block loads its whole window, every later
// one only its last BN rows; row r of block b's window is ring row (b BN + r) mod PRING.
// Fragment layouts are the PTX ISA's ("Matrix Fragments for mma.m16n8k16"): lane = 4 g + t; A
// rows g, g + 8; B column g; C rows g, g + 8, columns 2 t, 2 t + 1. Masks, the online softmax and
// the output rows: attn_common.cuh.
// Macros: HEADS, HEAD_DIM (32/64/128), REL (0 plain, 1 ESPnet, 2 WeNet legacy), CHUNK (0: none),
// LEFT (-1: all), PACKED (q | k | v in one tensor of rows 3 HEADS HEAD_DIM), BN (16/32/64 keys per
// block), WARPS (BM = 16 WARPS), STAGES (2/3), SMEM (dynamic shared bytes).

constexpr int BM = 16 * WARPS;
constexpr int THREADS = 32 * WARPS;
constexpr int HD = HEADS * HEAD_DIM;
constexpr int QS = (1 + 2 * PACKED) * HD;      // row stride of q, k and v
constexpr int RB = HEAD_DIM * 2;                     // bytes of a shared-memory row
constexpr int CH = HEAD_DIM / 8;                     // 16-byte chunks per row
constexpr int POV = REL == 1 ? BM : 0;                  // rows a block's p window shares with the next
constexpr int PWIN = REL ? POV + BN : 0;                // rows of p one block reads
constexpr int PRING = REL ? POV + STAGES * BN : 0;      // rows of the ring of p
constexpr int PRING_ = PRING > 0 ? PRING : 1;           // the divisor where REL != 0
constexpr int NB = BN / 8 + 2;                 // n8 tiles of a warp's band (REL 1)
constexpr int HT = BN / 16;                    // score n8 tiles per half of the block
constexpr int SB0 = 8 * (HT + 2);              // band columns a half needs
constexpr int SB = SB0 + ((8 - SB0) % 16 + 16) % 16;   // band row stride (floats), = 8 mod 16
constexpr int KV_BYTES = 2 * BN * RB;          // one stage of K and V
constexpr int Q_BYTES = BM * RB;
constexpr int BAND_BYTES = REL == 1 ? WARPS * 16 * SB * 4 : 0;
constexpr int AREA = (1 + (REL != 0)) * Q_BYTES > BAND_BYTES ? (1 + (REL != 0)) * Q_BYTES : BAND_BYTES;
static_assert(HEAD_DIM % 32 == 0 && BN % 16 == 0 && STAGES >= 2, "unsupported tile");
static_assert(STAGES * KV_BYTES + PRING * RB + AREA <= SMEM, "tiles exceed SMEM");

// Byte offset of 16-byte chunk q of row r in a tile of RB-byte rows.
__device__ __forceinline__ int at(int r, int q) { return r * RB + gt_swz<RB>(r, q) * 16; }

// ROWS rows of HEAD_DIM elements from ``src`` (row stride ``stride`` elements) starting at row
// ``first``, into tile rows slot, slot + 1, ... modulo ``wrap`` (slot < wrap, ROWS <= wrap); rows
// outside [0, limit) are zero-filled.
template <int ROWS>
__device__ __forceinline__ void load_rows(char* dst, const ct_t* src, ct_i64 stride, int first,
                                          int limit, int slot = 0, int wrap = ROWS) {
  for (int i = threadIdx.x; i < ROWS * CH; i += THREADS) {
    const int r = i / CH, q = i % CH, row = first + r;
    const bool ok = row >= 0 && row < limit;
    const int t = slot + r >= wrap ? slot + r - wrap : slot + r;
    gt_cp_async<16>(dst + at(t, q), ok ? src + row * stride + q * 8 : src, ok);
  }
}

// [(16 rows of the warp) x HEAD_DIM] A fragments from a Q tile: ks-th k16 step in a[ks].
__device__ __forceinline__ void a_frags(unsigned (&a)[HEAD_DIM / 16][4], const char* tile, int w,
                                        int lane) {
#pragma unroll
  for (int ks = 0; ks < HEAD_DIM / 16; ++ks)
    gt_ldmatrix_x4(a[ks], tile + at(16 * w + lane % 8 + 8 * ((lane / 8) % 2), 2 * ks + lane / 16));
}

// acc[nt] += a . B^T for NT n8 tiles of B rows row0 + 8 nt (rows of K or p: [key][dim]), tile
// rows taken modulo ``wrap`` (row0 < wrap, 8 NT <= wrap).
template <int NT>
__device__ __forceinline__ void qk(float (&acc)[NT][4], const unsigned (&a)[HEAD_DIM / 16][4],
                                   const char* tile, int row0, int lane, int wrap = 8 * NT) {
  static_assert(NT % 2 == 0, "n8 tiles in pairs");
#pragma unroll
  for (int ks = 0; ks < HEAD_DIM / 16; ++ks) {
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      unsigned b[4];
      int r = row0 + 8 * (nt + lane / 16) + lane % 8;
      r = r >= wrap ? r - wrap : r;
      gt_ldmatrix_x4(b, tile + at(r, 2 * ks + (lane / 8) % 2));
      gt_mma(acc[nt], a[ks], b[0], b[1]);
      gt_mma(acc[nt + 1], a[ks], b[2], b[3]);
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

  auto issue = [&](int block) {
    if (block < n_blocks) {
      char* st = smem + (block % STAGES) * KV_BYTES;
      const int j0 = lo + block * BN;
      load_rows<BN>(st, kh, QS, j0, T);
      load_rows<BN>(st + BN * RB, vh, QS, j0, T);
      if constexpr (REL != 0) {   // global row of p of window row 0, and the window's ring row
        const int first = REL == 1 ? T - i0 - BM + j0 : j0, limit = REL == 1 ? 2 * T - 1 : T;
        const int slot = block * BN % PRING_;
        if (block == 0) {
          load_rows<PWIN>(s_p, ph, HD, first, limit, 0, PRING);
        } else {
          const int tail = slot + POV >= PRING ? slot + POV - PRING : slot + POV;
          load_rows<BN>(s_p, ph, HD, first + POV, limit, tail, PRING);
        }
      }
    }
    gt_cp_commit();
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) issue(s);

  // q + u and q + v, rounded to the activation dtype, staged once
  attn_stage_q<BM, HEAD_DIM, THREADS, REL>(s_qu, s_qv, cta.q, QS, i0, T,
                                           REL ? pos_u + h * HEAD_DIM : pos_u,
                                           REL ? pos_v + h * HEAD_DIM : pos_v,
                                           [](int r, int c) { return at(r, c); });
  __syncthreads();
  unsigned a_u[HEAD_DIM / 16][4], a_v[HEAD_DIM / 16][4];
  a_frags(a_u, s_qu, w, lane);
  if (REL) a_frags(a_v, s_qv, w, lane);

  // the two query rows of this lane and their key windows
  int row_lo[2], row_hi[2];
  attn_row_windows<CHUNK, LEFT>(row_lo, row_hi, i0 + 16 * w + g, length);
  const float qk_scale = 1.4426950408889634f * rsqrtf(static_cast<float>(HEAD_DIM));   // softmax in base 2
  float m_i[2] = {-1.0e30f, -1.0e30f}, l_i[2] = {0.0f, 0.0f};     // finite: no NaN when masked
  float o[HEAD_DIM / 8][4];
#pragma unroll
  for (int nd = 0; nd < HEAD_DIM / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
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
    float s[BN / 8][4];
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
    if (REL == 1) {
      float band[NB][4];
#pragma unroll
      for (int nt = 0; nt < NB; ++nt) band[nt][0] = band[nt][1] = band[nt][2] = band[nt][3] = 0.0f;
      const int prow = pbase + BM - 16 - 16 * w;
      qk<NB>(band, a_v, s_p, prow >= PRING ? prow - PRING : prow, lane, PRING);
#pragma unroll
      for (int h = 0; h < 2; ++h) {   // band tiles h HT .. h HT + HT + 1 serve score tiles h HT ..
#pragma unroll
        for (int nt = h * HT; nt < h * HT + HT + 2; ++nt) {
          const int c = 8 * (nt - h * HT) + 2 * t;
          *reinterpret_cast<float2*>(band_w + g * SB + c) = make_float2(band[nt][0], band[nt][1]);
          *reinterpret_cast<float2*>(band_w + (g + 8) * SB + c) = make_float2(band[nt][2], band[nt][3]);
        }
        __syncwarp();
#pragma unroll
        for (int nt = h * HT; nt < h * HT + HT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = 8 * (nt - h * HT) + 2 * t + e;
            s[nt][e] = band_w[g * SB + c + 15 - g];
            s[nt][2 + e] = band_w[(g + 8) * SB + c + 7 - g];
          }
        }
        __syncwarp();   // every lane has read this half before the next one overwrites it
      }
    }
    qk<BN / 8>(s, a_u, sk, 0, lane);
    if (REL == 2) qk<BN / 8>(s, a_v, s_p, pbase, lane, PRING);

    // scale, mask, online softmax
    float (&sf)[BN / 2] = reinterpret_cast<float (&)[BN / 2]>(s);
    attn_softmax_block<BN / 8, HEAD_DIM / 8>(sf, m_i, l_i, reinterpret_cast<float (&)[HEAD_DIM / 2]>(o),
                                             j0, row_lo, row_hi, CHUNK > 0 || j0 + BN > length,
                                             qk_scale, t);
    // o += P . V: the C fragments of two n8 score tiles are the A fragment of one k16 step
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      unsigned a[4];
      attn_p_frag(a, sf, kk);
#pragma unroll
      for (int nd = 0; nd < HEAD_DIM / 8; nd += 2) {
        unsigned bv[4];
        gt_ldmatrix_x4_trans(bv, sv + at(16 * kk + lane % 8 + 8 * ((lane / 8) % 2), nd + lane / 16));
        gt_mma(o[nd], a, bv[0], bv[1]);
        gt_mma(o[nd + 1], a, bv[2], bv[3]);
      }
    }
    __syncthreads();   // this stage is refilled by a later issue()
  }
  gt_cp_wait<0>();

  attn_store_rows<HEAD_DIM / 8>(out, static_cast<ct_i64>(b) * T * HD + h * HEAD_DIM, HD,
                                reinterpret_cast<const float (&)[HEAD_DIM / 2]>(o), l_i,
                                i0 + 16 * w + g, T, length, t);
}
