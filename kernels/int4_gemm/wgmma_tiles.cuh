// The warpgroup-MMA GEMM (sm_90a) that int4_gemm's w4a16_wgmma.cu and sparse24_gemm's
// sparse24_wgmma.cu share: y[M, N] = x[M, K] · W^T (+ bias) with the weight as wgmma's A
// operand, put into registers by the kernel (dequantised nibbles, or 2:4 values and metadata),
// and the tokens as its B operand, read by the tensor cores straight from shared memory
// (wgmma.cuh: x rows are K-major, 64 halves = 128 bytes per stage, in the 128-byte swizzle), so a
// stage's x tile is read once per warpgroup, not once per warp as with mma.sync + ldmatrix. The
// accumulator is y^T.
//
// CTA: WG warpgroups, each 64 weight rows (BN = 64 WG) x BT tokens (wgmma N = 128, or 64 when
// BT = 64); BK = 64; the cp.async pipeline of gemm_tiles.cuh (gt_pipeline, its stage made
// visible to the async proxy) with STAGES stages; each stage's A operand is put in registers, its
// wgmma issued, and waited for before its slot is refilled. Epilogue: bias in fp32, the tile
// transposed into shared memory by stmatrix, 16-byte stores.
// MT token tiles per CTA (MT 1: one): the CTA runs the pipeline over its MT tiles' k-tiles in
// one sequence, so the loads of tile i + 1 are in flight while tile i's epilogue runs, and a
// small K (the Conformer FFN's 256: four stages) is no longer mostly pipeline fill; with
// MT > 1 the epilogue has its own shared memory (the stages are live), else it reuses theirs.
// OVERLAP 1: a stage's wgmma are left running while the next stage is waited for, loaded and
// put in registers (wgmma.wait_group 1, loads one stage less ahead); consecutive stages use two
// register sets in turn, since the tensor cores read a stage's A registers until its wait (a
// copy would not keep them: the first version did that and gave wrong results on an H100).
// Whether the two sets stay apart is ptxas's choice, not the source's (it allocates as if a
// wgmma read its registers at issue): for w4a16_wgmma.cu it merged them (wrong results), so
// that kernel has no OVERLAP; sparse24_wgmma.cu's binaries are checked when built
// (kernels/sass.py, Impl.binary_check).
// WgTiles<WG (1/2), BT (64/128/256), MT (1/2/4/8), STAGES, OVERLAP (0/1), BIAS, W_BYTES (the
// weight's shared memory per stage), SMEM (the kernel's dynamic shared memory), RBLK (1/2: m64
// row blocks per warpgroup, so BN = 64 WG RBLK: more weight rows share each x tile)>.

// One thread's share of a tile that every stage reloads: ROWS rows of RB bytes in 16-byte chunks,
// chunk i (row i / (RB / 16)) copied by thread i % THREADS. THREADS being a multiple of the
// chunks per row, a thread keeps its chunk column q and its rows r0, r0 + RS, ... at every stage,
// so its shared-memory offsets are constants of the slot (swizzled too: RS is a multiple of 8)
// and its source is one pointer, set once per tile, plus the stage's column; a stage only checks
// the rows' and the columns' limits. SWZ: 0, or the swizzle of 128-byte rows (chunk q of row r
// at q ^ (r % 8): wgmma.cuh's) or of 64-byte rows (q ^ (r / 2 % 4): gt_swz<64>, for ldmatrix).
// (Generic per-stage address arithmetic was most of this kernel's instructions: an H100 profile
// of 2026-12-07 counted 15.2 M warp instructions at the FFN shape against cuBLAS's 2.2 M, 57 % of
// them integer.)
template <int ROWS, int RB, int SWZ, int THREADS>
struct WgShare {
  static constexpr int PER_ROW = RB / 16, RS = THREADS / PER_ROW, N = (ROWS + RS - 1) / RS;
  static_assert(THREADS % PER_ROW == 0 && (SWZ == 0 || (SWZ == RB && RS % 8 == 0)), "rows of the share");
  const char* src;  // this thread's first chunk, column 0
  int step;         // bytes from row r0 to r0 + RS
  int r0, q16;      // the first row, and the chunk's byte in the row
  unsigned dst;     // shared-memory address of the first chunk in slot 0

  // a tile whose row 0 starts at ``origin``, rows ``stride`` bytes apart, in shared memory at
  // ``base`` (slot 0)
  __device__ __forceinline__ WgShare(const char* origin, int stride, unsigned base)
      : r0(threadIdx.x / PER_ROW), q16(threadIdx.x % PER_ROW * 16) {
    src = origin + (ct_i64)r0 * stride + q16;
    step = RS * stride;
    if constexpr (SWZ != 0) dst = base + r0 * RB + gt_swz<RB>(r0, q16 / 16) * 16;
    else dst = base + r0 * RB + q16;
  }
  // rows [0, rows) and bytes [0, bytes) of the tile at byte ``col`` of its rows, into the slot at
  // ``slot_at`` bytes from slot 0; the rest zero-filled (reading nothing, from ``safe``, a valid
  // address of the tensor)
  __device__ __forceinline__ void load(unsigned slot_at, ct_i64 col, int rows, int bytes, const void* safe) const {
    const bool in = q16 < bytes;
    const char* s = src + col;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (ROWS % RS == 0 || r0 + j * RS < ROWS) {
        const bool ok = in && r0 + j * RS < rows;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst + slot_at + j * RS * RB),
                     "l"(ok ? s : safe), "r"(ok ? 16 : 0));
      }
      s += step;
    }
  }
};

__device__ __forceinline__ unsigned wgt_pack(float lo, float hi) {
  return ct_bits<unsigned>(gt_v2{ct_from_float<ct_t>(lo), ct_from_float<ct_t>(hi)});
}

// Four 8x8 tiles of 16-bit values, each stored transposed: lane l gives row l % 8 of tile l / 8
// (its shared-memory address), and its registers r[i] hold row g, columns 2t, 2t + 1 of tile i.
__device__ __forceinline__ void wgt_stmatrix_x4_trans(void* p, unsigned r0, unsigned r1, unsigned r2, unsigned r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(gt_smem(p)),
               "r"(r0), "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

template <int WG_, int BT_, int MT_, int STAGES_, int OVERLAP_, int BIAS_, int W_BYTES_, int SMEM_, int RBLK_ = 1>
struct WgTiles {
  static constexpr int WG = WG_, BT = BT_, MT = MT_, STAGES = STAGES_, OVERLAP = OVERLAP_, BIAS = BIAS_;
  static constexpr int W_BYTES = W_BYTES_, SMEM = SMEM_, RBLK = RBLK_;
  static constexpr int BN = 64 * WG * RBLK, BK = 64, THREADS = 128 * WG;
  static constexpr int INS = BT >= 128 ? 128 : 64;  // tokens per wgmma
  static constexpr int NI = BT / INS;
  static constexpr int X_BYTES = BT * 128;
  static constexpr int EPI_LD = BN + 8;  // halves; the eight 16-byte rows of an stmatrix tile fall in distinct banks
  static constexpr int EPI_BYTES = BT * EPI_LD * 2;
  static constexpr int RING_BYTES = STAGES * (X_BYTES + W_BYTES);
  static constexpr int EPI_AT = MT > 1 ? RING_BYTES : 0;  // the epilogue tile's offset
  static_assert(BT % INS == 0 && (WG == 1 || WG == 2) && (RBLK == 1 || RBLK == 2), "tile");
  static_assert((MT > 1 ? RING_BYTES + EPI_BYTES : RING_BYTES > EPI_BYTES ? RING_BYTES : EPI_BYTES) + 1024 <= SMEM,
                "tiles exceed SMEM");
  template <int ROWS, int RB, int SWZ>
  using Share = WgShare<ROWS, RB, SWZ, THREADS>;

  // the first of this warp's 16 rows of row block rb (of the CTA's BN): warpgroup w / 4 takes
  // row blocks RBLK (w / 4) .. + RBLK - 1, 64 rows each, warp w % 4 its 16 rows of each
  static __device__ __forceinline__ int wrow(int rb) {
    const int warp = threadIdx.x >> 5;
    return (warp / 4 * RBLK + rb) * 64 + warp % 4 * 16;
  }

  // The GEMM of one CTA, its A operand the kernel's: ``load_w(slot_at, k0)`` requests the weight's
  // share of k-tile k0 / BK into the slot ``slot_at`` bytes past slot 0 of the weight stages;
  // ``fill(st, a)`` puts a stage's A operand (``st``: its slot) into the register set ``a`` (an
  // ASet, whose keep() holds its registers live); ``issue(a, xd, first)`` issues the stage's
  // wgmma for the x tile whose descriptor is ``xd``, accumulating into ``acc`` (row block rb of
  // the warpgroup: acc[rb], its rows wrow(rb) + [0, 16) for each warp) -- overwriting it at a
  // tile's first stage (``first``: scale-d 0 for its first k step). The accumulators are never
  // zeroed by other instructions: a move into them on a path where a stage's wgmma may still be
  // running (OVERLAP) made ptxas inject a warpgroup.wait (C7517) and serialise the overlap. ``smem``: the dynamic shared memory,
  // 1024-byte aligned.
  template <class ASet, class LoadW, class Fill, class Issue>
  static __device__ __forceinline__ void gemm(const ct_t* __restrict__ x, const ct_t* __restrict__ bias,
                                              ct_t* __restrict__ y, int M, int N, int K, char* smem,
                                              float (&acc)[RBLK][NI][INS / 2], LoadW load_w, Fill fill, Issue issue) {
    char* xs = smem;
    char* ws = smem + STAGES * X_BYTES;
    const int lane = threadIdx.x & 31, g = lane >> 2;
    const int m_first = blockIdx.x * (BT * MT), n0 = blockIdx.y * BN;
    const int KT = (K + BK - 1) / BK;
    const int tiles = min(MT, (M - m_first + BT - 1) / BT);  // this CTA's token tiles

    // A operands, two sets: with OVERLAP the stage in the tensor cores keeps its set while the
    // next stage fills the other (kept live by keep() until its MMAs are waited for)
    ASet a0{}, a1{};
    int step = 0;
    // The pipeline asks for the steps in order, each once (weights first, then x, for each): step
    // s is k-tile s % KT of token tile s / KT, followed by counters rather than divisions.
    const unsigned xs_at = gt_smem(xs);
    int w_kt = 0;
    auto load_w_step = [&](int slot, int) {
      load_w(slot * W_BYTES, w_kt * BK);
      if (++w_kt == KT) w_kt = 0;
    };
    int x_kt = 0, x_m0 = m_first;
    Share<BT, 128, 128> share_x(reinterpret_cast<const char*>(x + (ct_i64)m_first * K), 2 * K, xs_at);
    auto load_x = [&](int slot, int) {
      share_x.load(slot * X_BYTES, x_kt * 128, M - x_m0, 2 * (K - x_kt * BK), x);
      if (++x_kt == KT) {   // the next token tile
        x_kt = 0;
        x_m0 += BT;
        share_x.src += (ct_i64)BT * 2 * K;
      }
    };
    // the descriptor of x's stage 0; a slot, k step and token block add their offset / 16 to its
    // start address (bits 0-13: shared memory is under 256 KB, so the sum never carries out)
    const unsigned long long x_desc = wg_desc(gt_smem(xs));

    auto stage = [&](int slot, ASet& a, ASet& other, bool first) {
      fill(ws + slot * W_BYTES, a);
      const unsigned long long xd = x_desc + ((slot * X_BYTES) >> 4);
      wg_fence();
      issue(a, xd, first);
      wg_commit();
      if constexpr (OVERLAP) {   // this stage's MMAs run on while the next one is fetched and filled
        wg_wait<1>();            // the previous stage's are done: its slot and A registers are free
        other.keep();
      } else {
        wg_wait<0>();            // the slot is refilled after the next barrier, and a is reused
        a.keep();
      }
    };
    // bias, y^T transposed through shared memory, 16-byte stores of y[m0 .., n0 ..]; the caller
    // has waited for every MMA, and (MT 1) everyone is done reading the stages
    auto epilogue = [&](int m0) {
      ct_t* out = reinterpret_cast<ct_t*>(smem + EPI_AT);
      // y^T fragments: weight rows r and r + 8, tokens j INS + 8 i + 2 t and + 1; stored transposed
      // by stmatrix, two token blocks (i, i + 1) x (rows r, r + 8) per x4: lane l addresses token
      // row l % 8 of block i + l / 16, weight columns 16 warp + 8 (l / 8 % 2) ..
      auto yv = [](float v, float b) { return BIAS ? v + b : v; };   // no add of 0 without bias
  #pragma unroll
      for (int rb = 0; rb < RBLK; ++rb) {
        const int r = wrow(rb) + g;
        const float blo = BIAS && n0 + r < N ? ct_to_float(bias[n0 + r]) : 0.f;
        const float bhi = BIAS && n0 + r + 8 < N ? ct_to_float(bias[n0 + r + 8]) : 0.f;
        ct_t* lane_out = out + (8 * (lane / 16) + lane % 8) * EPI_LD + wrow(rb) + 8 * (lane / 8 % 2);
  #pragma unroll
        for (int j = 0; j < NI; ++j)
  #pragma unroll
          for (int i = 0; i < INS / 8; i += 2) {
            const float* c = acc[rb][j] + 4 * i;
            wgt_stmatrix_x4_trans(lane_out + (j * INS + 8 * i) * EPI_LD, wgt_pack(yv(c[0], blo), yv(c[1], blo)),
                                  wgt_pack(yv(c[2], bhi), yv(c[3], bhi)), wgt_pack(yv(c[4], blo), yv(c[5], blo)),
                                  wgt_pack(yv(c[6], bhi), yv(c[7], bhi)));
          }
      }
      __syncthreads();
      // 16-byte chunks: a thread keeps its column n and takes rows m_lane, m_lane + RSTEP, ...
      constexpr int CPR = BN / 8, RSTEP = THREADS / CPR;
      static_assert(THREADS % CPR == 0 && BT % RSTEP == 0, "epilogue chunks");
      const int n = threadIdx.x % CPR * 8, m_lane = threadIdx.x / CPR, gn = n0 + n;
      if (gn < N) {
        const ct_t* src = out + m_lane * EPI_LD + n;
        ct_t* dst = y + (ct_i64)(m0 + m_lane) * N + gn;
  #pragma unroll
        for (int i = 0; i < BT / RSTEP; ++i, src += RSTEP * EPI_LD, dst += (ct_i64)RSTEP * N) {
          if (m0 + m_lane + i * RSTEP >= M) break;
          const ct_vec<ct_t, 8> v = *reinterpret_cast<const ct_vec<ct_t, 8>*>(src);
          if (N % 8 == 0) {  // then gn + 8 <= N, and the row start is 16-byte aligned
            *reinterpret_cast<ct_vec<ct_t, 8>*>(dst) = v;
          } else {
  #pragma unroll
            for (int e = 0; e < 8; ++e)
              if (gn + e < N) dst[e] = v.v[e];
          }
        }
      }
    };

    // the tile's MMAs done, their registers kept until here
    auto drain = [&] {
      wg_wait<0>();
      a0.keep();
      if constexpr (OVERLAP) a1.keep();
  #pragma unroll
      for (int rb = 0; rb < RBLK; ++rb)
  #pragma unroll
        for (int j = 0; j < NI; ++j) wg_keep(acc[rb][j]);
    };
    // With MT 1 the epilogue runs after the pipeline's loop, not on a path inside it: a read of
    // the accumulators inside the loop made ptxas inject a warpgroup.wait at the loop's back
    // edge (C7517), serialising OVERLAP, and cost some 60 registers (sm_90a, 2:4 at BT 256).
    int kt_of_tile = 0, m_tile = m_first;
    auto compute = [&](int slot) {
      if (OVERLAP && (step++ & 1)) stage(slot, a1, a0, kt_of_tile == 0);
      else stage(slot, a0, a1, kt_of_tile == 0);
      if (++kt_of_tile < KT) return;
      kt_of_tile = 0;
      if constexpr (MT > 1) {
        drain();
        epilogue(m_tile);
        m_tile += BT;
      }
    };

    gt_pipeline<STAGES, true, OVERLAP>(tiles * KT, load_w_step, load_x, compute);
    if constexpr (MT == 1) {
      drain();
      __syncthreads();  // every warpgroup's reads of the last stage are done (its slot is the epilogue's)
      epilogue(m_first);
    }
  }
};
