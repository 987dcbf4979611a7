// 2:4 structured-sparse GEMM on Hopper's sparse warpgroup MMA (sm_90a) for a small K (<= 256)
// and large M on the tiles of int4_gemm/wgmma_kres.cuh (the CTA's weight slab resident in
// registers, token tiles streaming past it): y[M, N] = x[M, K] · W^T (+ bias), the formats of
// sparse24.cu (packing.py). The slab -- 128 rows x K: the kept values (VP bytes a row) and the
// metadata -- goes once into registers: per k32 step the warp's 16 rows of values by one
// ldmatrix x4 (4 registers), per 64 of K one metadata word for two steps (selectors 0 and 1), as
// in sparse24_wgmma.cu; 36 registers at K = 256.
// Macros: BT (64/128), MT, BUFS (2/3), KC (K, a multiple of 8), VP (K rounded up to 64: the
// values' row bytes), KP (wgmma_kres.cuh), BIAS, SMEM.

constexpr int BN = 128;
constexpr int KS = (KC + 31) / 32;   // k32 steps
constexpr int KW = (KC + 63) / 64;   // metadata words per lane
typedef KresTiles<BT, MT, BUFS, KC, KP, BIAS, BN * VP + BN / 2 * VP / 4, SMEM> T;

// the slab's A operand: all of K
struct SpSlab {
  unsigned a[KS][4];
  unsigned e[KW];
  __device__ __forceinline__ void keep() {
    wg_keep(a);
#pragma unroll
    for (int i = 0; i < KW; ++i) asm volatile("" : "+r"(e[i])::"memory");
  }
};

extern "C" __global__ void __launch_bounds__(T::THREADS, 1)
sparse24_wgmma_kres(const ct_t* __restrict__ x, const ct_t* __restrict__ values,
                    const int* __restrict__ meta, const ct_t* __restrict__ bias, ct_t* __restrict__ y,
                    int M, int N, int K) {
  extern __shared__ __align__(16) char smem_raw[];
  char* smem = wg_atom_aligned(smem_raw);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.y * BN;
  const int np = (N + 15) / 16 * 16;
  auto load_slab = [&](char* shared) {
    auto flat = [](int, int q) { return q; };
    gt_load_tile<BN, VP, 16, T::THREADS>(shared, reinterpret_cast<const char*>(values) + (ct_i64)n0 * VP, VP,
                                         np - n0, VP, flat);
    gt_load_tile<BN / 2, VP / 4, 16, T::THREADS>(shared + BN * VP,
                                                 reinterpret_cast<const char*>(meta) + (ct_i64)(n0 / 2) * (VP / 4),
                                                 VP / 4, np / 2 - n0 / 2, VP / 4, flat);
  };
  auto fill = [&](const char* shared, SpSlab& slab) {
    // lane's rows of each ldmatrix x4: rows 0-7 / 8-15 of the warp's 16, values 0-7 / 8-15 of a step
    const char* row = shared + (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * VP + (lane >> 4) * 16;
#pragma unroll
    for (int s = 0; s < KS; ++s) gt_ldmatrix_x4(slab.a[s], row + s * 32);
    const unsigned* words = reinterpret_cast<const unsigned*>(shared + BN * VP + (warp * 8 + g) * (VP / 4)) + t;
#pragma unroll
    for (int c = 0; c < KW; ++c) {
      // a zero-filled word (past the padded weight) would be the invalid pattern 0b0000
      const unsigned e = words[4 * c];
      slab.e[c] = e ? e : 0x44444444u;
    }
  };
  // all of K into acc (overwritten at step 0); k32 step s at panel s / 2, 64 (s % 2) bytes in
  auto mma = [&](const SpSlab& slab, float (&acc)[BT / 2], unsigned long long xd) {
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const unsigned long long d = xd + (((s / 2) * T::PANEL + (s % 2) * 64) >> 4);
      if (s % 2 == 0) wg_mma_sp<0>(acc, slab.a[s], d, slab.e[s / 2], s > 0);
      else wg_mma_sp<1>(acc, slab.a[s], d, slab.e[s / 2], 1);
    }
  };
  T::run<SpSlab>(x, bias, y, M, N, smem, load_slab, fill, mma);
}
