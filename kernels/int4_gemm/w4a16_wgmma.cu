// W4A16 GEMM on Hopper's warpgroup MMA (sm_90a), for large M: y[M, N] = x[M, K] · W^T (+ bias),
// same formats as w4a16.cu (packing.py), on the tiles of wgmma_tiles.cuh (CTA, pipeline, MT,
// OVERLAP, epilogue). The weight is wgmma's A operand, dequantised into registers (dequant.cuh:
// one packed word is one lane's A fragment of one k16 step, in the layout each warp of the
// warpgroup holds its 16 rows of m64 in); each stage is dequantised (16 registers per thread)
// and issued as 4 BT / N wgmma.
// Macros: WG, BT, MT, STAGES, OVERLAP, BIAS, SMEM (wgmma_tiles.cuh), GROUP (32/64/128), ASYM, MIN_CTAS (__launch_bounds__: CTAs
// per SM the registers must leave room for).

constexpr int BN = 64 * WG;
constexpr int SG = 64 >= GROUP ? 64 / GROUP : 1;  // scale rows per stage
constexpr int A_BYTES = BN / 2 * 64, S_BYTES = SG * BN * 2, Z_BYTES = ASYM ? SG * BN : 0;
typedef WgTiles<WG, BT, MT, STAGES, OVERLAP, BIAS, A_BYTES + S_BYTES + Z_BYTES, SMEM> T;
constexpr int INS = T::INS, NI = T::NI;

// a stage's A fragments: 4 k16 steps
struct W4Set {
  unsigned a[4][4];
  __device__ __forceinline__ void keep() { wg_keep(a); }
};

extern "C" __global__ void __launch_bounds__(T::THREADS, MIN_CTAS)
w4a16_wgmma(const ct_t* __restrict__ x, const int* __restrict__ qweight,
            const ct_t* __restrict__ scales, const unsigned char* __restrict__ zeros,
            const ct_t* __restrict__ bias, ct_t* __restrict__ y, int M, int N, int K) {
  extern __shared__ __align__(16) char smem_raw[];
  char* smem = wg_atom_aligned(smem_raw);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.y * BN;
  const int np = (N + 15) / 16 * 16, kp = (K + 63) / 64 * 64, groups = K / GROUP;

  float acc[1][NI][INS / 2];
  const unsigned ws_at = gt_smem(smem + STAGES * T::X_BYTES);
  const T::Share<BN / 2, 64, 0> share_q(reinterpret_cast<const char*>(qweight) + (ct_i64)(n0 / 2) * kp, kp, ws_at);
  const T::Share<SG, BN * 2, 0> share_s(reinterpret_cast<const char*>(scales + n0), 2 * np, ws_at + A_BYTES);
  const T::Share<SG, BN, 0> share_z(reinterpret_cast<const char*>(zeros + n0), np, ws_at + A_BYTES + S_BYTES);
  auto load_w = [&](unsigned at, int k0) {
    const int g0 = k0 / GROUP;
    share_q.load(at, k0, np / 2 - n0 / 2, kp - k0, qweight);
    share_s.load(at, 2 * (ct_i64)g0 * np, groups - g0, 2 * (np - n0), scales);
    if constexpr (ASYM) share_z.load(at, (ct_i64)g0 * np, groups - g0, np - n0, zeros);
  };
  auto fill = [&](const char* st, W4Set& set) {
    const ct_t* ss = reinterpret_cast<const ct_t*>(st + A_BYTES);
    const unsigned char* sz = reinterpret_cast<const unsigned char*>(st + A_BYTES + S_BYTES);
    // this warp's rows 16 warp + g and + 8 are row pair 8 warp + g; lane t's four words
    const uint4 words = *reinterpret_cast<const uint4*>(st + (warp * 8 + g) * 64 + t * 16);
    const unsigned w[4] = {words.x, words.y, words.z, words.w};
    W4Group q = w4_group<BN, ASYM>(ss, sz, 0, warp * 16 + g);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (GROUP == 32 && kk == 2) q = w4_group<BN, ASYM>(ss, sz, 1, warp * 16 + g);  // second 32 of K
      w4_dequant(set.a[kk], w[kk], q);
    }
  };
  auto issue = [&](const W4Set& set, unsigned long long xd, bool first) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int j = 0; j < NI; ++j) wg_mma(acc[0][j], set.a[kk], xd + ((j * INS * 128 + kk * 32) >> 4), kk > 0 || !first);
  };
  T::gemm<W4Set>(x, bias, y, M, N, K, smem, acc, load_w, fill, issue);
}
