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

// Programmatic dependent launch (sm_90+): wait until the grid before this one has completed and
// its memory is visible, then let the next grid launch. Call it before the first access to
// memory an earlier kernel may write or read. No-ops when the launch was not a dependent one;
// absent before sm_90.
__device__ __forceinline__ void ct_wait_for_predecessor() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// VEC elements moved as one aligned access (16 bytes at most).
template <typename T, int VEC> struct alignas(sizeof(T) * VEC) ct_vec { T v[VEC]; };

__device__ __forceinline__ float ct_warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float ct_silu(float v) { return v / (1.0f + __expf(-v)); }

// Global loads/stores of a 2-, 4-, 8- or 16-byte value; STREAM marks them read-once / write-once
// (ld.global.cs / st.global.cs) so activations do not evict weights from L2.
template <typename V, typename U> __device__ __forceinline__ V ct_bits(U u) {
  static_assert(sizeof(U) == sizeof(V), "size mismatch");
  V v;
  memcpy(&v, &u, sizeof(V));
  return v;
}

template <int STREAM, typename V> __device__ __forceinline__ V ct_ld(const V* p) {
  if constexpr (!STREAM) {
    return *p;
  } else if constexpr (sizeof(V) == 16) {
    return ct_bits<V>(__ldcs(reinterpret_cast<const uint4*>(p)));
  } else if constexpr (sizeof(V) == 8) {
    return ct_bits<V>(__ldcs(reinterpret_cast<const uint2*>(p)));
  } else if constexpr (sizeof(V) == 4) {
    return ct_bits<V>(__ldcs(reinterpret_cast<const unsigned*>(p)));
  } else {
    static_assert(sizeof(V) == 2, "2, 4, 8 or 16 bytes");
    return ct_bits<V>(__ldcs(reinterpret_cast<const unsigned short*>(p)));
  }
}

template <int STREAM, typename V> __device__ __forceinline__ void ct_st(V* p, const V& v) {
  if constexpr (!STREAM) {
    *p = v;
  } else if constexpr (sizeof(V) == 16) {
    __stcs(reinterpret_cast<uint4*>(p), ct_bits<uint4>(v));
  } else if constexpr (sizeof(V) == 8) {
    __stcs(reinterpret_cast<uint2*>(p), ct_bits<uint2>(v));
  } else if constexpr (sizeof(V) == 4) {
    __stcs(reinterpret_cast<unsigned*>(p), ct_bits<unsigned>(v));
  } else {
    static_assert(sizeof(V) == 2, "2, 4, 8 or 16 bytes");
    __stcs(reinterpret_cast<unsigned short*>(p), ct_bits<unsigned short>(v));
  }
}
