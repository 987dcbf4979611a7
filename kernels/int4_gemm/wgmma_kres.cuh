// The warpgroup-MMA GEMM (sm_90a) for a small K (<= 256, the Conformer FFN's first GEMM,
// 16000 x 1024 x 256) and large M that int4_gemm's w4a16_wgmma_kres.cu and sparse24_gemm's
// sparse24_wgmma_kres.cu share: y[M, N] = x[M, K] · W^T (+ bias). With K this small a CTA's
// whole weight slab -- 128 rows x K -- fits in registers as wgmma's A operand, so the CTA puts
// it there once (dequantised nibbles, or 2:4 values and metadata) and then streams token tiles
// past it: per tile, only the x tile is loaded (cp.async, every thread a fixed share of it) and
// all of K's wgmma are issued. A tile's result is packed to 16-bit pairs as soon as its MMAs are
// done, so the next tile's MMAs run while it is transposed and stored (two accumulator sets in
// turn made ptxas serialise every wgmma: "non wgmma instructions reading accumulator registers
// ... between start and end of the pipeline stage"); BUFS x buffers keep the loads of tiles
// t + 1 .. t + BUFS - 1 in flight. (Why: the per-stage kernel issued 6.8x cuBLAS's instructions
// at that shape, mostly address arithmetic; BENCHMARKS.md, H100, fourth session of 2026-12-07.)
//
// CTA: two warpgroups, 64 weight rows each (BN = 128), one CTA per SM; MT token tiles of BT
// tokens each (grid cdiv(M, BT MT) x cdiv(N, 128)). The x tile of a token tile is all of K:
// KP / 64 panels of BT rows x 128 bytes in the 128-byte swizzle (wgmma.cuh), k16 step ks at panel
// ks / 4, 32 (ks % 4) bytes in. Epilogue: bias in fp32, the tile transposed into shared memory by
// stmatrix, 16-byte stores.
// KresTiles<BT (64/128), MT, BUFS (2/3), KC (K), KP (64, 128 or 256: x tile row length, so that a
// row's chunks divide the threads), BIAS, SLAB (the weight slab's shared bytes), SMEM>.

template <int BT_, int MT_, int BUFS_, int KC_, int KP_, int BIAS_, int SLAB_, int SMEM_>
struct KresTiles {
  static constexpr int BT = BT_, MT = MT_, BUFS = BUFS_, KC = KC_, KP = KP_, BIAS = BIAS_;
  static constexpr int SLAB = SLAB_, SMEM = SMEM_;
  static constexpr int BN = 128, THREADS = 256;
  static constexpr int CPR = KP / 8;           // 16-byte chunks of a row of x
  static constexpr int XB = BT * KP * 2;       // one x tile
  static constexpr int PANEL = BT * 128;       // one 64-wide panel of it
  static constexpr int EPI_LD = BN + 8;        // halves; the eight 16-byte rows of an stmatrix tile fall in distinct banks
  static constexpr int EPI = BT * EPI_LD * 2;
  static constexpr int SHARED_AT = BUFS * XB;  // the slab (prologue), then the epilogue's tile
  static_assert(KC % 8 == 0 && KC <= KP && KP <= 256 && (KP & (KP - 1)) == 0 && (BT == 64 || BT == 128) &&
                (BUFS == 2 || BUFS == 3), "tile");
  static_assert(SHARED_AT + (SLAB > EPI ? SLAB : EPI) + 1024 <= SMEM, "tiles exceed SMEM");
  static_assert(THREADS % CPR == 0 && BT % (THREADS / CPR) == 0, "x shares");

  // The CTA's GEMM: ``load_slab(shared)`` requests the weight slab's copies into ``shared`` (not
  // committed); ``fill(shared, a)`` puts it into the register set ``a`` (an ASet, whose keep()
  // holds its registers live); ``mma(a, acc, xd)`` issues a tile's wgmma over all of K into acc
  // (overwriting it) from the x buffer whose descriptor is ``xd``. ``smem``: the dynamic shared
  // memory, 1024-byte aligned.
  template <class ASet, class LoadSlab, class Fill, class Mma>
  static __device__ __forceinline__ void run(const ct_t* __restrict__ x, const ct_t* __restrict__ bias,
                                             ct_t* __restrict__ y, int M, int N, char* smem,
                                             LoadSlab load_slab, Fill fill, Mma mma) {
    char* shared = smem + SHARED_AT;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2;
    const int m_first = blockIdx.x * (BT * MT), n0 = blockIdx.y * BN;
    const int tiles = min(MT, (M - m_first + BT - 1) / BT);

    // the weight slab, before waiting for the kernel ahead (an engine constant no kernel writes)
    load_slab(shared);
    gt_cp_commit();
    ct_wait_for_predecessor();

    // x: thread i copies chunk c = i % CPR of rows i / CPR + RS j; its shared offsets are fixed
    constexpr int RS = THREADS / CPR;
    const int xc = threadIdx.x % CPR, xr = threadIdx.x / CPR;
    const unsigned x_dst = gt_smem(smem) + (xc / 8) * PANEL + xr * 128 + ((xc % 8) ^ (xr % 8)) * 16;
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

    // the slab's group is the oldest: wait for it alone, and put all of K into registers
    gt_cp_wait<BUFS>();
    __syncthreads();
    ASet a;
    fill(shared, a);
    __syncthreads();   // the slab's space becomes the epilogue's

    const unsigned long long x_desc = wg_desc(gt_smem(smem));   // both warpgroups read the same B
    float acc[BT / 2];   // 64 x BT fp32 accumulators of the warpgroup

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
        pk[2 * i] = wgt_pack(yv(acc[4 * i], blo), yv(acc[4 * i + 1], blo));
        pk[2 * i + 1] = wgt_pack(yv(acc[4 * i + 2], bhi), yv(acc[4 * i + 3], bhi));
      }
    };
    ct_t* out = reinterpret_cast<ct_t*>(shared);
    ct_t* lane_out = out + (8 * (lane / 16) + lane % 8) * EPI_LD + warp * 16 + 8 * (lane / 8 % 2);
    constexpr int OPR = BN / 8, ORS = THREADS / OPR;   // output chunks per row, rows per pass
    const int on = threadIdx.x % OPR * 8, om = threadIdx.x / OPR, gn = n0 + on;
    auto epilogue = [&](int m0) {
#pragma unroll
      for (int i = 0; i < BT / 8; i += 2)
        wgt_stmatrix_x4_trans(lane_out + 8 * i * EPI_LD, pk[2 * i], pk[2 * i + 1], pk[2 * i + 2], pk[2 * i + 3]);
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
    // an epilogue's shared tile from being overwritten before everyone has read it.) Groups
    // committed before step i's wait (i >= 1): the slab, tiles 0 .. BUFS - 1, and one per earlier
    // step (tiles BUFS .. i + BUFS - 2), so tile i's is done when at most BUFS - 2 are pending.
    for (int i = 0; i < tiles; ++i) {
      gt_cp_wait<BUFS - 2>();
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");   // cp.async writes -> wgmma reads
      __syncthreads();
      wg_fence();
      mma(a, acc, x_desc + (((i % BUFS) * XB) >> 4));
      wg_commit();
      if (i > 0) {
        load_or_skip(i + BUFS - 1);
        epilogue(m_first + (i - 1) * BT);
      }
      wg_wait<0>();
      wg_keep(acc);
      pack();
    }
    a.keep();
    __syncthreads();   // everyone has read the last epilogue's shared tile
    epilogue(m_first + (tiles - 1) * BT);
  }
};
