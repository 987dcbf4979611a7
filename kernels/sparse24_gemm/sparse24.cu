// 2:4 structured-sparse GEMM on the sparse tensor cores (mma.sp.sync m16n8k32):
//   y[M, N] = x[M, K] · W^T (+ bias), W [N, K] with at most 2 non-zeros in every 4 along K.
// Tiles, pipeline and epilogue: ../int4_gemm/gemm_tiles.cuh. Formats (packing.py), both padded to
// whole 16-row tiles and 64-wide K chunks:
//   values [cdiv(N, 16) * 16, cdiv(K, 64) * 32]: the two kept values of each group of 4, in K order;
//   meta int32 [cdiv(N, 16) * 8, cdiv(K, 64) * 4]: row R = 8 (n / 16) + n % 8, word k / 16 holds the
//     2-bit positions (first value in the low bits) of the four groups of w[n, k..k+15] in bits
//     0..15 and of w[n + 8, k..k+15] in bits 16..31 -- the metadata register of the PTX ISA's
//     "Sparse matrix storage" for m16n8k32 f16/bf16. Lanes 4g, 4g+1 hold it for sparsity selector
//     0, lanes 4g+2, 4g+3 for selector 1, so one word per lane feeds two consecutive k32 steps.
// Macros: WN WM WARPS_N WARPS_M WARPS_K STAGES SPLIT (gemm_tiles.cuh), XVEC (bytes per x copy: 16, or
// 8 when K % 8 != 0), BIAS, SMEM (dynamic shared bytes).

typedef GemmTiles<WN, WM, WARPS_N, WARPS_M, WARPS_K, STAGES, SPLIT> T;
constexpr int BN = T::BN, BM = T::BM, BK = T::BK;

#define V_BYTES (BN * BK)          // BN rows of BK / 2 values
#define E_BYTES (BN / 2 * BK / 4)  // BN / 2 row pairs of BK / 16 words
#define X_BYTES (BM * BK * 2)
#define STAGE_BYTES (V_BYTES + E_BYTES + X_BYTES)

static_assert(STAGES * STAGE_BYTES <= SMEM && T::EPILOGUE_BYTES <= SMEM, "tiles exceed SMEM");

template <int SEL>
__device__ __forceinline__ void mma_sp(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[4],
                                       unsigned e) {
  asm volatile("mma.sp.sync.aligned.m16n8k32.row.col.f32." GT_MMA_TYPE "." GT_MMA_TYPE
               ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, "
               "%12, %13;\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]),
                 "r"(b[3]), "r"(e), "n"(SEL));
}

extern "C" __global__ void GT_CLUSTER(SPLIT) __launch_bounds__(T::THREADS)
sparse24_gemm(const ct_t* __restrict__ x, const ct_t* __restrict__ values,
              const int* __restrict__ meta, const ct_t* __restrict__ bias, ct_t* __restrict__ y,
              int M, int N, int K) {
  extern __shared__ __align__(16) char smem[];
  const T::Place p = T::place();
  const int lane = p.lane, g = p.g, t = p.t, wn = p.wn, wm = p.wm, wk = p.wk;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int np = (N + 15) / 16 * 16, kp = (K + 63) / 64 * 64;  // values rows are kp bytes
  const int KT = (K + BK - 1) / BK;

  float acc[WN][WM][4];
  T::zero(acc);

  auto load_w = [&](int slot, int kt) {
    char* st = smem + slot * STAGE_BYTES;
    const int k0 = kt * BK;
    T::load_tile<BN, BK, 16>(st, reinterpret_cast<const char*>(values) + (ct_i64)n0 * kp + k0, kp,
                             np - n0, kp - k0, gt_swz<BK>);
    auto flat = [](int, int q) { return q; };
    T::load_tile<BN / 2, BK / 4, 16>(st + V_BYTES,
                                     reinterpret_cast<const char*>(meta) + (ct_i64)(n0 / 2) * (kp / 4) + k0 / 4,
                                     kp / 4, np / 2 - n0 / 2, (kp - k0) / 4, flat);
  };
  auto load_x = [&](int slot, int kt) {
    T::load_x<XVEC>(smem + slot * STAGE_BYTES + V_BYTES + E_BYTES, x, M, K, m0, kt * BK);
  };

  auto compute = [&](int slot) {
    const char* st = smem + slot * STAGE_BYTES;
    const char* sx = st + V_BYTES + E_BYTES;
    unsigned e[WN];
#pragma unroll
    for (int i = 0; i < WN; ++i) {
      e[i] = reinterpret_cast<const unsigned*>(st + V_BYTES)[((wn * WN + i) * 8 + g) * (BK / 16) + wk * 4 + t];
      // Zero-filled words (past the padded weight, where values and x are zero too) would be
      // the invalid pattern 0b0000; a packed word never is 0 (each nibble is two distinct indices).
      e[i] = e[i] ? e[i] : 0x44444444u;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      unsigned b[WM][4];
#pragma unroll
      for (int j = 0; j < WM; ++j) T::b_frag(b[j], sx, (wm * WM + j) * 8, wk, h, lane);
#pragma unroll
      for (int i = 0; i < WN; ++i) {
        // a0..a3: rows 0-7 / 8-15 x kept values 0-7 / 8-15 of this k32 step (chunks 2h, 2h + 1)
        const int r = (wn * WN + i) * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
        const int q = wk * 4 + 2 * h + (lane >> 4);
        unsigned a[4];
        gt_ldmatrix_x4(a, st + r * BK + gt_swz<BK>(r, q) * 16);
#pragma unroll
        for (int j = 0; j < WM; ++j) {
          if (h == 0) mma_sp<0>(acc[i][j], a, b[j], e[i]);
          else mma_sp<1>(acc[i][j], a, b[j], e[i]);
        }
      }
    }
  };

  T::pipeline(KT, load_w, load_x, compute);
  T::template epilogue<BIAS>(acc, smem, y, bias, M, N, m0, n0, p);
}
