// Hopper warpgroup MMA (sm_90a: compiled for the architecture-specific target, Impl.arch_suffix
// "a"), for kernels whose A operand is in registers (dequantised weights, attention's q or
// probabilities) and whose B operand is a tile in shared memory in the 128-byte swizzle: rows
// of 64 halves (128 bytes), 16-byte chunk q of row r at r * 128 + (q ^ (r % 8)) * 16 from a
// 1024-byte aligned base; read K-major (wg_desc) or MN-major (wg_desc_mn64, TRANS_B). The
// swizzle acts on shared-memory address bits: a descriptor starts at an 8-row atom, plus 32
// bytes per k16 step of a K-major tile (gt_swz<128>). PTX ISA, "Asynchronous Warpgroup Level
// Matrix Multiply-Accumulate": each warp w of the warpgroup holds rows 16 w .. 16 w + 15 of the
// m64 A and D tiles in the m16n8k16 fragment layout (D: n8 column block i in d[4 i .. 4 i + 3]).

#if CT_DTYPE == 0
#define WG_TYPE "f16"
#else
#define WG_TYPE "bf16"
#endif

// The dynamic shared memory ``raw`` from its first 1024-byte boundary: where the 128-byte
// swizzle's atoms must start (kernels ask for 1024 bytes more than they use). For the GEMMs
// (SASS unchanged); the attention's kernel keeps its own expression, which compiles shorter there.
__device__ __forceinline__ char* wg_atom_aligned(char* raw) {
  return raw + ((1024 - (gt_smem(raw) & 1023)) & 1023);
}

// Shared-memory matrix descriptor of a K-major tile with the 128-byte swizzle at smem address
// addr (16-byte aligned; its 1024-byte atom aligned): start address >> 4 in bits 0-13, leading
// byte offset (unused by this layout) 1 in 16-29, stride byte offset 1024 >> 4 (from one group
// of 8 rows to the next) in 32-45, layout 1 (128-byte swizzle) in 62-63. A k16 step inside the
// 64-wide row moves the start by 32 bytes.
__device__ __forceinline__ unsigned long long wg_desc(unsigned addr) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((1024ull >> 4) << 32) |
         (1ull << 62);
}

// The same for an MN-major tile (wgmma's B with imm-trans-b 1: B [K, N] stored with N
// contiguous), 128-byte swizzle: 64 halves of N per 128-byte row, one row per k, 8 rows (k) per
// 1024-byte atom, the next 8 k 1024 bytes further (stride byte offset). PTX ISA, "Shared Memory
// Matrix Layout", MN-major canonical layout ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)). For N <= 64
// (m = 1) the leading byte offset, to the next 64 of N, is never used: it is set to 1024 too, so
// the descriptor reads the same whichever of the two offsets the hardware takes for k. A k16
// step moves the start by 2048 bytes.
__device__ __forceinline__ unsigned long long wg_desc_mn64(unsigned addr) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((1024ull >> 4) << 16) | ((1024ull >> 4) << 32) |
         (1ull << 62);
}

// Before the first wgmma that reads registers (A fragments, accumulators) written by other
// instructions.
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keep values in their registers, live up to this point: after the wgmma.wait_group that ends
// the MMAs reading (A fragments) or writing (accumulators) them, so the compiler neither reuses
// nor moves those registers while the tensor cores still use them.
template <int N>
__device__ __forceinline__ void wg_keep(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

template <int N>
__device__ __forceinline__ void wg_keep(unsigned (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[i][e])::"memory");
}

// The accumulator operands of an m64n64 (32 registers) or m64n128 (64) wgmma: the asm outputs
// "+f"(d[i]), and their list in the instruction (operands %0 ..).
#define WG_D32 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define WG_D64 WG_D32, "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define WG_D32_LIST "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_D64_LIST "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d (fp32, 64 x N) = a (registers, 64 x 16) * b (+ d where acc != 0), N = 64 or 128 by the size
// of d; b in shared memory (descriptor), N x 16 K-major, or with TRANS_B 16 x N MN-major.
template <int TRANS_B = 0>
__device__ __forceinline__ void wg_mma(float (&d)[32], const unsigned (&a)[4], unsigned long long desc,
                                       int acc = 1) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." WG_TYPE "." WG_TYPE "\n" WG_D32_LIST
               ",\n{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
               : WG_D32
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TRANS_B));
}

template <int TRANS_B = 0>
__device__ __forceinline__ void wg_mma(float (&d)[64], const unsigned (&a)[4], unsigned long long desc,
                                       int acc = 1) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." WG_TYPE "." WG_TYPE "\n" WG_D64_LIST
               ",\n{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
               : WG_D64
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TRANS_B));
}

// The sparse form (wgmma.mma_async.sp): d (fp32, 64 x N) += A (64 x 32, 2:4 along K) * b, with
// a the compressed A (registers, 64 x 16 in the layout of a dense k16 step), e each lane's
// metadata word and SEL the sparsity selector (f16 / bf16: 0, threads 4g and 4g + 1 give it; 1,
// threads 4g + 2 and 4g + 3: per warp, the metadata register of mma.sp m16n8k32 for its 16 rows
// of m64 — PTX ISA, "Sparse wgmma.mma_async.sp with half-precision and .bf16 type"); b in shared
// memory, N x 32 K-major; d is overwritten where acc == 0.
template <int SEL>
__device__ __forceinline__ void wg_mma_sp(float (&d)[32], const unsigned (&a)[4], unsigned long long desc,
                                          unsigned e, int acc = 1) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %39, 0;\n"
               "wgmma.mma_async.sp.sync.aligned.m64n64k32.f32." WG_TYPE "." WG_TYPE "\n" WG_D32_LIST
               ",\n{%32, %33, %34, %35}, %36, %37, %38, p, 1, 1, 0;\n}\n"
               : WG_D32
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(e), "n"(SEL), "r"(acc));
}

template <int SEL>
__device__ __forceinline__ void wg_mma_sp(float (&d)[64], const unsigned (&a)[4], unsigned long long desc,
                                          unsigned e, int acc = 1) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %71, 0;\n"
               "wgmma.mma_async.sp.sync.aligned.m64n128k32.f32." WG_TYPE "." WG_TYPE "\n" WG_D64_LIST
               ",\n{%64, %65, %66, %67}, %68, %69, %70, p, 1, 1, 0;\n}\n"
               : WG_D64
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(e), "n"(SEL), "r"(acc));
}

// d (fp32, 64 x 64) = a * b (+ d where acc != 0) with both operands in shared memory, K-major
// (descriptors a_desc: 64 x 16, b_desc: 64 x 16).
__device__ __forceinline__ void wg_mma_ss(float (&d)[32], unsigned long long a_desc, unsigned long long b_desc,
                                          int acc = 1) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." WG_TYPE "." WG_TYPE "\n" WG_D32_LIST
               ",\n%32, %33, p, 1, 1, 0, 0;\n}\n"
               : WG_D32
               : "l"(a_desc), "l"(b_desc), "r"(acc));
}

// Warp specialisation (a producer warpgroup filling a ring of stages, consumer warpgroups
// computing): mbarriers in shared memory (PTX ISA, "Parallel Synchronization and Communication
// Instructions: mbarrier"), each with an expected arrival count per phase.
__device__ __forceinline__ void mb_init(unsigned long long* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(gt_smem(bar)), "r"(count) : "memory");
}

// Wait until the phase of parity ``parity`` of ``bar`` has completed.
__device__ __forceinline__ void mb_wait(unsigned long long* bar, unsigned parity) {
  asm volatile("{\n.reg .pred done;\nWAIT_%=:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
               "@!done bra WAIT_%=;\n}\n" ::"r"(gt_smem(bar)), "r"(parity) : "memory");
}

__device__ __forceinline__ void mb_arrive(unsigned long long* bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(gt_smem(bar))
               : "memory");
}

// This thread's arrival on ``bar``, made when all its cp.async issued so far have landed (noinc:
// the arrival is one of the phase's expected count).
__device__ __forceinline__ void mb_arrive_copies(unsigned long long* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(gt_smem(bar)) : "memory");
}

// Hand registers between warpgroups (setmaxnreg: every thread of the warpgroup executes it).
template <int N>
__device__ __forceinline__ void wg_regs_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void wg_regs_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }

// Named barrier ``id`` over ``threads`` threads: wait there, or only arrive (not waiting).
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
