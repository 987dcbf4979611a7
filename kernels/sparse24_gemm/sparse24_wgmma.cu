// 2:4 structured-sparse GEMM on Hopper's sparse warpgroup MMA (wgmma.mma_async.sp, sm_90a), for
// large M: y[M, N] = x[M, K] · W^T (+ bias), the formats of sparse24.cu (packing.py), on the
// tiles of int4_gemm/wgmma_tiles.cuh (CTA, pipeline, MT, OVERLAP, epilogue). The weight is the
// sparse A operand: a stage's kept values (BN rows x 64 bytes: 32 of each row's 64 k) go into
// registers by ldmatrix, one x4 per k32 step and warp (its 16 rows: the fragment of mma.sp
// m16n8k32, which is also the per-warp layout of wgmma's register A), and each lane's metadata
// word serves both k32 steps (selector 0, then 1), as in sparse24.cu; x, the B operand, is read
// by the tensor cores from shared memory, k32 step h at 64 h bytes into its 128-byte rows.
// Stage: x (BT rows x 128 bytes, 128-byte swizzle), values (BN x 64 bytes, rows swizzled as
// gt_swz<64> so that an ldmatrix phase's eight rows fall in distinct banks), metadata (BN / 2
// row pairs x 16 bytes). K a multiple of 8 (x rows 16-byte aligned). RBLK 2: each warpgroup
// takes two m64 row blocks (BN = 128 WG), so each x tile serves twice the weight rows.
// Macros: WG, BT, MT, STAGES, OVERLAP, BIAS, SMEM, RBLK (wgmma_tiles.cuh), MIN_CTAS.

constexpr int BN = 64 * WG * RBLK;
constexpr int V_BYTES = BN * 64, E_BYTES = BN / 2 * 16;
typedef WgTiles<WG, BT, MT, STAGES, OVERLAP, BIAS, V_BYTES + E_BYTES, SMEM, RBLK> T;
constexpr int INS = T::INS, NI = T::NI;

// a stage's A operand: per row block, the compressed values of its two k32 steps and the
// metadata word
struct SpSet {
  unsigned a[RBLK * 2][4];
  unsigned e[RBLK];
  __device__ __forceinline__ void keep() {
    wg_keep(a);
#pragma unroll
    for (int rb = 0; rb < RBLK; ++rb) asm volatile("" : "+r"(e[rb])::"memory");
  }
};

extern "C" __global__ void __launch_bounds__(T::THREADS, MIN_CTAS)
sparse24_wgmma(const ct_t* __restrict__ x, const ct_t* __restrict__ values,
               const int* __restrict__ meta, const ct_t* __restrict__ bias, ct_t* __restrict__ y,
               int M, int N, int K) {
  extern __shared__ __align__(16) char smem_raw[];
  char* smem = wg_atom_aligned(smem_raw);
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.y * BN;
  const int np = (N + 15) / 16 * 16, kp = (K + 63) / 64 * 64;  // values rows are kp bytes, meta rows kp / 4

  float acc[RBLK][NI][INS / 2];
  const unsigned ws_at = gt_smem(smem + STAGES * T::X_BYTES);
  const T::Share<BN, 64, 64> share_v(reinterpret_cast<const char*>(values) + (ct_i64)n0 * kp, kp, ws_at);
  const T::Share<BN / 2, 16, 0> share_e(reinterpret_cast<const char*>(meta) + (ct_i64)(n0 / 2) * (kp / 4), kp / 4,
                                       ws_at + V_BYTES);
  auto load_w = [&](unsigned at, int k0) {
    share_v.load(at, k0, np - n0, kp - k0, values);
    share_e.load(at, k0 / 4, np / 2 - n0 / 2, (kp - k0) / 4, meta);
  };
  // per row block, this lane's row of the ldmatrix x4 (rows 0-7 / 8-15 of the warp's 16, values
  // 0-7 / 8-15 of the k32 step), and its metadata word (row pair wrow / 2 + g, word t)
  auto fill = [&](const char* st, SpSet& set) {
#pragma unroll
    for (int rb = 0; rb < RBLK; ++rb) {
      const int r = T::wrow(rb) + (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
      for (int h = 0; h < 2; ++h)
        gt_ldmatrix_x4(set.a[2 * rb + h], st + r * 64 + gt_swz<64>(r, 2 * h + (lane >> 4)) * 16);
      const unsigned e = *reinterpret_cast<const unsigned*>(st + V_BYTES + (T::wrow(rb) / 2 + g) * 16 + t * 4);
      // Zero-filled words (past the padded weight, where values and x are zero too) would be the
      // invalid pattern 0b0000; a packed word never is 0 (each nibble is two distinct indices).
      set.e[rb] = e ? e : 0x44444444u;
    }
  };
  auto issue = [&](const SpSet& set, unsigned long long xd, bool first) {
#pragma unroll
    for (int rb = 0; rb < RBLK; ++rb)
#pragma unroll
      for (int j = 0; j < NI; ++j) {
        wg_mma_sp<0>(acc[rb][j], set.a[2 * rb], xd + ((j * INS * 128) >> 4), set.e[rb], !first);
        wg_mma_sp<1>(acc[rb][j], set.a[2 * rb + 1], xd + ((j * INS * 128 + 64) >> 4), set.e[rb]);
      }
  };
  T::gemm<SpSet>(x, bias, y, M, N, K, smem, acc, load_w, fill, issue);
}
