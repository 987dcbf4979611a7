// W4A16 GEMM on Hopper's warpgroup MMA (sm_90a) for a small K (<= 256) and large M on the tiles
// of wgmma_kres.cuh (the CTA's weight slab resident in registers, token tiles streaming past it):
// y[M, N] = x[M, K] · W^T (+ bias), same formats as w4a16.cu (packing.py). The slab -- 128 rows
// x K packed words, scales and zeros -- is dequantised once into wgmma's A fragments (K / 16 k16
// steps x 4 registers = 64 at K = 256; about 200 registers per thread in all).
// Macros: BT (64/128), MT, BUFS (2/3), KC (K, a multiple of 32), QP (K rounded up to 64: the
// packed weight's row bytes), KP (wgmma_kres.cuh), GROUP, ASYM, BIAS, SMEM.

constexpr int BN = 128;
constexpr int KS = KC / 16;           // k16 steps
constexpr int GROUPS = KC / GROUP;
typedef KresTiles<BT, MT, BUFS, KC, KP, BIAS, BN / 2 * QP + GROUPS * BN * (2 + ASYM), SMEM> T;
static_assert(KC % 32 == 0, "K");

// the slab's A fragments: all of K
struct W4Slab {
  unsigned a[KS][4];
  __device__ __forceinline__ void keep() { wg_keep(a); }
};

extern "C" __global__ void __launch_bounds__(T::THREADS, 1)
w4a16_wgmma_kres(const ct_t* __restrict__ x, const int* __restrict__ qweight,
                 const ct_t* __restrict__ scales, const unsigned char* __restrict__ zeros,
                 const ct_t* __restrict__ bias, ct_t* __restrict__ y, int M, int N, int K) {
  extern __shared__ __align__(16) char smem_raw[];
  char* smem = wg_atom_aligned(smem_raw);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.y * BN;
  const int np = (N + 15) / 16 * 16;
  auto load_slab = [&](char* shared) {
    auto flat = [](int, int q) { return q; };
    gt_load_tile<BN / 2, QP, 16, T::THREADS>(shared, reinterpret_cast<const char*>(qweight) + (ct_i64)(n0 / 2) * QP,
                                             QP, np / 2 - n0 / 2, QP, flat);
    gt_load_tile<GROUPS, BN * 2, 16, T::THREADS>(shared + BN / 2 * QP, reinterpret_cast<const char*>(scales + n0),
                                                 2 * (ct_i64)np, GROUPS, 2 * (np - n0), flat);
    if constexpr (ASYM)
      gt_load_tile<GROUPS, BN, 16, T::THREADS>(shared + BN / 2 * QP + GROUPS * BN * 2,
                                               reinterpret_cast<const char*>(zeros + n0), np, GROUPS, np - n0, flat);
  };
  auto fill = [&](const char* shared, W4Slab& slab) {
    const char* row = shared + (warp * 8 + g) * QP + t * 16;   // row pair 8 warp + g, lane t's words
    const ct_t* ss = reinterpret_cast<const ct_t*>(shared + BN / 2 * QP);
    const unsigned char* sz = reinterpret_cast<const unsigned char*>(shared + BN / 2 * QP + GROUPS * BN * 2);
#pragma unroll
    for (int c = 0; c < QP / 64; ++c) {
      const uint4 words = *reinterpret_cast<const uint4*>(row + c * 64);
      const unsigned w[4] = {words.x, words.y, words.z, words.w};
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const int ks = 4 * c + kk;
        if (ks < KS) w4_dequant(slab.a[ks], w[kk], w4_group<BN, ASYM>(ss, sz, ks * 16 / GROUP, warp * 16 + g));
      }
    }
  };
  // all of K into acc (overwritten: scale-d 0 at step 0); k16 step ks at panel ks / 4
  auto mma = [&](const W4Slab& slab, float (&acc)[BT / 2], unsigned long long xd) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) wg_mma(acc, slab.a[ks], xd + (((ks / 4) * T::PANEL + (ks % 4) * 32) >> 4), ks > 0);
  };
  T::run<W4Slab>(x, bias, y, M, N, smem, load_slab, fill, mma);
}
