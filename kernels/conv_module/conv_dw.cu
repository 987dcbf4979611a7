// The Conformer conv module's middle stage: depthwise conv over time with BatchNorm folded into
// its weights, SiLU, and the padding mask:
//   z[b, t, c] = t < len_b ? silu(dw_b[c] + sum_j hx[b, t - LEFT + j, c] * dw_w[c, j]) : 0
// where hx is h (GLU output) at frames [0, len_b) and, elsewhere, the value WeNet's masking gives:
// glu(b1)[c] at frames that were masked or causally prepended at the module's input
// (MASK_AFTER_GLU 0), 0 for the "same" padding outside [0, T) and, with MASK_AFTER_GLU 1,
// everywhere outside [0, len_b).
// len_b = lengths[b] clamped to [0, T]: no length makes the kernel read outside h.
//
// Macros: CH (channels), KS (kernel size), LEFT (KS-1 causal, (KS-1)/2 same), IS_CAUSAL,
// MASK_AFTER_GLU, TT (frames per block), TC (channels per block), VEC (channels per thread),
// R (frames per thread), LVEC (elements per staging access, 16 bytes where CH and TC allow).
// A block stages its TT frames plus the KS-1 halo for TC channels in shared memory, reading h once
// with all of a thread's loads in flight together; each thread then slides over its R output
// frames with R x VEC accumulators in registers: every staged value is read once per thread and
// used up to KS times, and weight j is loaded once and live only while the window passes frames
// j .. j+R-1. The block's weights are staged too, transposed to [KS][TC + 1], from one coalesced
// read of dw_w's contiguous [TC x KS] slice: read per thread from global memory, each weight load
// of a warp touched as many cache lines as the warp has channels (dw_w is [CH, KS]).
// Grid: (ceil(T / TT), B, ceil(CH / TC)); CH % LVEC == 0, TC % LVEC == 0.

#define HALO (KS - 1)
#define ROWS (TT + HALO)
#define CV (TC / VEC)                 // threads across a block's channels
#define THREADS (CV * (TT / R))
#define LV (TC / LVEC)                // staging accesses per row
#define STAGE_ITERS ((ROWS * LV + THREADS - 1) / THREADS)

typedef ct_vec<ct_t, VEC> vec_t;
typedef ct_vec<ct_t, LVEC> lvec_t;

__device__ __forceinline__ float ct_sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

extern "C" __global__ void __launch_bounds__(THREADS)
conv_dw_silu(const ct_t* __restrict__ h, const int* __restrict__ lengths,
             const ct_t* __restrict__ b1, const float* __restrict__ dw_w,
             const float* __restrict__ dw_b, ct_t* __restrict__ z, int T) {
  __shared__ __align__(16) ct_t tile[ROWS][TC];
  __shared__ __align__(16) ct_t fill[TC];  // glu(b1): a masked input frame at the conv (WeNet)
  __shared__ float wt[KS][TC + 1];          // dw_w[c0 + i][j] at wt[j][i], padded against conflicts
  const int t0 = blockIdx.x * TT;
  const int c0 = blockIdx.z * TC;
  const ct_i64 base = (ct_i64)blockIdx.y * T;

  // the weights are staged while the GEMM before this kernel drains (they are the module's
  // parameters: no kernel of the module writes them); h and lengths are read after the wait
  for (int i = threadIdx.x; i < TC * KS; i += THREADS) {
    const int ci = i / KS, j = i % KS;
    wt[j][ci] = c0 + ci < CH ? dw_w[(ct_i64)c0 * KS + i] : 0.f;
  }
  if (!MASK_AFTER_GLU) {
    for (int i = threadIdx.x; i < TC; i += THREADS) {
      const int c = c0 + i;
      fill[i] = ct_from_float<ct_t>(
          c < CH ? ct_to_float(b1[c]) * ct_sigmoid(ct_to_float(b1[CH + c])) : 0.f);
    }
    __syncthreads();
  }
  ct_wait_for_predecessor();
  const int len = min(max(lengths[blockIdx.y], 0), T);
#pragma unroll
  for (int it = 0; it < STAGE_ITERS; ++it) {
    const int i = threadIdx.x + it * THREADS;
    if (i < ROWS * LV) {
      const int r = i / LV, cl = i % LV * LVEC;
      const int s = t0 - LEFT + r, c = c0 + cl;
      lvec_t v;
      if (c < CH && s >= 0 && s < len) {
        v = *reinterpret_cast<const lvec_t*>(h + (base + s) * CH + c);
      } else if (!MASK_AFTER_GLU && c < CH && s < T && (IS_CAUSAL || s >= 0)) {
        v = *reinterpret_cast<const lvec_t*>(&fill[cl]);
      } else {
#pragma unroll
        for (int k = 0; k < LVEC; ++k) v.v[k] = ct_from_float<ct_t>(0.f);
      }
      *reinterpret_cast<lvec_t*>(&tile[r][cl]) = v;
    }
  }
  __syncthreads();

  const int cv = threadIdx.x % CV;
  const int f0 = threadIdx.x / CV * R;  // this thread's first frame within the block
  const int c = c0 + cv * VEC;
  if (c >= CH || t0 + f0 >= T) return;
  float acc[R][VEC];
  if (t0 + f0 < len) {  // else every frame of the run is padding: 0
    float w[VEC][KS];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
#pragma unroll
      for (int j = 0; j < KS; ++j) w[k][j] = wt[j][cv * VEC + k];
#pragma unroll
      for (int i = 0; i < R; ++i) acc[i][k] = dw_b[c + k];
    }
#pragma unroll
    for (int s = 0; s < R + HALO; ++s) {
      const vec_t v = *reinterpret_cast<const vec_t*>(&tile[f0 + s][cv * VEC]);
#pragma unroll
      for (int i = 0; i < R; ++i) {
        if (s - i >= 0 && s - i < KS) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc[i][k] += ct_to_float(v.v[k]) * w[k][s - i];
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int t = t0 + f0 + i;
    if (t >= T) break;
    vec_t out;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      out.v[k] = ct_from_float<ct_t>(t < len ? ct_silu(acc[i][k]) : 0.f);
    *reinterpret_cast<vec_t*>(z + (base + t) * CH + c) = out;
  }
}
