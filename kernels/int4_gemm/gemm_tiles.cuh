// Tensor-core GEMM tiles shared by int4_gemm and sparse24_gemm: y[M, N] = x[M, K] · W^T.
//
// The weight is the mma's A operand (m16: 16 weight rows, row-major along K) and the activations
// are its B operand (n8: 8 tokens; x [M, K] row-major is exactly the "col" layout B wants), so the
// accumulator tile is y^T: a small M wastes at most 7 of every 8 token columns, not 15 of 16.
//
// GemmTiles<WN, WM, WARPS_N, WARPS_M, WARPS_K, STAGES, SPLIT>: WN m16 tiles and WM n8 tiles per
// warp; WARPS_N x WARPS_M x WARPS_K warps, where the WARPS_K warps split each stage's K (one
// 64-wide slice each) and are summed in the epilogue; BN = 16 WN WARPS_N weight rows and
// BM = 8 WM WARPS_M tokens per CTA; BK = 64 WARPS_K; STAGES: cp.async pipeline depth. SPLIT > 1
// (sm_90+): a thread-block cluster of SPLIT CTAs along z shares one output tile, each CTA takes
// a consecutive range of the k-tiles, and the partial tiles are summed through distributed
// shared memory -- so a small-M grid can cover the SMs with wider weight tiles, and each CTA
// reads only its share of x (at M = 16, x is twice the weight's bytes per CTA of 32 rows).
// The kernel declares the cluster with GT_CLUSTER(SPLIT), so a plain launch forms it.
//
// Fragment layouts are the PTX ISA's ("Matrix Fragments for mma.m16n8k16", "... for sparse
// mma.m16n8k32"): lane = 4 g + t; A rows g and g + 8; B column (token) g; C rows g, g + 8 and
// columns 2t, 2t + 1.

#if CT_DTYPE == 2
#error "the tensor-core GEMMs take fp16 or bf16 activations"
#endif
#if CT_DTYPE == 0
#define GT_MMA_TYPE "f16"
typedef __half2 gt_v2;
#else
#define GT_MMA_TYPE "bf16"
typedef __nv_bfloat162 gt_v2;
#endif

__device__ __forceinline__ unsigned gt_smem(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Asynchronous global -> shared copy of 8 or 16 bytes; zero-fills the destination when !pred.
template <int BYTES>
__device__ __forceinline__ void gt_cp_async(void* dst, const void* src, bool pred) {
  const int n = pred ? BYTES : 0;
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(gt_smem(dst)), "l"(src),
                 "r"(n));
  } else {
    static_assert(BYTES == 8, "8 or 16 bytes");
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(gt_smem(dst)), "l"(src),
                 "r"(n));
  }
}

// The kernel attribute declaring a cluster of S CTAs along z: GT_CLUSTER(SPLIT) (none for 1).
// Two steps, so that the configuration's SPLIT, defined after this header, is expanded first.
#define GT_CLUSTER(S) GT_CLUSTER_(S)
#define GT_CLUSTER_(S) GT_CLUSTER_##S
#define GT_CLUSTER_1
#define GT_CLUSTER_2 __cluster_dims__(1, 1, 2)
#define GT_CLUSTER_4 __cluster_dims__(1, 1, 4)

// Thread-block clusters (sm_90+): this CTA's rank, a barrier of the whole cluster (release /
// acquire, so shared-memory writes before it are seen by the other CTAs after it), and a load of
// 16 bytes at the same shared-memory offset in the CTA of another rank.
__device__ __forceinline__ unsigned gt_cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}

__device__ __forceinline__ void gt_cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" :::
               "memory");
}

__device__ __forceinline__ float4 gt_ld_cluster(const void* p, unsigned rank) {
  unsigned a;
  float4 v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(a) : "r"(gt_smem(p)), "r"(rank));
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(a)
               : "memory");
  return v;
}

__device__ __forceinline__ void gt_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void gt_cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void gt_ldmatrix_x4(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(gt_smem(p)));
}

// Where 16-byte chunk q of row r lives in a tile whose rows are RB bytes, so that the eight rows
// an ldmatrix phase reads (same chunk, eight consecutive rows from a multiple of 8) fall in eight
// different bank groups.
template <int RB>
__device__ __forceinline__ int gt_swz(int r, int q) {
  static_assert(RB % 64 == 0, "rows of 64-byte multiples");
  return RB == 64 ? q ^ ((r >> 1) & 3) : q ^ (r & 7);
}

__device__ __forceinline__ void gt_ldmatrix_x4_trans(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(gt_smem(p)));
}

__device__ __forceinline__ void gt_mma(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                       unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." GT_MMA_TYPE "." GT_MMA_TYPE
               ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c = a b (the accumulator's input is zero: SASS reads RZ, nothing to clear first)
__device__ __forceinline__ void gt_mma_first(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                             unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." GT_MMA_TYPE "." GT_MMA_TYPE
               ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %10, %10, %10};\n"
               : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.f));
}

// Copy rows [0, ROWS) x bytes [0, RB) of a global tile (row r at src + r * stride) to shared
// memory (row r at dst + r * RB, chunk q at swz(r, q)), VEC bytes per copy; rows >= rows_valid
// and bytes >= bytes_valid are zero-filled. All THREADS threads of the CTA take part.
template <int ROWS, int RB, int VEC, int THREADS, typename Swz>
__device__ __forceinline__ void gt_load_tile(char* dst, const char* src, ct_i64 stride,
                                             int rows_valid, int bytes_valid, Swz swz) {
  constexpr int PER_ROW = RB / VEC, TOTAL = ROWS * PER_ROW;
#pragma unroll
  for (int i0 = 0; i0 < TOTAL; i0 += THREADS) {
    const int i = i0 + threadIdx.x;
    if (TOTAL % THREADS == 0 || i < TOTAL) {
      const int r = i / PER_ROW, byte = (i % PER_ROW) * VEC;
      const bool ok = r < rows_valid && byte < bytes_valid;
      gt_cp_async<VEC>(dst + r * RB + swz(r, byte / 16) * 16 + byte % 16,
                       ok ? src + r * stride + byte : src, ok);
    }
  }
}

// One thread's fixed share of a tile that every stage reloads: ROWS rows of RB bytes in VEC-byte
// copies, copy i (row i / (RB / VEC)) by thread i % THREADS, as gt_load_tile does -- but each
// copy's shared offset (swizzled), source offset, row and column are computed once, so a stage
// only adds its slot and its tile's origin and checks the rows' and columns' limits. (Redoing
// that arithmetic at every stage was about a third of w4a16_gemm's small-M loop: 115 of its 319
// SASS instructions per stage, sm_90, M = 1.)
template <int ROWS, int RB, int VEC, int THREADS>
struct GtShare {
  static constexpr int PER_ROW = RB / VEC, TOTAL = ROWS * PER_ROW;
  static constexpr int N = (TOTAL + THREADS - 1) / THREADS;
  int dst[N], src[N], row[N], col[N];

  // rows ``stride`` bytes apart in global memory; chunk q of row r at swz(r, q) in shared memory
  template <typename Swz>
  __device__ __forceinline__ GtShare(int stride, Swz swz) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int i = j * THREADS + threadIdx.x, r = i / PER_ROW, byte = (i % PER_ROW) * VEC;
      row[j] = r;
      col[j] = byte;
      dst[j] = r * RB + swz(r, byte / 16) * 16 + byte % 16;
      src[j] = r * stride + byte;
    }
  }

  // rows [0, rows) and bytes [0, bytes) of the tile whose row 0 starts at ``origin``, to ``at``;
  // the rest zero-filled (reading nothing) -- or, with SKIP, rows past ``rows`` left as they are
  // (for rows that only ever meet output rows or columns that are not stored)
  template <bool SKIP = false>
  __device__ __forceinline__ void load(char* at, const char* origin, int rows, int bytes) const {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if ((TOTAL % THREADS == 0 || j * THREADS + static_cast<int>(threadIdx.x) < TOTAL) &&
          (!SKIP || row[j] < rows)) {
        const bool ok = row[j] < rows && col[j] < bytes;
        gt_cp_async<VEC>(at + dst[j], origin + (ok ? src[j] : 0), ok);
      }
    }
  }
};

// The cp.async pipeline: load_w(slot, kt) and load_x(slot, kt) fill a stage with its weight
// and activation tiles, compute(slot) consumes one; STAGES - 1 stages are in flight while one
// is computed. The weight of the first STAGES - 1 stages is requested before waiting for the
// grid ahead of this one (ct_wait_for_predecessor): it is a constant of the engine that no
// kernel writes, so under a programmatic dependent launch its fetch overlaps the predecessor's
// tail. (The first wait then covers all of those weight tiles; later stages are one group each.)
// ASYNC_READS: compute reads the stage through the async proxy (wgmma operand descriptors), so
// each thread's cp.async writes are made visible to it (fence.proxy.async) before the barrier.
// LAG: how many stages' reads compute() may leave in flight when it returns (0: it is done with
// its slot; 1: the previous stage's asynchronous reads end only in the next compute, so the
// loads run one stage less ahead, STAGES >= 3, and the caller drains the last one).
template <int STAGES, bool ASYNC_READS, int LAG, typename LoadW, typename LoadX, typename Compute>
__device__ __forceinline__ void gt_pipeline(int KT, LoadW load_w, LoadX load_x, Compute compute) {
  constexpr int AHEAD = STAGES - 1 - LAG;  // stages requested before the first is computed
  static_assert(AHEAD >= 1, "too few stages for the lag");
#pragma unroll
  for (int s = 0; s < AHEAD; ++s)
    if (s < KT) load_w(s, s);
  ct_wait_for_predecessor();
#pragma unroll
  for (int s = 0; s < AHEAD; ++s) {
    if (s < KT) load_x(s, s);
    gt_cp_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    gt_cp_wait<AHEAD - 1>();
    if constexpr (ASYNC_READS) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();  // stage kt is visible, and everyone is done with the slot reloaded below
    const int next = kt + AHEAD;
    if (next < KT) {
      load_w(next % STAGES, next);
      load_x(next % STAGES, next);
    }
    gt_cp_commit();
    compute(kt % STAGES);
  }
  gt_cp_wait<0>();
  __syncthreads();
}

template <int WN_, int WM_, int WARPS_N_, int WARPS_M_, int WARPS_K_, int STAGES_, int SPLIT_>
struct GemmTiles {
  static constexpr int WN = WN_, WM = WM_, WARPS_N = WARPS_N_, WARPS_M = WARPS_M_;
  static constexpr int WARPS_K = WARPS_K_, STAGES = STAGES_, SPLIT = SPLIT_;
  static constexpr int BN = 16 * WN * WARPS_N, BM = 8 * WM * WARPS_M, BK = 64 * WARPS_K;
  static constexpr int THREADS = 32 * WARPS_N * WARPS_M * WARPS_K;
  static constexpr int EPILOGUE_LD = BN + 4;  // floats; keeps the fragment writes conflict-free
  static constexpr int RED_BYTES = WARPS_K * BM * EPILOGUE_LD * 4;
  // the WARPS_K partial tiles, then (SPLIT > 1) this CTA's sum of them for the cluster to read
  static constexpr int EPILOGUE_BYTES = RED_BYTES + (SPLIT > 1 ? BM * BN * 4 : 0);

  // Where this thread sits: lane = 4 g + t; warp (wn, wm, wk) of the CTA.
  struct Place {
    int lane, g, t, wn, wm, wk;
  };
  static __device__ __forceinline__ Place place() {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    return {lane, lane >> 2, lane & 3, warp % WARPS_N, (warp / WARPS_N) % WARPS_M,
            warp / (WARPS_N * WARPS_M)};
  }

  static __device__ __forceinline__ void zero(float (&acc)[WN][WM][4]) {
#pragma unroll
    for (int i = 0; i < WN; ++i)
#pragma unroll
      for (int j = 0; j < WM; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
  }

  template <int ROWS, int RB, int VEC, typename Swz>
  static __device__ __forceinline__ void load_tile(char* dst, const char* src, ct_i64 stride,
                                                   int rows_valid, int bytes_valid, Swz swz) {
    gt_load_tile<ROWS, RB, VEC, THREADS>(dst, src, stride, rows_valid, bytes_valid, swz);
  }

  // The activation tile of one stage: x[m0 : m0 + BM, k0 : k0 + BK] as BM rows of BK halves.
  template <int XVEC>
  static __device__ __forceinline__ void load_x(char* dst, const ct_t* x, int M, int K, int m0,
                                                int k0) {
    load_tile<BM, 2 * BK, XVEC>(dst, reinterpret_cast<const char*>(x + (ct_i64)m0 * K + k0),
                                2 * (ct_i64)K, M - m0, 2 * (K - k0), gt_swz<2 * BK>);
  }

  // B fragments of the n8 tile at token row0 for the 32 K values of half h of warp slice wk:
  // b[i] holds k 8i + 2t, 8i + 2t + 1 (i = 0..3), i.e. two m16n8k16 steps or one m16n8k32 step.
  static __device__ __forceinline__ void b_frag(unsigned (&b)[4], const char* sx, int row0, int wk,
                                                int h, int lane) {
    const int row = row0 + (lane & 7), q = wk * 8 + 4 * h + (lane >> 3);
    gt_ldmatrix_x4(b, sx + row * (2 * BK) + gt_swz<2 * BK>(row, q) * 16);
  }

  // The KT k-tiles of K, or with SPLIT > 1 this cluster rank's consecutive share of them
  // (load_w and load_x still see the k-tile's index in the whole K).
  template <typename LoadW, typename LoadX, typename Compute>
  static __device__ __forceinline__ void pipeline(int KT, LoadW load_w, LoadX load_x,
                                                  Compute compute) {
    if constexpr (SPLIT == 1) {
      gt_pipeline<STAGES, false, 0>(KT, load_w, load_x, compute);
    } else {
      const int per = (KT + SPLIT - 1) / SPLIT, kt0 = static_cast<int>(gt_cluster_rank()) * per;
      gt_pipeline<STAGES, false, 0>(
          max(0, min(per, KT - kt0)), [&](int slot, int kt) { load_w(slot, kt0 + kt); },
          [&](int slot, int kt) { load_x(slot, kt0 + kt); }, compute);
    }
  }

  // Sum the WARPS_K partial tiles through shared memory (RED_BYTES), and with SPLIT > 1 the
  // cluster's SPLIT partial sums through distributed shared memory (each rank stores every
  // SPLIT-th chunk of 8 outputs); add the bias and store y[m0.., n0..] with 16-byte stores where
  // a row of 8 outputs is whole and aligned.
  template <int BIAS_ON>
  static __device__ __forceinline__ void epilogue(const float (&acc)[WN][WM][4], char* smem,
                                                  ct_t* __restrict__ y,
                                                  const ct_t* __restrict__ bias, int M, int N,
                                                  int m0, int n0, Place p) {
    constexpr int LD = EPILOGUE_LD, CHUNKS = BM * BN / 8;
    float* red = reinterpret_cast<float*>(smem);
    float* mine = red + p.wk * BM * LD;
    const int g = p.g, t = p.t, wn = p.wn, wm = p.wm;
#pragma unroll
    for (int i = 0; i < WN; ++i)
#pragma unroll
      for (int j = 0; j < WM; ++j) {
        const int n = (wn * WN + i) * 16 + g, m = (wm * WM + j) * 8 + 2 * t;
        mine[m * LD + n] = acc[i][j][0];
        mine[(m + 1) * LD + n] = acc[i][j][1];
        mine[m * LD + n + 8] = acc[i][j][2];
        mine[(m + 1) * LD + n + 8] = acc[i][j][3];
      }
    __syncthreads();
    auto sum_warps = [&](int c, float (&v)[8]) {
      const int m = c / (BN / 8), n = (c % (BN / 8)) * 8;
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = 0.f;
#pragma unroll
      for (int s = 0; s < WARPS_K; ++s) {
        const float4* q = reinterpret_cast<const float4*>(red + (s * BM + m) * LD + n);
        add8(v, q[0], q[1]);
      }
    };
    float v[8];
    if constexpr (SPLIT == 1) {
      for (int c = threadIdx.x; c < CHUNKS; c += THREADS) {
        if (m0 + c / (BN / 8) >= M || n0 + (c % (BN / 8)) * 8 >= N) continue;  // past the edge
        sum_warps(c, v);
        store8<BIAS_ON>(v, c, y, bias, M, N, m0, n0);
      }
    } else {
      float4* part = reinterpret_cast<float4*>(smem + RED_BYTES);  // [CHUNKS][2]
      for (int c = threadIdx.x; c < CHUNKS; c += THREADS) {
        sum_warps(c, v);
        part[2 * c] = make_float4(v[0], v[1], v[2], v[3]);
        part[2 * c + 1] = make_float4(v[4], v[5], v[6], v[7]);
      }
      gt_cluster_sync();
      for (int c = gt_cluster_rank() + SPLIT * threadIdx.x; c < CHUNKS; c += SPLIT * THREADS) {
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = 0.f;
#pragma unroll
        for (int r = 0; r < SPLIT; ++r) add8(v, gt_ld_cluster(part + 2 * c, r), gt_ld_cluster(part + 2 * c + 1, r));
        store8<BIAS_ON>(v, c, y, bias, M, N, m0, n0);
      }
      gt_cluster_sync();  // no CTA leaves while another still reads its shared memory
    }
  }

  static __device__ __forceinline__ void add8(float (&v)[8], float4 lo, float4 hi) {
    v[0] += lo.x; v[1] += lo.y; v[2] += lo.z; v[3] += lo.w;
    v[4] += hi.x; v[5] += hi.y; v[6] += hi.z; v[7] += hi.w;
  }

  // Chunk c of the tile (8 outputs of one token row), bias added, stored where it lies in y.
  template <int BIAS_ON>
  static __device__ __forceinline__ void store8(const float (&v)[8], int c, ct_t* __restrict__ y,
                                                const ct_t* __restrict__ bias, int M, int N,
                                                int m0, int n0) {
    const int gm = m0 + c / (BN / 8), gn = n0 + (c % (BN / 8)) * 8;
    if (gm >= M || gn >= N) return;
    ct_t* out = y + (ct_i64)gm * N + gn;
    if (N % 8 == 0) {  // then gn + 8 <= N, and the row start is 16-byte aligned
      ct_vec<ct_t, 8> o;
#pragma unroll
      for (int e = 0; e < 8; ++e)
        o.v[e] = ct_from_float<ct_t>(v[e] + (BIAS_ON ? ct_to_float(bias[gn + e]) : 0.f));
      *reinterpret_cast<ct_vec<ct_t, 8>*>(out) = o;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (gn + e < N)
          out[e] = ct_from_float<ct_t>(v[e] + (BIAS_ON ? ct_to_float(bias[gn + e]) : 0.f));
    }
  }
};
