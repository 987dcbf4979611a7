// Relative-position multi-head self-attention on Hopper's warpgroup MMA (sm_90a), flash style,
// same contract as relpos_attn.cu. One CTA: WG warpgroups of 64 query rows each (BM = 64 WG) of
// one (batch, head); per key block of BN keys a cp.async pipeline of STAGES stages brings K, V
// and the rows of p the block needs into shared memory, 128-byte swizzled in panels of 64 dims
// (wgmma.cuh), and each warpgroup computes, with the tensor cores reading K, p and V straight
// from shared memory (once per warpgroup, where mma.sync needs one ldmatrix per warp):
//   s    = (q + u) . k^T                  m64 x BN, A = q + u in registers
//   band = (q + v) . p_window^T  (REL 1)  m64 x (BN + 64), issued first, as n64 pieces; with
//                                         CARRY the last piece is kept as the next block's
//                                         first (its window starts BN rows later), so only
//                                         BN / 64 pieces are new (and loaded)
//   s   += skew(band)                     through shared memory (below)
//        = (q + v) . p[key]^T    (REL 2)  WeNet's un-shifted form, accumulated into s
//   o   += softmax(s) . v                 the probabilities as register A fragments, V read
//                                         MN-major (imm-trans-b)
// The skew. After ESPnet's rel_shift the score of query i and key j uses p[T - 1 - i + j]. The
// stage holds p rows T - i0 - BM + j0 + [0, BN + BM); warpgroup wg (rows iw = i0 + 64 wg + r,
// r < 64) reads the BN + 64 of them from row 64 (WG - 1 - wg), its band, so that
// bd[r][c] = band[r][c + 63 - r]. Warp w of the warpgroup (r = 16 w + 0..15) needs band columns
// 48 - 16 w + [0, BN + 16): it writes those (fp32) to its own shared-memory rows and each lane
// reads back the shifted elements of its score fragment, with only warp barriers between;
// meanwhile the tensor cores compute (q + u) . k^T. With SKEW the skew is done in registers
// instead (attn_skew_add, one shuffle per score element; warp w's rows start 8 (7 - 2 w) band
// columns in), after both products are done.
// Masks, the online softmax and the output rows: attn_common.cuh.
// Macros: HEADS, HEAD_DIM (64/128), REL (0 plain, 1 ESPnet, 2 WeNet legacy), CHUNK, LEFT, PACKED,
// BN (64/128 keys per block), WG (1/2 warpgroups), STAGES (2/3), CARRY, SKEW (0/1, above), WS,
// PP (0/1, below), SMEM (dynamic shared bytes, with 1024 for the swizzle atom's alignment).
// Warp specialisation (WS 1, FlashAttention-3's structure, arXiv:2407.08608): a producer
// warpgroup (warps 0-3) issues every stage's copies and its threads arrive on the stage's ``full``
// mbarrier as their copies land; the WG computing warpgroups wait on ``full``, compute as above
// with q + u and q + v read by descriptor from shared memory, and arrive on the stage's
// ``empty`` mbarrier after P . V, which the producer waits on before refilling it: no CTA-wide
// barrier in the loop. setmaxnreg moves registers from the producer (24) to them (240). PP 1
// (ping-pong): the computing warpgroups take turns issuing a block's score and band MMAs (named
// barriers 2 and 3), so one's softmax runs under the other's MMAs.

constexpr int BM = 64 * WG, THREADS = 128 * (WG + WS);
constexpr int LOADERS = WS ? 128 : THREADS;   // threads that issue the copies
constexpr int HD = HEADS * HEAD_DIM;
constexpr int QS = (1 + 2 * PACKED) * HD;  // row stride of q, k and v
constexpr int CH = HEAD_DIM / 8;           // 16-byte chunks per row
constexpr int KS = HEAD_DIM / 16;          // k16 steps over the head dim
constexpr int PW = REL == 1 ? BN + BM : REL == 2 ? BN : 0;  // rows of p per stage
constexpr int NBAND = (BN + 64) / 64;      // n64 pieces of a warpgroup's band (REL 1)
constexpr int SB0 = BN + 16;               // band columns a warp needs
constexpr int SB = SB0 + ((8 - SB0) % 16 + 16) % 16;  // band row stride (floats), = 8 mod 16
constexpr int K_BYTES = BN * HEAD_DIM * 2;
constexpr int STAGE_BYTES = 2 * K_BYTES + PW * HEAD_DIM * 2;
constexpr int Q_BYTES = BM * HEAD_DIM * 2;
constexpr int BAND_BYTES = REL == 1 && !SKEW ? 4 * WG * 16 * SB * 4 : 0;
// q + u and q + v are staged once, then held as register fragments: where they fit, in the last
// stage, which the loop's first issue() fills only after they are read (so that BN 128 with the
// register skew fits two CTAs per SM)
constexpr int QS_BYTES = (1 + (REL != 0)) * Q_BYTES;
constexpr bool Q_IN_STAGE = !WS && QS_BYTES <= STAGE_BYTES;
constexpr int BAR_BYTES = WS ? 2 * STAGES * 8 : 0;   // the full and empty mbarrier of each stage
static_assert((HEAD_DIM == 64 || HEAD_DIM == 128) && (BN == 64 || BN == 128) && STAGES >= 2, "unsupported tile");
static_assert(STAGES * STAGE_BYTES + (Q_IN_STAGE ? 0 : QS_BYTES) + BAND_BYTES + BAR_BYTES + 1024 <= SMEM,
              "tiles exceed SMEM");
static_assert(!WS || (WG == 2 && !CARRY && (REL != 1 || SKEW)), "WS: two computing warpgroups, no CARRY, SKEW 1");
static_assert(!PP || WS, "PP orders the computing warpgroups of WS");

// Byte offset of 16-byte chunk q of row r in a tile of ROWS rows: panels of 64 dims, each ROWS
// rows of 128 bytes in the 128-byte swizzle.
template <int ROWS>
__device__ __forceinline__ int at(int r, int q) {
  return (q / 8) * ROWS * 128 + r * 128 + ((q % 8) ^ (r % 8)) * 16;
}

// Rows [FIRST, ROWS) of a tile of ROWS rows of HEAD_DIM elements from ``src_base`` (row stride
// STRIDE elements; tile row 0 is row ``first``), rows outside [0, limit) zero-filled, with each
// loading thread's share fixed: copy i (row FIRST + i / CH, chunk i % CH) by thread i % LOADERS, so a
// thread keeps its chunk and takes rows r0, r0 + RS, ...; RS being a multiple of 8, they share
// one swizzle, and its source and shared offsets are computed once. Where every row is inside
// [0, limit) (a uniform branch: all but the edge blocks) the copies take no check.
template <int ROWS, int FIRST, int STRIDE>
struct TileShare {
  static constexpr int RS = LOADERS / CH, N = (ROWS - FIRST + RS - 1) / RS;
  static_assert(LOADERS % CH == 0 && RS % 8 == 0, "a thread's rows share their chunk and swizzle");
  int r0, src0, dst0;

  __device__ __forceinline__ TileShare()
      : r0(FIRST + threadIdx.x / CH), src0(r0 * STRIDE + threadIdx.x % CH * 8),
        dst0(at<ROWS>(r0, threadIdx.x % CH)) {}

  __device__ __forceinline__ void load(char* tile, const ct_t* src_base, int first, int limit) const {
    const ct_t* from = src_base + static_cast<ct_i64>(first) * STRIDE + src0;
    char* to = tile + dst0;
    if (first + FIRST >= 0 && first + ROWS <= limit) {
#pragma unroll
      for (int j = 0; j < N; ++j)
        if ((ROWS - FIRST) % RS == 0 || r0 + j * RS < ROWS)
          gt_cp_async<16>(to + j * RS * 128, from + j * RS * STRIDE, true);
      return;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int r = r0 + j * RS;
      if ((ROWS - FIRST) % RS == 0 || r < ROWS) {
        const bool ok = first + r >= 0 && first + r < limit;
        gt_cp_async<16>(to + j * RS * 128, ok ? from + j * RS * STRIDE : src_base, ok);
      }
    }
  }
};

// K-major descriptor of the n64 piece ``piece`` of a tile of ROWS rows (from row ``row0``), k16
// step kk, from the descriptor ``tile`` of the tile's start: the start address field is linear
// in the address (shared addresses stay below its 2^18-byte range), so one add.
template <int ROWS>
__device__ __forceinline__ unsigned long long kmajor(unsigned long long tile, int row0, int piece, int kk) {
  return tile + (((kk / 4) * ROWS * 128 + (row0 + 64 * piece) * 128 + (kk % 4) * 32) >> 4);
}

// The register skew of s's n64 piece N (commit group N of the block, waited for here), each
// warp with its own shift as static register indices. The switch is on a value ptxas knows is
// warp-uniform (the kernel's ``w``): on threadIdx.x / 32 it compiled every shuffle of the skew
// as a possibly divergent collective (WARPSYNC ... ENDCOLLECTIVE, with register copies around
// it), about 540 instructions per warp and block at BN 128 against 209 so.
template <int N>
__device__ __forceinline__ void skew_piece(float (&sf)[BN / 2], const float (&bf)[32 * NBAND],
                                           float (&band)[NBAND][32], float (&s)[BN / 64][32], int w,
                                           int lane) {
  wg_wait<BN / 64 - 1 - N>();
#pragma unroll
  for (int n = 0; n <= N + 1; ++n) wg_keep(band[n]);
  wg_keep(s[N]);
  constexpr int T0 = 8 * N, T1 = 8 * N + 8;
  switch (w) {
    case 0: attn_skew_add<BN / 8, 8 * NBAND, 7, 6, false, T0, T1>(sf, bf, lane); break;
    case 1: attn_skew_add<BN / 8, 8 * NBAND, 5, 4, false, T0, T1>(sf, bf, lane); break;
    case 2: attn_skew_add<BN / 8, 8 * NBAND, 3, 2, false, T0, T1>(sf, bf, lane); break;
    default: attn_skew_add<BN / 8, 8 * NBAND, 1, 0, false, T0, T1>(sf, bf, lane); break;
  }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
relpos_attn_wgmma(const ct_t* __restrict__ qg, const ct_t* __restrict__ kg,
                  const ct_t* __restrict__ vg, const ct_t* __restrict__ pg,
                  const ct_t* __restrict__ pos_u, const ct_t* __restrict__ pos_v,
                  const int* __restrict__ lengths, ct_t* __restrict__ out, int T) {
  extern __shared__ __align__(16) char smem_raw[];
  char* smem = smem_raw + ((1024 - (gt_smem(smem_raw) & 1023)) & 1023);  // the swizzle atom's alignment
  char* s_qu = smem + (STAGES - (Q_IN_STAGE ? 1 : 0)) * STAGE_BYTES;
  char* s_qv = s_qu + Q_BYTES;
  float* s_band = reinterpret_cast<float*>(smem + STAGES * STAGE_BYTES + (Q_IN_STAGE ? 0 : QS_BYTES));
  unsigned long long* full = reinterpret_cast<unsigned long long*>(reinterpret_cast<char*>(s_band) + BAND_BYTES);
  unsigned long long* empty = full + STAGES;
  // the warp's index as lane 0's: a value ptxas knows is warp-uniform, so that what derives from
  // it (the band's descriptors, the skew's switch) stays in uniform registers and uniform code
  const int lane = threadIdx.x % 32, warp = __shfl_sync(0xffffffffu, threadIdx.x / 32, 0);
  const bool producer = WS && warp < 4;
  const int cw = WS ? max(warp - 4, 0) : warp;   // the warp's index among the computing warps
  const int wg = WG == 1 ? 0 : cw / 4, w = cw % 4;
  const int g = lane / 4, t = lane % 4;
  const AttnCta<BM, HEADS, HEAD_DIM, PACKED, REL> cta(qg, kg, vg, pg, lengths, T);
  const int b = cta.b, h = cta.h, i0 = cta.i0, length = cta.length;
  const ct_t *kh = cta.k, *vh = cta.v, *ph = cta.p;
  int lo;
  const int n_blocks = attn_key_blocks<BN, CHUNK, LEFT>(i0, BM, length, lo);

  if constexpr (WS) {
    if (threadIdx.x == 0) {
      for (int st = 0; st < STAGES; ++st) {
        mb_init(full + st, LOADERS);
        mb_init(empty + st, 128 * WG);
      }
    }
    __syncthreads();
  }
  const TileShare<BN, 0, QS> kv_share;
  const TileShare<PW, 0, HD> p_share;
  const TileShare<PW, 64, HD> p_tail;   // with CARRY, rows [0, 64) after the first block are a piece carried over
  auto issue = [&](int block) {
    if (block < n_blocks) {
      char* st = smem + (block % STAGES) * STAGE_BYTES;
      const int j0 = lo + block * BN;
      kv_share.load(st, kh, j0, T);
      kv_share.load(st + K_BYTES, vh, j0, T);
      if constexpr (REL == 1) {
        if (CARRY && block) p_tail.load(st + 2 * K_BYTES, ph, T - i0 - BM + j0, 2 * T - 1);
        else p_share.load(st + 2 * K_BYTES, ph, T - i0 - BM + j0, 2 * T - 1);
      }
      if constexpr (REL == 2) p_share.load(st + 2 * K_BYTES, ph, j0, T);
      if constexpr (WS) mb_arrive_copies(full + block % STAGES);
    }
    if constexpr (!WS) gt_cp_commit();
  };
  if (!WS || producer) {
#pragma unroll
    for (int s = 0; s < STAGES - 1 + WS; ++s) issue(s);
  }

  // q + u and q + v, rounded to the activation dtype, staged once, then kept as A fragments
  // (read by descriptor with WS)
  attn_stage_q<BM, HEAD_DIM, THREADS, REL>(s_qu, s_qv, cta.q, QS, i0, T,
                                           REL ? pos_u + h * HEAD_DIM : pos_u,
                                           REL ? pos_v + h * HEAD_DIM : pos_v,
                                           [](int r, int c) { return at<BM>(r, c); });
  if constexpr (WS) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");   // stores -> wgmma reads
  __syncthreads();
  unsigned a_u[WS ? 1 : KS][4], a_v[WS ? 1 : KS][4];
  if constexpr (!WS) {
    const int arow = 64 * wg + 16 * w + lane % 8 + 8 * ((lane / 8) % 2);
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      gt_ldmatrix_x4(a_u[ks], s_qu + at<BM>(arow, 2 * ks + lane / 16));
      if (REL) gt_ldmatrix_x4(a_v[ks], s_qv + at<BM>(arow, 2 * ks + lane / 16));
    }
    if constexpr (Q_IN_STAGE) __syncthreads();   // read before the loop's first issue() refills the stage
  }
  if constexpr (WS) {
    if (producer) {
      wg_regs_dec<24>();
      for (int block = STAGES; block < n_blocks; ++block) {
        mb_wait(empty + block % STAGES, (block / STAGES - 1) & 1);
        issue(block);
      }
      gt_cp_wait<0>();   // every copy has landed before the thread exits
      return;
    }
    wg_regs_inc<240>();
  }
  const unsigned long long desc_qu = wg_desc(gt_smem(s_qu)), desc_qv = wg_desc(gt_smem(s_qv));
  // d (+)= (q + u) . b, (q + v) . b for k16 step kk: A from registers, or with WS by descriptor
  auto mma_u = [&](float (&d)[32], int kk, unsigned long long bdesc, int acc) {
    if constexpr (WS) wg_mma_ss(d, kmajor<BM>(desc_qu, 64 * wg, 0, kk), bdesc, acc);
    else wg_mma(d, a_u[kk], bdesc, acc);
  };
  auto mma_v = [&](float (&d)[32], int kk, unsigned long long bdesc, int acc) {
    if constexpr (WS) wg_mma_ss(d, kmajor<BM>(desc_qv, 64 * wg, 0, kk), bdesc, acc);
    else wg_mma(d, a_v[kk], bdesc, acc);
  };

  const int i_lane = i0 + 64 * wg + 16 * w + g;   // this lane's query rows: i_lane, i_lane + 8
  int row_lo[2], row_hi[2];
  attn_row_windows<CHUNK, LEFT>(row_lo, row_hi, i_lane, length);
  const float qk_scale = 1.4426950408889634f * rsqrtf(static_cast<float>(HEAD_DIM));   // softmax in base 2
  float m_i[2] = {-1.0e30f, -1.0e30f}, l_i[2] = {0.0f, 0.0f};
  float o[HEAD_DIM / 64][32];
#pragma unroll
  for (int d = 0; d < HEAD_DIM / 64; ++d)
#pragma unroll
    for (int e = 0; e < 32; ++e) o[d][e] = 0.0f;
  float s[BN / 64][32] = {}, band[NBAND][32] = {};   // overwritten by each block's first k16 step
  float* band_w = s_band + warp * 16 * SB;
  const int tile0 = 6 - 2 * w;   // the first band n8 tile warp w needs (column 48 - 16 w)

  const unsigned long long desc_k0 = wg_desc(gt_smem(smem)), desc_v0 = wg_desc_mn64(gt_smem(smem) + K_BYTES);
  static_assert(STAGE_BYTES % 16 == 0 && K_BYTES % 16 == 0, "descriptors move in 16-byte units");
  if constexpr (PP) {
    if (wg == 1 && n_blocks > 0) named_arrive(2, 256);   // warpgroup 0 issues first
  }
  for (int block = 0; block < n_blocks; ++block) {
    if constexpr (WS) {
      mb_wait(full + block % STAGES, (block / STAGES) & 1);
    } else {
      issue(block + STAGES - 1);
      gt_cp_wait<STAGES - 1>();
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");   // cp.async writes -> wgmma reads
    if constexpr (!WS) __syncthreads();
    // the stage's descriptors: K and p K-major, V MN-major (stage 0's, moved by an add)
    const int stage16 = (block % STAGES) * (STAGE_BYTES >> 4);
    const unsigned long long dk = desc_k0 + stage16, dp = dk + (2 * K_BYTES >> 4), dv = desc_v0 + stage16;
    const int j0 = lo + block * BN;

    if constexpr (REL == 1 && CARRY) {   // windows step by BN: the last piece is the next block's first
      if (block > 0) {
#pragma unroll
        for (int e = 0; e < 32; ++e) band[0][e] = band[NBAND - 1][e];
      }
    }
    if constexpr (PP) named_sync(2 + wg, 256);   // this warpgroup's turn to issue
    wg_fence();
    float (&sf)[BN / 2] = reinterpret_cast<float (&)[BN / 2]>(s);
    if constexpr (REL == 1 && SKEW) {
      // one commit group per n64 piece n of s with the band pieces its skew needs (warp w's
      // shift reaches at most 8 tiles past its own: pieces <= n + 1), so the skew of a piece
      // runs while the tensor cores compute the next
#pragma unroll
      for (int n = 0; n < BN / 64; ++n) {
#pragma unroll
        for (int kk = 0; kk < KS; ++kk)
#pragma unroll
          for (int nb = n == 0 ? 0 : n + 1; nb <= n + 1; ++nb)
            if (!CARRY || nb > 0 || block == 0)
              mma_v(band[nb], kk, kmajor<PW>(dp, 64 * (WG - 1 - wg), nb, kk), kk);
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) mma_u(s[n], kk, kmajor<BN>(dk, 0, n, kk), kk);
        wg_commit();
      }
    } else {
      if constexpr (REL == 1) {   // the band first: its skew overlaps the tensor cores' q . k^T
#pragma unroll
        for (int kk = 0; kk < KS; ++kk)
#pragma unroll
          for (int n = 0; n < NBAND; ++n)
            if (!CARRY || n > 0 || block == 0)
              mma_v(band[n], kk, kmajor<PW>(dp, 64 * (WG - 1 - wg), n, kk), kk);
        wg_commit();
      }
#pragma unroll
      for (int kk = 0; kk < KS; ++kk)
#pragma unroll
        for (int n = 0; n < BN / 64; ++n) mma_u(s[n], kk, kmajor<BN>(dk, 0, n, kk), kk);
      if constexpr (REL == 2) {
#pragma unroll
        for (int kk = 0; kk < KS; ++kk)
#pragma unroll
          for (int n = 0; n < BN / 64; ++n) mma_v(s[n], kk, kmajor<PW>(dp, 0, n, kk), 1);
      }
      wg_commit();
    }
    if constexpr (PP) {   // the other warpgroup's turn (none after warpgroup 1's last block)
      if (wg == 0 || block + 1 < n_blocks) named_arrive(2 + (1 - wg), 256);
    }

    if constexpr (REL == 1 && SKEW) {
      const float (&bf)[32 * NBAND] = reinterpret_cast<const float (&)[32 * NBAND]>(band);
      skew_piece<0>(sf, bf, band, s, w, lane);
      if constexpr (BN > 64) skew_piece<1>(sf, bf, band, s, w, lane);
    } else if constexpr (REL == 1) {
      wg_wait<1>();   // the band is done; q . k^T may still run
#pragma unroll
      for (int n = 0; n < NBAND; ++n) wg_keep(band[n]);
#pragma unroll
      for (int i = 0; i < (BN + 64) / 8; ++i) {   // band n8 tile i: columns 8 i .. 8 i + 7
        const int c = 8 * (i - tile0) + 2 * t;
        if (i >= tile0 && i < tile0 + SB0 / 8) {   // warp-uniform
          const float* d = band[i / 8] + 4 * (i % 8);
          *reinterpret_cast<float2*>(band_w + g * SB + c) = make_float2(d[0], d[1]);
          *reinterpret_cast<float2*>(band_w + (g + 8) * SB + c) = make_float2(d[2], d[3]);
        }
      }
      __syncwarp();
      wg_wait<0>();
#pragma unroll
      for (int n = 0; n < BN / 64; ++n) wg_keep(s[n]);
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * nt + 2 * t + e;
          sf[4 * nt + e] += band_w[g * SB + c + 15 - g];
          sf[4 * nt + 2 + e] += band_w[(g + 8) * SB + c + 7 - g];
        }
      __syncwarp();   // every lane has read the band before the next block's is written
    } else {
      wg_wait<0>();
#pragma unroll
      for (int n = 0; n < BN / 64; ++n) wg_keep(s[n]);
    }

    float (&of)[HEAD_DIM / 2] = reinterpret_cast<float (&)[HEAD_DIM / 2]>(o);
    attn_softmax_block<BN / 8, HEAD_DIM / 8>(sf, m_i, l_i, of, j0, row_lo, row_hi,
                                             CHUNK > 0 || j0 + BN > length, qk_scale, t);
    // o += P . V: P (the scores' C fragments, packed) is the register A operand, V the B operand
    // read MN-major from its [key][dim] tile: k16 step kk is keys 16 kk.., 2048 bytes further
    unsigned pa[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) attn_p_frag(pa[kk], sf, kk);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
      for (int d = 0; d < HEAD_DIM / 64; ++d)
        wg_mma<1>(o[d], pa[kk], dv + ((d * BN * 128 + kk * 2048) >> 4));
    wg_commit();
    wg_wait<0>();
    wg_keep(pa);
#pragma unroll
    for (int d = 0; d < HEAD_DIM / 64; ++d) wg_keep(o[d]);
    if constexpr (WS) mb_arrive(empty + block % STAGES);   // the producer may refill the stage
    else __syncthreads();   // this stage is refilled by a later issue()
  }
  if constexpr (!WS) gt_cp_wait<0>();

  attn_store_rows<HEAD_DIM / 8>(out, static_cast<ct_i64>(b) * T * HD + h * HEAD_DIM, HD,
                                reinterpret_cast<const float (&)[HEAD_DIM / 2]>(o), l_i, i_lane, T,
                                length, t);
}
