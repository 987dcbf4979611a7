// W4A16 GEMM on Hopper's warpgroup MMA (sm_90a) for a small K (<= 256, the Conformer FFN's first
// GEMM, 16000 x 1024 x 256) and large M: y[M, N] = x[M, K] · W^T (+ bias), same formats as
// w4a16.cu (packing.py). With K this small a CTA's whole weight slab -- 128 rows x K -- fits in
// registers once dequantised (K / 16 k16 steps x 4 registers = 64 at K = 256), so the CTA
// dequantises it once and then streams token tiles past it: per tile, only the x tile is loaded
// (cp.async, every thread a fixed share of it) and K / 16 wgmma are issued. A tile's result is
// packed to 16-bit pairs as soon as its MMAs are done, so the next tile's MMAs run while it is
// transposed and stored (two accumulator sets in turn made ptxas serialise every wgmma: "non
// wgmma instructions reading accumulator registers ... between start and end of the pipeline
// stage"); BUFS x buffers keep the loads of tiles t + 1 .. t + BUFS - 1 in flight. (Why: the
// per-stage kernel, w4a16_wgmma.cu, issued 6.8x cuBLAS's instructions at that shape, mostly
// address arithmetic; BENCHMARKS.md, H100, fourth session of 2026-12-07.)
//
// CTA: two warpgroups, 64 weight rows each (BN = 128), one CTA per SM (about 200 registers per
// thread); MT token tiles of BT tokens each (grid cdiv(M, BT MT) x cdiv(N, 128)). The x tile of
// a token tile is all of K: KP / 64 panels of BT rows x 128 bytes in the 128-byte swizzle
// (wgmma.cuh), k16 step ks at panel ks / 4, 32 (ks % 4) bytes in. Epilogue: bias in fp32, the
// tile transposed into shared memory by stmatrix, 16-byte stores.
// Macros: BT (64/128), MT, BUFS (2/3), KC (K), QP (K rounded up to 64: the packed weight's row
// bytes), KP (64, 128 or 256: x tile row length, so that a row's chunks divide the threads), GROUP,
// ASYM, BIAS, SMEM.

constexpr int WG = 2, BN = 128, THREADS = 256;
constexpr int KS = KC / 16;           // k16 steps (K is a multiple of 32)
constexpr int CPR = KP / 8;           // 16-byte chunks of a row of x
constexpr int XB = BT * KP * 2;       // one x tile
constexpr int GROUPS = KC / GROUP;
constexpr int SLAB = BN / 2 * QP + GROUPS * BN * (2 + ASYM);  // packed words, scales, zeros
constexpr int EPI_LD = BN + 8;        // halves; the eight 16-byte rows of an stmatrix tile fall in distinct banks
constexpr int EPI = BT * EPI_LD * 2;
constexpr int SHARED_AT = BUFS * XB;  // the slab (prologue), then the epilogue's tile
static_assert(KC % 32 == 0 && KC <= KP && KP <= 256 && (KP & (KP - 1)) == 0 && (BT == 64 || BT == 128) && (BUFS == 2 || BUFS == 3), "tile");
static_assert(SHARED_AT + (SLAB > EPI ? SLAB : EPI) + 1024 <= SMEM, "tiles exceed SMEM");
static_assert(THREADS % CPR == 0 && BT % (THREADS / CPR) == 0, "x shares");


__device__ __forceinline__ unsigned kres_pack(float lo, float hi) {
  return ct_bits<unsigned>(gt_v2{ct_from_float<ct_t>(lo), ct_from_float<ct_t>(hi)});
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
w4a16_wgmma_kres(const ct_t* __restrict__ x, const int* __restrict__ qweight,
                 const ct_t* __restrict__ scales, const unsigned char* __restrict__ zeros,
                 const ct_t* __restrict__ bias, ct_t* __restrict__ y, int M, int N, int K) {
  extern __shared__ __align__(16) char smem_raw[];
  char* smem = smem_raw + ((1024 - (gt_smem(smem_raw) & 1023)) & 1023);  // the swizzle atom's alignment
  char* shared = smem + SHARED_AT;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int m_first = blockIdx.x * (BT * MT), n0 = blockIdx.y * BN;
  const int np = (N + 15) / 16 * 16;
  const int tiles = min(MT, (M - m_first + BT - 1) / BT);

  // the weight slab, before waiting for the kernel ahead (an engine constant no kernel writes)
  {
    auto flat = [](int, int q) { return q; };
    gt_load_tile<BN / 2, QP, 16, THREADS>(shared, reinterpret_cast<const char*>(qweight) + (ct_i64)(n0 / 2) * QP,
                                          QP, np / 2 - n0 / 2, QP, flat);
    gt_load_tile<GROUPS, BN * 2, 16, THREADS>(shared + BN / 2 * QP, reinterpret_cast<const char*>(scales + n0),
                                              2 * (ct_i64)np, GROUPS, 2 * (np - n0), flat);
    if constexpr (ASYM)
      gt_load_tile<GROUPS, BN, 16, THREADS>(shared + BN / 2 * QP + GROUPS * BN * 2,
                                            reinterpret_cast<const char*>(zeros + n0), np, GROUPS, np - n0, flat);
    gt_cp_commit();
  }
  ct_wait_for_predecessor();

  // x: thread i copies chunk c = i % CPR of rows i / CPR + RS j; its shared offsets are fixed
  constexpr int RS = THREADS / CPR;
  const int xc = threadIdx.x % CPR, xr = threadIdx.x / CPR;
  const unsigned x_dst = gt_smem(smem) + (xc / 8) * BT * 128 + xr * 128 + ((xc % 8) ^ (xr % 8)) * 16;
  const bool x_in = xc * 8 < KC;
  auto load_x = [&](int buf, int m0) {
    const char* src = reinterpret_cast<const char*>(x + (ct_i64)(m0 + xr) * KC) + xc * 16;
#pragma unroll
    for (int j = 0; j < BT / RS; ++j) {
      const bool ok = x_in && m0 + xr + j * RS < M;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(x_dst + buf * XB + j * RS * 128),
                   "l"(ok ? src + (ct_i64)j * RS * KC * 2 : reinterpret_cast<const char*>(x)), "r"(ok ? 16 : 0));
    }
    gt_cp_commit();
  };
  // one group per tile (empty past the CTA's tiles, to keep the counts below uniform)
  auto load_or_skip = [&](int i) {
    if (i < tiles) load_x(i % BUFS, m_first + i * BT);
    else gt_cp_commit();
  };
#pragma unroll
  for (int i = 0; i < BUFS; ++i) load_or_skip(i);

  // the slab's group is the oldest: wait for it alone, and dequantise all of K into registers
  gt_cp_wait<BUFS>();
  __syncthreads();
  unsigned a[KS][4];
  {
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
        if (ks < KS) w4_dequant(a[ks], w[kk], w4_group<BN, ASYM>(ss, sz, ks * 16 / GROUP, warp * 16 + g));
      }
    }
  }
  __syncthreads();   // the slab's space becomes the epilogue's

  // a tile's MMAs: all of K from x buffer ``buf``, into acc (overwritten: scale-d 0 at step 0)
  const unsigned long long x_desc = wg_desc(gt_smem(smem));   // both warpgroups read the same B
  float acc[BT / 2];   // 64 x BT fp32 accumulators of the warpgroup
  auto mma = [&](int buf) {
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
      wg_mma(acc, a[ks], x_desc + ((buf * XB + (ks / 4) * BT * 128 + (ks % 4) * 32) >> 4), ks > 0);
    wg_commit();
  };

  // y^T fragments: weight rows r, r + 8, tokens 8 i + 2 t and + 1, plus the bias, packed as 16-bit
  // pairs: pk[2 i] rows r, pk[2 i + 1] rows r + 8. The epilogue stores them transposed by
  // stmatrix, two token blocks (i, i + 1) x (rows r, r + 8) per x4, lane l addressing token row
  // l % 8 of block i + l / 16, weight columns 16 warp + 8 (l / 8 % 2) .., then 16-byte stores of
  // y[m0 .., n0 ..].
  const int r = warp * 16 + g;
  const float blo = BIAS && n0 + r < N ? ct_to_float(bias[n0 + r]) : 0.f;
  const float bhi = BIAS && n0 + r + 8 < N ? ct_to_float(bias[n0 + r + 8]) : 0.f;
  unsigned pk[BT / 4];
  auto pack = [&] {
    auto yv = [](float v, float b) { return BIAS ? v + b : v; };   // no add of 0 without bias
#pragma unroll
    for (int i = 0; i < BT / 8; ++i) {
      pk[2 * i] = kres_pack(yv(acc[4 * i], blo), yv(acc[4 * i + 1], blo));
      pk[2 * i + 1] = kres_pack(yv(acc[4 * i + 2], bhi), yv(acc[4 * i + 3], bhi));
    }
  };
  ct_t* out = reinterpret_cast<ct_t*>(shared);
  ct_t* lane_out = out + (8 * (lane / 16) + lane % 8) * EPI_LD + warp * 16 + 8 * (lane / 8 % 2);
  constexpr int OPR = BN / 8, ORS = THREADS / OPR;   // output chunks per row, rows per pass
  const int on = threadIdx.x % OPR * 8, om = threadIdx.x / OPR, gn = n0 + on;
  auto epilogue = [&](int m0) {
#pragma unroll
    for (int i = 0; i < BT / 8; i += 2)
      asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(
                       gt_smem(lane_out + 8 * i * EPI_LD)),
                   "r"(pk[2 * i]), "r"(pk[2 * i + 1]), "r"(pk[2 * i + 2]), "r"(pk[2 * i + 3])
                   : "memory");
    __syncthreads();
    if (gn < N) {
      const ct_t* src = out + om * EPI_LD + on;
      ct_t* dst = y + (ct_i64)(m0 + om) * N + gn;
#pragma unroll
      for (int i = 0; i < BT / ORS; ++i) {
        if (m0 + om + i * ORS >= M) break;
        const ct_vec<ct_t, 8> v = *reinterpret_cast<const ct_vec<ct_t, 8>*>(src + i * ORS * EPI_LD);
        ct_t* d = dst + (ct_i64)i * ORS * N;
        if (N % 8 == 0) {  // then gn + 8 <= N, and the row start is 16-byte aligned
          *reinterpret_cast<ct_vec<ct_t, 8>*>(d) = v;
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e)
            if (gn + e < N) d[e] = v.v[e];
        }
      }
    }
  };

  // Tile i: wait for its x and start its MMAs; give tile i - 1's x buffer (its MMAs were waited
  // for before this step's barrier) to tile i + BUFS - 1; store tile i - 1 (packed) while the
  // MMAs run; then wait for them and pack tile i. (The barrier at each step's start also keeps
  // an epilogue's shared tile from being overwritten before everyone has read it.) Groups committed before step i's
  // wait (i >= 1): the slab, tiles 0 .. BUFS - 1, and one per earlier step (tiles
  // BUFS .. i + BUFS - 2), so tile i's is done when at most BUFS - 2 are pending.
  for (int i = 0; i < tiles; ++i) {
    gt_cp_wait<BUFS - 2>();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");   // cp.async writes -> wgmma reads
    __syncthreads();
    mma(i % BUFS);
    if (i > 0) {
      load_or_skip(i + BUFS - 1);
      epilogue(m_first + (i - 1) * BT);
    }
    wg_wait<0>();
    wg_keep(acc);
    pack();
  }
  wg_keep(a);
  __syncthreads();   // everyone has read the last epilogue's shared tile
  epilogue(m_first + (tiles - 1) * BT);
}
