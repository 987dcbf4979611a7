// In-register dequantisation of the packed 4-bit weight (packing.py), shared by the mma.sync
// kernel (w4a16.cu) and the wgmma one (w4a16_wgmma.cu): both take one packed 32-bit word as one
// lane's A fragment of one k16 step (the m16n8k16 A layout, which is also each warp's slice of
// the wgmma m64nNk16 A operand).
//
// (w >> 4i) & 0x000f000f | MAGIC puts two nibbles in the mantissas of two halves (fp16 1024 + q,
// or bf16 128 + q); subtracting MAGIC + z is exact, then one multiply by the scale: two half2
// operations per two weights, the "magic number" conversion that FasterTransformer and Marlin
// use, here with the zero point folded into the subtraction. (The launcher puts the config macros
// after the headers: what depends on them is a template parameter here.)

#if CT_DTYPE == 0
#define MAGIC 0x6400u  // fp16 1024.0: its last mantissa bit is worth 1
#else
#define MAGIC 0x4300u  // bf16 128.0: likewise
#endif

__device__ __forceinline__ gt_v2 w4_bits2(unsigned u) { return ct_bits<gt_v2>(u); }

// Scale and MAGIC + zero point of weight rows r (lo) and r + 8 (hi) in scale row sg of a stage:
// scales ss[sg * BN + r] (activation dtype), zeros sz[sg * BN + r] (bytes; 8 when symmetric).
struct W4Group {
  gt_v2 slo, shi, zlo, zhi;
};

template <int BN, int ASYMMETRIC>
__device__ __forceinline__ W4Group w4_group(const ct_t* ss, const unsigned char* sz, int sg, int r) {
  const ct_t lo = ss[sg * BN + r], hi = ss[sg * BN + r + 8];
  W4Group q;
  q.slo = gt_v2{lo, lo};
  q.shi = gt_v2{hi, hi};
  if constexpr (ASYMMETRIC) {
    q.zlo = w4_bits2((MAGIC | sz[sg * BN + r]) * 0x10001u);
    q.zhi = w4_bits2((MAGIC | sz[sg * BN + r + 8]) * 0x10001u);
  } else {
    q.zlo = q.zhi = w4_bits2((MAGIC | 8u) * 0x10001u);
  }
  return q;
}

// A fragment (four registers of two weights) of one k16 step from its packed word.
__device__ __forceinline__ void w4_dequant(unsigned (&a)[4], unsigned w, const W4Group& q) {
  constexpr unsigned M2 = MAGIC * 0x10001u;
  a[0] = ct_bits<unsigned>(__hmul2(__hsub2(w4_bits2((w & 0x000f000fu) | M2), q.zlo), q.slo));
  a[1] = ct_bits<unsigned>(__hmul2(__hsub2(w4_bits2(((w >> 4) & 0x000f000fu) | M2), q.zhi), q.shi));
  a[2] = ct_bits<unsigned>(__hmul2(__hsub2(w4_bits2(((w >> 8) & 0x000f000fu) | M2), q.zlo), q.slo));
  a[3] = ct_bits<unsigned>(__hmul2(__hsub2(w4_bits2(((w >> 12) & 0x000f000fu) | M2), q.zhi), q.shi));
}

// Without the scale (the small-M kernel applies it to fp32 partial sums of a group instead): the
// A fragment is q - z, exact in fp16 and bf16. In fp16 the odd nibbles need no shift: masked in
// place, (w & 0x00f000f0) | MAGIC is 1024 + 16 q, and one fma by 1/16 with -(64 + z) gives q - z
// exactly (Marlin's trick) -- one shift per word instead of three, and no multiply.
struct W4Zero {
  gt_v2 lo, hi;  // MAGIC + z of rows r and r + 8 (bf16, and fp16's even nibbles: row r only)
  gt_v2 hi16;    // fp16: -(64 + z) of row r + 8
};

template <int BN, int ASYMMETRIC>
__device__ __forceinline__ W4Zero w4_zero(const unsigned char* sz, int sg, int r) {
  const unsigned zlo = ASYMMETRIC ? sz[sg * BN + r] : 8u, zhi = ASYMMETRIC ? sz[sg * BN + r + 8] : 8u;
  W4Zero q;
  q.lo = w4_bits2((MAGIC | zlo) * 0x10001u);
  q.hi = w4_bits2((MAGIC | zhi) * 0x10001u);
#if CT_DTYPE == 0
  q.hi16 = __float2half2_rn(-64.f - static_cast<float>(zhi));
#endif
  return q;
}

__device__ __forceinline__ void w4_dequant_int(unsigned (&a)[4], unsigned w, const W4Zero& q) {
  constexpr unsigned M2 = MAGIC * 0x10001u;
#if CT_DTYPE == 0
  const gt_v2 sixteenth = __float2half2_rn(0.0625f);
  const unsigned w8 = w >> 8;
  a[0] = ct_bits<unsigned>(__hsub2(w4_bits2((w & 0x000f000fu) | M2), q.lo));
  a[1] = ct_bits<unsigned>(__hfma2(w4_bits2((w & 0x00f000f0u) | M2), sixteenth, q.hi16));
  a[2] = ct_bits<unsigned>(__hsub2(w4_bits2((w8 & 0x000f000fu) | M2), q.lo));
  a[3] = ct_bits<unsigned>(__hfma2(w4_bits2((w8 & 0x00f000f0u) | M2), sixteenth, q.hi16));
#else
  a[0] = ct_bits<unsigned>(__hsub2(w4_bits2((w & 0x000f000fu) | M2), q.lo));
  a[1] = ct_bits<unsigned>(__hsub2(w4_bits2(((w >> 4) & 0x000f000fu) | M2), q.hi));
  a[2] = ct_bits<unsigned>(__hsub2(w4_bits2(((w >> 8) & 0x000f000fu) | M2), q.lo));
  a[3] = ct_bits<unsigned>(__hsub2(w4_bits2(((w >> 12) & 0x000f000fu) | M2), q.hi));
#endif
}
