// LayerNorm forward with optional fused residual add: s = x + r; y = (s - mean) * rstd * w + b.
// Statistics in fp32 over values held in registers (two passes over registers, one over memory).
// Macros: N (hidden), VEC (elements per access), WARPS_PER_ROW, ROWS_PER_BLOCK, RESIDUAL (0/1),
// STREAM (0/1: streaming loads/stores for the activations).
// Block: ROWS_PER_BLOCK * WARPS_PER_ROW warps; each group of WARPS_PER_ROW warps owns one row.

#define TPR (WARPS_PER_ROW * 32)
#define ITERS ((N + VEC * TPR - 1) / (VEC * TPR))

template <int W>
__device__ __forceinline__ float row_sum(float v, float (*partial)[W], int row_in_block, int warp,
                                         int lane) {
  v = ct_warp_sum(v);
  if (W == 1) return v;
  if (lane == 0) partial[row_in_block][warp] = v;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < W; ++i) total += partial[row_in_block][i];
  __syncthreads();  // partial is reused by the next reduction
  return total;
}

extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK * TPR)
layernorm_fwd(const ct_t* __restrict__ x, const ct_t* __restrict__ r, const ct_t* __restrict__ w,
              const ct_t* __restrict__ b, ct_t* __restrict__ y, ct_t* __restrict__ s, int rows,
              float eps) {
  typedef ct_vec<ct_t, VEC> vec_t;
  __shared__ float partial[ROWS_PER_BLOCK][WARPS_PER_ROW];
  ct_wait_for_predecessor();
  const int row_in_block = threadIdx.x / TPR;
  const int t = threadIdx.x % TPR;
  const int warp = t / 32, lane = t % 32;
  const ct_i64 row = (ct_i64)blockIdx.x * ROWS_PER_BLOCK + row_in_block;
  const bool active = row < rows;  // inactive threads still take part in the barriers
  const ct_i64 base = row * N;

  float v[ITERS][VEC];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    const int col = (i * TPR + t) * VEC;
    const bool in = active && col < N;
    vec_t a, c;
    if (in) a = ct_ld<STREAM>(reinterpret_cast<const vec_t*>(x + base + col));
#if RESIDUAL
    if (in) c = ct_ld<STREAM>(reinterpret_cast<const vec_t*>(r + base + col));
#endif
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float f = in ? ct_to_float(a.v[j]) : 0.f;
#if RESIDUAL
      if (in) f += ct_to_float(c.v[j]);
      a.v[j] = ct_from_float<ct_t>(f);
#endif
      v[i][j] = f;
      sum += f;
    }
#if RESIDUAL
    if (in) ct_st<STREAM>(reinterpret_cast<vec_t*>(s + base + col), a);
#endif
  }
  const float mean = row_sum<WARPS_PER_ROW>(sum, partial, row_in_block, warp, lane) * (1.f / N);
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    const bool in = active && (i * TPR + t) * VEC < N;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      v[i][j] = in ? v[i][j] - mean : 0.f;
      sq += v[i][j] * v[i][j];
    }
  }
  const float var = row_sum<WARPS_PER_ROW>(sq, partial, row_in_block, warp, lane) * (1.f / N);
  const float rstd = rsqrtf(var + eps);
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    const int col = (i * TPR + t) * VEC;
    if (!(active && col < N)) continue;
    const vec_t wv = *reinterpret_cast<const vec_t*>(w + col);
    const vec_t bv = *reinterpret_cast<const vec_t*>(b + col);
    vec_t out;
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      out.v[j] = ct_from_float<ct_t>(v[i][j] * rstd * ct_to_float(wv.v[j]) + ct_to_float(bv.v[j]));
    ct_st<STREAM>(reinterpret_cast<vec_t*>(y + base + col), out);
  }
}
