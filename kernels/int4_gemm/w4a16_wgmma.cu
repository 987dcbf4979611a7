// W4A16 GEMM on Hopper's warpgroup MMA (sm_90a), for large M: y[M, N] = x[M, K] · W^T (+ bias),
// same formats as w4a16.cu (packing.py). The weight is wgmma's A operand, dequantised into
// registers (dequant.cuh: one packed word is one lane's A fragment of one k16 step, in the
// layout each warp of the warpgroup holds its 16 rows of m64 in); the tokens are its B operand,
// read by the tensor cores straight from shared memory (wgmma.cuh: x rows are K-major, 64
// halves = 128 bytes per stage, in the 128-byte swizzle), so a stage's x tile is read once per
// warpgroup, not once per warp as with mma.sync + ldmatrix. The accumulator is y^T.
//
// CTA: WG warpgroups, each 64 weight rows (BN = 64 WG) x BT tokens (wgmma N = 128, or 64 when
// BT = 64); BK = 64; the cp.async pipeline of gemm_tiles.cuh (gt_pipeline, its stage made
// visible to the async proxy) with STAGES stages; each stage is dequantised (16 registers per
// thread), issued as 4 BT / N wgmma, and waited for before its slot is refilled. Epilogue: bias
// in fp32, the tile transposed through shared memory, 16-byte stores.
// MT token tiles per CTA (MT 1: one): the CTA runs the pipeline over its MT tiles' k-tiles in
// one sequence, so the loads of tile i + 1 are in flight while tile i's epilogue runs, and a
// small K (the Conformer FFN's 256: four stages) is no longer mostly pipeline fill; with
// MT > 1 the epilogue has its own shared memory (the stages are live), else it reuses theirs.
// OVERLAP 1: a stage's wgmma are left running while the next stage is waited for, loaded and
// dequantised (wgmma.wait_group 1, loads one stage less ahead); consecutive stages dequantise
// into two register sets in turn, since the tensor cores read a stage's A registers until its
// wait (a copy would not keep them: the first version did that and gave wrong results on an H100).
// Macros: WG (1/2), BT (64/128/256), MT (1/2/4/8), STAGES, OVERLAP (0/1), GROUP (32/64/128), ASYM, BIAS, SMEM,
// MIN_CTAS (__launch_bounds__: CTAs per SM the registers must leave room for).

constexpr int BN = 64 * WG, BK = 64, THREADS = 128 * WG;
constexpr int INS = BT >= 128 ? 128 : 64;  // tokens per wgmma
constexpr int NI = BT / INS;

#define KP4(K) ((((K) + 63) / 64) * 64)  // qweight row bytes
#define SG (BK >= GROUP ? BK / GROUP : 1)
#define X_BYTES (BT * 128)
#define A_BYTES (BN / 2 * 64)
#define S_BYTES (SG * BN * 2)
#define Z_BYTES (ASYM ? SG * BN : 0)
#define W_BYTES (A_BYTES + S_BYTES + Z_BYTES)
#define EPI_LD (BN + 8)  // halves; the fragment writes then fall in distinct banks
#define EPI_BYTES (BT * EPI_LD * 2)

static_assert(BT % INS == 0 && (WG == 1 || WG == 2), "tile");
#define RING_BYTES (STAGES * (X_BYTES + W_BYTES))
#define EPI_AT (MT > 1 ? RING_BYTES : 0)  // the epilogue tile's offset
static_assert((MT > 1 ? RING_BYTES + EPI_BYTES : RING_BYTES > EPI_BYTES ? RING_BYTES : EPI_BYTES) + 1024 <= SMEM,
              "tiles exceed SMEM");

extern "C" __global__ void __launch_bounds__(THREADS, MIN_CTAS)
w4a16_wgmma(const ct_t* __restrict__ x, const int* __restrict__ qweight,
            const ct_t* __restrict__ scales, const unsigned char* __restrict__ zeros,
            const ct_t* __restrict__ bias, ct_t* __restrict__ y, int M, int N, int K) {
  extern __shared__ __align__(16) char smem_raw[];
  char* smem = smem_raw + ((1024 - (gt_smem(smem_raw) & 1023)) & 1023);  // the swizzle atom's alignment
  char* xs = smem;
  char* ws = smem + STAGES * X_BYTES;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int m_first = blockIdx.x * (BT * MT), n0 = blockIdx.y * BN;
  const int np = (N + 15) / 16 * 16, kp = KP4(K), groups = K / GROUP, KT = (K + BK - 1) / BK;
  const int tiles = min(MT, (M - m_first + BT - 1) / BT);  // this CTA's token tiles

  float acc[NI][INS / 2];
#pragma unroll
  for (int j = 0; j < NI; ++j)
#pragma unroll
    for (int e = 0; e < INS / 2; ++e) acc[j][e] = 0.f;

  // A fragments, two sets: with OVERLAP the stage in the tensor cores keeps its set while the
  // next stage dequantises into the other (kept live by wg_keep until its MMAs are waited for)
  unsigned a0[4][4] = {}, a1[4][4] = {};
  int step = 0;
  auto flat = [](int, int q) { return q; };
  auto load_w = [&](int slot, int kt) {
    char* st = ws + slot * W_BYTES;
    const int k0 = kt * BK, g0 = k0 / GROUP;
    gt_load_tile<BN / 2, 64, 16, THREADS>(st, reinterpret_cast<const char*>(qweight) + (ct_i64)(n0 / 2) * kp + k0,
                                          kp, np / 2 - n0 / 2, kp - k0, flat);
    gt_load_tile<SG, BN * 2, 16, THREADS>(st + A_BYTES, reinterpret_cast<const char*>(scales + (ct_i64)g0 * np + n0),
                                          2 * (ct_i64)np, groups - g0, 2 * (np - n0), flat);
#if ASYM
    gt_load_tile<SG, BN, 16, THREADS>(st + A_BYTES + S_BYTES, reinterpret_cast<const char*>(zeros + (ct_i64)g0 * np + n0),
                                      np, groups - g0, np - n0, flat);
#endif
  };
  auto load_x = [&](int slot, int s) {   // step s: k-tile s % KT of token tile s / KT
    const int m0 = m_first + s / KT * BT, kt = s % KT;
    gt_load_tile<BT, 128, 16, THREADS>(xs + slot * X_BYTES,
                                       reinterpret_cast<const char*>(x + (ct_i64)m0 * K + kt * BK),
                                       2 * (ct_i64)K, M - m0, 2 * (K - kt * BK), gt_swz<128>);
  };

  auto stage = [&](int slot, unsigned (&a)[4][4], unsigned (&other)[4][4]) {
    const char* st = ws + slot * W_BYTES;
    const ct_t* ss = reinterpret_cast<const ct_t*>(st + A_BYTES);
    const unsigned char* sz = reinterpret_cast<const unsigned char*>(st + A_BYTES + S_BYTES);
    // this warp's rows 16 warp + g and + 8 are row pair 8 warp + g; lane t's four words
    const uint4 words = *reinterpret_cast<const uint4*>(st + (warp * 8 + g) * 64 + t * 16);
    const unsigned w[4] = {words.x, words.y, words.z, words.w};
    W4Group q = w4_group<BN, ASYM>(ss, sz, 0, warp * 16 + g);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (GROUP == 32 && kk == 2) q = w4_group<BN, ASYM>(ss, sz, 1, warp * 16 + g);  // second 32 of K
      w4_dequant(a[kk], w[kk], q);
    }
    const unsigned xb = gt_smem(xs + slot * X_BYTES);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int j = 0; j < NI; ++j) {
        const unsigned long long d = wg_desc(xb + j * INS * 128 + kk * 32);
        wg_mma(acc[j], a[kk], d);
      }
    wg_commit();
    if constexpr (OVERLAP) {   // this stage's MMAs run on while the next one is fetched and dequantised
      wg_wait<1>();            // the previous stage's are done: its slot and A registers are free
      wg_keep(other);
    } else {
      wg_wait<0>();            // the slot is refilled after the next barrier, and a[] is reused
      wg_keep(a);
    }
  };
  // bias, y^T transposed through shared memory, 16-byte stores of y[m0 .., n0 ..]; the caller
  // has waited for every MMA, and (MT 1) everyone is done reading the stages
  auto epilogue = [&](int m0) {
    ct_t* out = reinterpret_cast<ct_t*>(smem + EPI_AT);
    // y^T fragments: rows r and r + 8 (weights), tokens j INS + 8 i + 2 t and + 1
    const int r = warp * 16 + g;
    const float blo = BIAS && n0 + r < N ? ct_to_float(bias[n0 + r]) : 0.f;
    const float bhi = BIAS && n0 + r + 8 < N ? ct_to_float(bias[n0 + r + 8]) : 0.f;
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int i = 0; i < INS / 8; ++i) {
        const int m = j * INS + 8 * i + 2 * t;
        out[m * EPI_LD + r] = ct_from_float<ct_t>(acc[j][4 * i] + blo);
        out[(m + 1) * EPI_LD + r] = ct_from_float<ct_t>(acc[j][4 * i + 1] + blo);
        out[m * EPI_LD + r + 8] = ct_from_float<ct_t>(acc[j][4 * i + 2] + bhi);
        out[(m + 1) * EPI_LD + r + 8] = ct_from_float<ct_t>(acc[j][4 * i + 3] + bhi);
      }
    __syncthreads();
    for (int c = threadIdx.x; c < BT * BN / 8; c += THREADS) {
      const int m = c / (BN / 8), n = (c % (BN / 8)) * 8;
      const int gm = m0 + m, gn = n0 + n;
      if (gm >= M || gn >= N) continue;
      const ct_vec<ct_t, 8> v = *reinterpret_cast<const ct_vec<ct_t, 8>*>(out + m * EPI_LD + n);
      ct_t* dst = y + (ct_i64)gm * N + gn;
      if (N % 8 == 0) {  // then gn + 8 <= N, and the row start is 16-byte aligned
        *reinterpret_cast<ct_vec<ct_t, 8>*>(dst) = v;
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e)
          if (gn + e < N) dst[e] = v.v[e];
      }
    }
  };

  int kt_of_tile = 0, m_tile = m_first;
  auto compute = [&](int slot) {
    if (OVERLAP && (step++ & 1)) stage(slot, a1, a0);
    else stage(slot, a0, a1);
    if (++kt_of_tile < KT) return;
    wg_wait<0>();   // the tile's MMAs are done
    wg_keep(a0);
    if constexpr (OVERLAP) wg_keep(a1);
#pragma unroll
    for (int j = 0; j < NI; ++j) wg_keep(acc[j]);
    if constexpr (MT == 1) __syncthreads();  // every warpgroup's reads of the last stage are done
    epilogue(m_tile);
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int e = 0; e < INS / 2; ++e) acc[j][e] = 0.f;
    kt_of_tile = 0;
    m_tile += BT;
  };

  gt_pipeline<STAGES, true, OVERLAP>(tiles * KT, [&](int slot, int s) { load_w(slot, s % KT); },
                                     load_x, compute);
}
