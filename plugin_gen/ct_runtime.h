// conformer-trt plugin library: the tables the generator writes (ct_kernels.cpp), and the runtime
// that serves them (ct_runtime.cpp) to the C ABI and to the TensorRT layer (ct_trt.cpp).
//
// Everything kernel-specific is data: a kernel's dims, tensors and scalars as its contract
// declares them, and one Variant per tuned winner (dtype, bucket, launches). A Launch names a
// function of an embedded cubin, a generated function computing its grid/threads/shared memory
// from the runtime dims, and its parameters by kind and index.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#define CT_EXPORT extern "C" __attribute__((visibility("default")))

typedef struct CUstream_st* CUstream;  // the driver's stream handle, as cuda.h declares it

// The calls of kernels.expr's grammar, as kernels.expr.to_c emits them (operands are >= 0).
#define CT_CDIV(a, b) ::ct::cdiv((a), (b))
#define CT_MIN(a, b) ::ct::min64((a), (b))
#define CT_MAX(a, b) ::ct::max64((a), (b))

namespace ct {

inline int64_t cdiv(int64_t a, int64_t b) { return b ? (a + b - 1) / b : 0; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Status codes of the C ABI (conformer_trt.h repeats them for users).
enum Status : int32_t {
  OK = 0,
  INVALID_ARGUMENT = 1,     // a dim out of range, a missing/misaligned pointer, a bad dtype code
  UNSUPPORTED = 2,          // no tuned winner in this library for these static dims and dtype
  WORKSPACE_TOO_SMALL = 3,  // the workspace given is smaller than the call needs
  CUDA_ERROR = 4,           // a CUDA driver call failed (the message names it)
  NO_DRIVER = 5,            // libcuda.so.1 could not be loaded, or no CUDA context is current
  WRONG_GPU = 6,            // the GPU is not of the architecture this library was built for
};

// Data types: activations are float16/bfloat16/float32 (the kernels' CT_DTYPE codes); tensors
// with a fixed dtype use the others. ACT marks a tensor whose dtype is the activation dtype.
enum DType : int32_t { FLOAT16 = 0, BFLOAT16 = 1, FLOAT32 = 2, INT32 = 3, INT64 = 4, UINT8 = 5,
                       INT8 = 6, ACT = -1 };

enum ArgKind : int32_t { ARG_TENSOR = 0, ARG_WORKSPACE = 1, ARG_DIM_I32 = 2, ARG_DIM_I64 = 3,
                         ARG_SCALAR = 4 };

struct Arg {
  int32_t kind;   // ArgKind
  int32_t index;  // into the kernel's tensors, the variant's workspaces, dims or scalars
};

struct Geometry {
  int64_t grid[3];
  int64_t threads;
  int64_t smem;  // dynamic shared memory, bytes
};

typedef void (*GeometryFn)(const int64_t* dims, Geometry* out);
typedef void (*SizesFn)(const int64_t* dims, int64_t* bytes);  // one size per workspace
typedef void (*ExtentsFn)(int32_t tensor, const int64_t* dims, int64_t* extents);

struct Binary {
  const unsigned char* data;
  size_t size;
};

struct Function {
  int32_t binary;
  const char* entry;  // the kernel's name in the cubin
  int64_t smem_attr;  // max dynamic shared memory to allow: 0 the default, -1 the device's limit
};

struct Launch {
  int32_t function;
  GeometryFn geometry;
  const Arg* args;
  int32_t n_args;
  int32_t n_scratch;  // trailing null pointers (Triton's global/profile scratch parameters)
  bool pdl;           // a programmatic dependent launch: the kernel waits for its predecessor
};

struct Variant {
  int32_t dtype;
  const int64_t* bucket;  // one value per dim
  const Launch* launches;
  int32_t n_launches;
  SizesFn workspaces;  // null when there are none
  int32_t n_workspaces;
};

struct DimDesc {
  const char* name;
  int64_t lo, hi;
  bool dynamic;
  bool i64;            // passed to kernels as int64 (else int32)
  int32_t src_tensor;  // dynamic dims: the always-present input whose extent it is (TensorRT)
  int32_t src_axis;
};

struct TensorDesc {
  const char* name;
  bool output;
  int32_t dtype;  // DType; ACT for the activation dtype
  int32_t when;   // index of the switch dim that makes it present, or -1
  int32_t rank;
};

struct KernelDesc {
  const char* name;
  const DimDesc* dims;
  int32_t n_dims;
  const TensorDesc* tensors;
  int32_t n_tensors;
  const char* const* scalars;
  const float* scalar_defaults;
  int32_t n_scalars;
  ExtentsFn extents;
  const Variant* variants;
  int32_t n_variants;
};

struct Library {
  const char* gpu;
  const char* arch;
  int32_t cc_major, cc_minor;
  const Binary* binaries;
  int32_t n_binaries;
  const Function* functions;
  int32_t n_functions;
  const KernelDesc* const* kernels;
  int32_t n_kernels;
  const char* manifest;  // JSON
};

extern const Library kLibrary;  // defined by the generated tables

constexpr int kMaxDims = 16;
constexpr int kMaxTensors = 32;
constexpr int kMaxParams = 64;

// Records the calling thread's last error (ct_last_error) and returns status.
int32_t fail(int32_t status, const std::string& message);
const char* last_error();
const char* dtype_name(int32_t dtype);

// The GPU of the current context (device 0 when none is current) is the library's architecture.
int32_t check_device();
// Dims inside the contract's ranges.
int32_t check_dims(const KernelDesc& k, const int64_t* dims);
bool tensor_present(const KernelDesc& k, int32_t tensor, const int64_t* dims);
// The variant serving (dtype, dims): kernels.contract.nearest_bucket among the variants of that
// dtype, in table order. -1 (error recorded) when none has the static dims.
int32_t select(const KernelDesc& k, int32_t dtype, const int64_t* dims);
// Workspace of the variant select() picks; the largest over every variant of (dtype, static dims).
int32_t workspace_size(const KernelDesc& k, int32_t dtype, const int64_t* dims, size_t* bytes);
size_t max_workspace_size(const KernelDesc& k, int32_t dtype, const int64_t* dims);
// A variant exists for this dtype and these static dims (TensorRT format negotiation).
bool has_variant(const KernelDesc& k, int32_t dtype, const int64_t* dims);
// Validate, select, and enqueue the variant's launches on stream. tensors: one pointer per tensor
// in declaration order (null for absent optional ones), dims and scalars likewise.
int32_t launch(const KernelDesc& k, int32_t dtype, const void* const* tensors, const int64_t* dims,
               const float* scalars, void* workspace, size_t workspace_bytes, CUstream stream);
const KernelDesc* find_kernel(const char* name);

}  // namespace ct
