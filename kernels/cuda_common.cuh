// Shared by every CUDA kernel of conformer-trt. The launcher compiles each kernel's translation
// unit as this header followed by the kernel's .cu file, with config values as -D macros;
// CT_DTYPE picks the activation type: 0 half, 1 bfloat16, 2 float.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#ifndef CT_DTYPE
#error "CT_DTYPE must be defined (0 half, 1 bfloat16, 2 float)"
#endif
#if CT_DTYPE == 0
typedef __half ct_t;
#elif CT_DTYPE == 1
typedef __nv_bfloat16 ct_t;
#elif CT_DTYPE == 2
typedef float ct_t;
#else
#error "CT_DTYPE must be 0, 1 or 2"
#endif

typedef long long ct_i64;

__device__ __forceinline__ float ct_to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float ct_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ct_to_float(float v) { return v; }

template <typename T> __device__ __forceinline__ T ct_from_float(float v);
template <> __device__ __forceinline__ __half ct_from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 ct_from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ float ct_from_float<float>(float v) { return v; }

// VEC elements moved as one aligned access (16 bytes at most).
template <typename T, int VEC> struct alignas(sizeof(T) * VEC) ct_vec { T v[VEC]; };

__device__ __forceinline__ float ct_warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float ct_silu(float v) { return v / (1.0f + __expf(-v)); }
