// W4A16 GEMM on the tensor cores (mma.sync m16n8k16), dequantising the 4-bit weight in registers:
//   y[M, N] = x[M, K] · W^T (+ bias),  W[n, k] = (q[n, k] - z[k / GROUP, n]) * s[k / GROUP, n]
// (z = 8 when !ASYM). Tiles, pipeline and epilogue: gemm_tiles.cuh. Formats (packing.py):
//   qweight int32 [cdiv(N, 16) * 8, cdiv(K, 64) * 16]: row R = 8 (n / 16) + n % 8 holds weight
//     rows n and n + 8; word 16 c + 4 t + j holds, for k = 64 c + 16 j + 2 t, the eight nibbles
//     p = hi + 2 khalf + 4 e of w[n + 8 hi, k + 8 khalf + e] -- one 32-bit word is exactly one
//     lane's A fragment of one m16n8k16 step, and a lane's four steps are one 16-byte load.
//   scales [K / GROUP, cdiv(N, 16) * 16] (activation dtype), zeros uint8 (same shape, 0..15).
// Dequantisation: dequant.cuh.
// Macros: WN WM WARPS_N WARPS_M WARPS_K STAGES SPLIT (gemm_tiles.cuh), GROUP (32/64/128), ASYM, BIAS,
// SMEM (dynamic shared bytes).

typedef GemmTiles<WN, WM, WARPS_N, WARPS_M, WARPS_K, STAGES, SPLIT> T;
constexpr int BN = T::BN, BM = T::BM, BK = T::BK;

#define KP4(K) ((((K) + 63) / 64) * 64)               // qweight row bytes
#define SG (BK >= GROUP ? BK / GROUP : 1)             // scale rows per stage
#define A_BYTES (BN / 2 * BK)                         // BN / 2 row pairs of BK nibble pairs
#define S_BYTES (SG * BN * 2)
#define Z_BYTES (ASYM ? SG * BN : 0)
#define X_BYTES (BM * BK * 2)
#define STAGE_BYTES (A_BYTES + S_BYTES + Z_BYTES + X_BYTES)

static_assert(STAGES * STAGE_BYTES <= SMEM && T::EPILOGUE_BYTES <= SMEM, "tiles exceed SMEM");

// Row pairs are read as four consecutive 16-byte chunks by lanes t = 0..3 of two rows; with rows
// of 128 bytes or more the odd row moves half a bank cycle over.
__device__ __forceinline__ int a_swz(int r, int q) { return BK == 64 ? q : q ^ ((r & 1) << 2); }

// Small M (at most two n8 token tiles per warp): the scale multiplies fp32 partial sums of each
// group rather than every dequantised weight pair (dequant.cuh's w4_dequant_int: 9 instructions
// per packed word in fp16 instead of 15), at 4 FFMA per m16n8 tile and group; with more token
// tiles those FFMA and the partial sums' registers would cost more than they save.
constexpr bool PER_GROUP = WM <= 2;

extern "C" __global__ void GT_CLUSTER(SPLIT) __launch_bounds__(T::THREADS)
w4a16_gemm(const ct_t* __restrict__ x, const int* __restrict__ qweight,
           const ct_t* __restrict__ scales, const unsigned char* __restrict__ zeros,
           const ct_t* __restrict__ bias, ct_t* __restrict__ y, int M, int N, int K) {
  extern __shared__ __align__(16) char smem[];
  const T::Place p = T::place();
  const int lane = p.lane, g = p.g, t = p.t, wn = p.wn, wm = p.wm, wk = p.wk;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int np = (N + 15) / 16 * 16, kp = KP4(K), groups = K / GROUP;
  const int KT = (K + BK - 1) / BK;
  constexpr int XVEC = 16;  // K is a multiple of 32: x rows are 16-byte aligned

  float acc[WN][WM][4];
  T::zero(acc);

  // small M: each thread's fixed share of every stage's tiles (GtShare, gemm_tiles.cuh); large M
  // keeps the generic copies (the shares' offsets would hold ~32 registers beside 128 accumulators)
  const GtShare<BN / 2, BK, 16, T::THREADS> share_q(kp, [](int r, int q) { return a_swz(r, q); });
  const GtShare<SG, BN * 2, 16, T::THREADS> share_s(2 * np, [](int, int q) { return q; });
  const GtShare<ASYM ? SG : 1, BN, 16, T::THREADS> share_z(np, [](int, int q) { return q; });
  const GtShare<BM, 2 * BK, XVEC, T::THREADS> share_x(2 * K, [](int r, int q) { return gt_swz<2 * BK>(r, q); });
  const char* q_at = reinterpret_cast<const char*>(qweight) + (ct_i64)(n0 / 2) * kp;
  const char* x_at = reinterpret_cast<const char*>(x + (ct_i64)m0 * K);

  auto load_w = [&](int slot, int kt) {
    char* st = smem + slot * STAGE_BYTES;
    const int k0 = kt * BK, g0 = k0 / GROUP;
    const char* s_at = reinterpret_cast<const char*>(scales + (ct_i64)g0 * np + n0);
    const char* z_at = ASYM ? reinterpret_cast<const char*>(zeros + (ct_i64)g0 * np + n0) : nullptr;  // no zeros when symmetric
    if constexpr (PER_GROUP) {
      share_q.template load<true>(st, q_at + k0, np / 2 - n0 / 2, kp - k0);  // rows past N: y not stored
      share_s.load(st + A_BYTES, s_at, groups - g0, 2 * (np - n0));
      if constexpr (ASYM) share_z.load(st + A_BYTES + S_BYTES, z_at, groups - g0, np - n0);
    } else {
      auto flat = [](int, int q) { return q; };
      T::load_tile<BN / 2, BK, 16>(st, q_at + k0, kp, np / 2 - n0 / 2, kp - k0, a_swz);
      T::load_tile<SG, BN * 2, 16>(st + A_BYTES, s_at, 2 * (ct_i64)np, groups - g0, 2 * (np - n0), flat);
      if constexpr (ASYM) T::load_tile<SG, BN, 16>(st + A_BYTES + S_BYTES, z_at, np, groups - g0, np - n0, flat);
    }
  };
  auto load_x = [&](int slot, int kt) {
    char* at = smem + slot * STAGE_BYTES + A_BYTES + S_BYTES + Z_BYTES;
    if constexpr (PER_GROUP) share_x.template load<true>(at, x_at + 2 * kt * BK, M - m0, 2 * (K - kt * BK));  // tokens past M
    else T::load_x<XVEC>(at, x, M, K, m0, kt * BK);
  };

  auto compute = [&](int slot) {
    const char* st = smem + slot * STAGE_BYTES;
    const ct_t* ss = reinterpret_cast<const ct_t*>(st + A_BYTES);
    const char* sx = st + A_BYTES + S_BYTES + Z_BYTES;
    uint4 words[WN];
#pragma unroll
    for (int i = 0; i < WN; ++i) {
      const int r = (wn * WN + i) * 8 + g;
      words[i] = *reinterpret_cast<const uint4*>(st + r * BK + a_swz(r, wk * 4 + t) * 16);
    }
    const unsigned char* sz = reinterpret_cast<const unsigned char*>(st + A_BYTES + S_BYTES);
    if constexpr (PER_GROUP) {
      // q - z into fp32 partial sums of the group (a new group: the first MMA starts from zero),
      // then scaled into acc: rows g and g + 8 of a fragment are the scales' rows lo and hi
      float part[WN][WM][4];
      W4Zero z[WN];
      float slo[WN], shi[WN];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const bool fresh = h == 0 || GROUP == 32;  // a 32-wide half never straddles a group
        if (fresh) {
          const int sg = BK >= GROUP ? (wk * 64 + 32 * h) / GROUP : 0;
#pragma unroll
          for (int i = 0; i < WN; ++i) {
            const int r = (wn * WN + i) * 16 + g;
            z[i] = w4_zero<BN, ASYM>(sz, sg, r);
            slo[i] = ct_to_float(ss[sg * BN + r]);
            shi[i] = ct_to_float(ss[sg * BN + r + 8]);
          }
        }
        unsigned b[WM][4];
#pragma unroll
        for (int j = 0; j < WM; ++j) T::b_frag(b[j], sx, (wm * WM + j) * 8, wk, h, lane);
#pragma unroll
        for (int s = 0; s < 2; ++s) {
#pragma unroll
          for (int i = 0; i < WN; ++i) {
            unsigned a[4];
            w4_dequant_int(a, reinterpret_cast<const unsigned*>(&words[i])[2 * h + s], z[i]);
#pragma unroll
            for (int j = 0; j < WM; ++j) {
              if (fresh && s == 0) gt_mma_first(part[i][j], a, b[j][0], b[j][1]);
              else gt_mma(part[i][j], a, b[j][2 * s], b[j][2 * s + 1]);
            }
          }
        }
        if (h == 1 || GROUP == 32) {
#pragma unroll
          for (int i = 0; i < WN; ++i)
#pragma unroll
            for (int j = 0; j < WM; ++j) {
              acc[i][j][0] += slo[i] * part[i][j][0];
              acc[i][j][1] += slo[i] * part[i][j][1];
              acc[i][j][2] += shi[i] * part[i][j][2];
              acc[i][j][3] += shi[i] * part[i][j][3];
            }
        }
      }
    } else {
      W4Group q[WN];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (h == 0 || GROUP == 32) {  // a 32-wide half never straddles a group
          const int sg = BK >= GROUP ? (wk * 64 + 32 * h) / GROUP : 0;
#pragma unroll
          for (int i = 0; i < WN; ++i) q[i] = w4_group<BN, ASYM>(ss, sz, sg, (wn * WN + i) * 16 + g);
        }
        unsigned b[WM][4];
#pragma unroll
        for (int j = 0; j < WM; ++j) T::b_frag(b[j], sx, (wm * WM + j) * 8, wk, h, lane);
#pragma unroll
        for (int s = 0; s < 2; ++s) {
#pragma unroll
          for (int i = 0; i < WN; ++i) {
            const unsigned w = reinterpret_cast<const unsigned*>(&words[i])[2 * h + s];
            unsigned a[4];
            w4_dequant(a, w, q[i]);
#pragma unroll
            for (int j = 0; j < WM; ++j) gt_mma(acc[i][j], a, b[j][2 * s], b[j][2 * s + 1]);
          }
        }
      }
    }
  };

  T::pipeline(KT, load_w, load_x, compute);
  T::template epilogue<BIAS>(acc, smem, y, bias, M, N, m0, n0, p);
}
