// conformer-trt plugin library runtime: the CUDA driver loaded at run time, per-context modules,
// bucket dispatch, argument checks, launches, and the generic C entry points.
//
// The driver is opened with dlopen("libcuda.so.1") and its entry points found with dlsym (as
// Triton's own launcher does), so the library links on machines without a driver; cuda.h only
// supplies types. Modules are loaded once per CUDA context, under a mutex; each thread keeps the
// last context it used, so a launch takes no lock after its context's first one.
#include "ct_runtime.h"

#include <cuda.h>
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

namespace ct {
namespace {

thread_local std::string t_error;

#define CT_DRIVER_FUNCTIONS(X)                                                              \
  X(cuInit) X(cuGetErrorName) X(cuGetErrorString) X(cuCtxGetCurrent) X(cuCtxGetDevice)      \
  X(cuDeviceGet) X(cuDeviceGetAttribute) X(cuDeviceGetName) X(cuModuleLoadData)              \
  X(cuModuleGetFunction) X(cuFuncGetAttribute) X(cuFuncSetAttribute) X(cuLaunchKernel)

struct Driver {
  std::string error;  // empty once every entry point is found and cuInit succeeded
#define CT_MEMBER(name) decltype(&::name) name = nullptr;
  CT_DRIVER_FUNCTIONS(CT_MEMBER)
#undef CT_MEMBER
  // CUDA 12.0+, for programmatic dependent launches; without it those launches are plain ones
  // (the kernels' waits then return at once, the stream having ordered them already)
  decltype(&::cuLaunchKernelEx) cuLaunchKernelEx = nullptr;
};

std::string cu_error(const Driver& d, CUresult r, const char* call) {
  const char* name = nullptr;
  const char* text = nullptr;
  if (d.cuGetErrorName) d.cuGetErrorName(r, &name);
  if (d.cuGetErrorString) d.cuGetErrorString(r, &text);
  return std::string(call) + " failed: " + (name ? name : std::to_string(static_cast<int>(r))) +
         (text ? std::string(" (") + text + ")" : std::string());
}

const Driver& driver() {
  static const Driver loaded = [] {
    Driver d;
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* why = dlerror();
      d.error = std::string("the CUDA driver (libcuda.so.1) could not be loaded: ") +
                (why ? why : "unknown reason") + "; a GPU and its driver are needed to run kernels";
      return d;
    }
#define CT_LOAD(name)                                                          \
  d.name = reinterpret_cast<decltype(&::name)>(dlsym(lib, #name));             \
  if (!d.name) {                                                               \
    d.error = "libcuda.so.1 has no " #name "; the CUDA driver is too old";     \
    return d;                                                                  \
  }
    CT_DRIVER_FUNCTIONS(CT_LOAD)
#undef CT_LOAD
    d.cuLaunchKernelEx =
        reinterpret_cast<decltype(&::cuLaunchKernelEx)>(dlsym(lib, "cuLaunchKernelEx"));
    CUresult r = d.cuInit(0);
    if (r != CUDA_SUCCESS) d.error = cu_error(d, r, "cuInit");
    return d;
  }();
  return loaded;
}

struct ContextState {
  std::vector<CUfunction> functions;  // kLibrary.functions, loaded in this context
};

std::mutex g_mutex;
// Never destroyed: launches may come from other threads while the process exits.
auto* g_states = new std::map<CUcontext, std::unique_ptr<ContextState>>();
thread_local CUcontext t_context = nullptr;
thread_local const ContextState* t_state = nullptr;

std::string arch_of(int major, int minor) {
  return "sm_" + std::to_string(major) + std::to_string(minor);
}

int32_t check_cc(const Driver& d, CUdevice dev) {
  int major = 0, minor = 0;
  CUresult r = d.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
  if (r == CUDA_SUCCESS)
    r = d.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
  if (r != CUDA_SUCCESS) return fail(CUDA_ERROR, cu_error(d, r, "cuDeviceGetAttribute"));
  if (major == kLibrary.cc_major && minor == kLibrary.cc_minor) return OK;
  char name[256] = "unknown GPU";
  d.cuDeviceGetName(name, sizeof(name), dev);
  return fail(WRONG_GPU, std::string("this conformer-trt library holds kernels built and tuned "
                                     "for ") + kLibrary.gpu + " (" + kLibrary.arch +
                             "); the current GPU is " + name + " (" + arch_of(major, minor) +
                             "): build a library for it (plugin-gen build --gpu ...)");
}

int32_t load_context(const Driver& d, std::unique_ptr<ContextState>* out) {  // the current context
  CUdevice dev;
  CUresult r = d.cuCtxGetDevice(&dev);
  if (r != CUDA_SUCCESS) return fail(CUDA_ERROR, cu_error(d, r, "cuCtxGetDevice"));
  if (int32_t st = check_cc(d, dev)) return st;
  int optin = 0;
  r = d.cuDeviceGetAttribute(&optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev);
  if (r != CUDA_SUCCESS) return fail(CUDA_ERROR, cu_error(d, r, "cuDeviceGetAttribute"));
  std::vector<CUmodule> modules(kLibrary.n_binaries, nullptr);
  for (int32_t b = 0; b < kLibrary.n_binaries; ++b) {
    r = d.cuModuleLoadData(&modules[b], kLibrary.binaries[b].data);
    if (r != CUDA_SUCCESS)
      return fail(CUDA_ERROR, cu_error(d, r, "cuModuleLoadData") + " for embedded binary " +
                                  std::to_string(b));
  }
  auto state = std::make_unique<ContextState>();
  state->functions.resize(kLibrary.n_functions);
  for (int32_t f = 0; f < kLibrary.n_functions; ++f) {
    const Function& fn = kLibrary.functions[f];
    CUfunction h;
    r = d.cuModuleGetFunction(&h, modules[fn.binary], fn.entry);
    if (r != CUDA_SUCCESS)
      return fail(CUDA_ERROR, cu_error(d, r, "cuModuleGetFunction") + " for " + fn.entry);
    int64_t allow = fn.smem_attr;
    if (allow < 0) {
      int static_smem = 0;
      r = d.cuFuncGetAttribute(&static_smem, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, h);
      if (r != CUDA_SUCCESS) return fail(CUDA_ERROR, cu_error(d, r, "cuFuncGetAttribute"));
      allow = optin - static_smem;
    }
    if (allow > 0) {
      r = d.cuFuncSetAttribute(h, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                               static_cast<int>(allow));
      // the whole L1 / shared split as shared memory: as many CTAs per multiprocessor as their
      // shared memory allows (kernels/driver.py does the same)
      if (r == CUDA_SUCCESS)
        r = d.cuFuncSetAttribute(h, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                                 CU_SHAREDMEM_CARVEOUT_MAX_SHARED);
      if (r != CUDA_SUCCESS)
        return fail(CUDA_ERROR, cu_error(d, r, "cuFuncSetAttribute") + " for " + fn.entry);
    }
    state->functions[f] = h;
  }
  *out = std::move(state);
  return OK;
}

// The calling thread's current context, with this library's modules loaded in it.
int32_t context_state(const Driver& d, const ContextState** out) {
  CUcontext ctx = nullptr;
  CUresult r = d.cuCtxGetCurrent(&ctx);
  if (r != CUDA_SUCCESS) return fail(CUDA_ERROR, cu_error(d, r, "cuCtxGetCurrent"));
  if (!ctx)
    return fail(NO_DRIVER, "no CUDA context is current on this thread (initialise the device "
                           "first, e.g. cudaSetDevice or any PyTorch CUDA call)");
  if (ctx == t_context && t_state) {
    *out = t_state;
    return OK;
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_states->find(ctx);
  if (it == g_states->end()) {
    std::unique_ptr<ContextState> state;
    if (int32_t st = load_context(d, &state)) return st;
    it = g_states->emplace(ctx, std::move(state)).first;
  }
  t_context = ctx;
  t_state = it->second.get();
  *out = t_state;
  return OK;
}

int bit_length(int64_t v) { return v == 0 ? 0 : 64 - __builtin_clzll(static_cast<uint64_t>(v)); }

// kernels.contract.bucket_of for one dim: static dims exact, dynamic ones to a power of two
// (as Python's 1 << (v - 1).bit_length()).
int64_t bucket_value(const DimDesc& dim, int64_t v) {
  if (!dim.dynamic) return v;
  return int64_t{1} << bit_length(v - 1 < 0 ? 1 - v : v - 1);
}

bool same_static(const KernelDesc& k, const Variant& var, const int64_t* dims) {
  for (int32_t i = 0; i < k.n_dims; ++i)
    if (!k.dims[i].dynamic && var.bucket[i] != dims[i]) return false;
  return true;
}

std::string describe_static(const KernelDesc& k, int32_t dtype, const int64_t* values) {
  std::string s = dtype_name(dtype);
  for (int32_t i = 0; i < k.n_dims; ++i)
    if (!k.dims[i].dynamic) s += std::string(" ") + k.dims[i].name + "=" + std::to_string(values[i]);
  return s;
}

int32_t unsupported(const KernelDesc& k, int32_t dtype, const int64_t* dims) {
  std::set<std::string> tuned;
  for (int32_t v = 0; v < k.n_variants; ++v)
    tuned.insert(describe_static(k, k.variants[v].dtype, k.variants[v].bucket));
  std::string list;
  for (const auto& t : tuned) list += (list.empty() ? "" : "; ") + t;
  return fail(UNSUPPORTED, std::string(k.name) + ": no tuned winner for " +
                               describe_static(k, dtype, dims) + " in this library (built for " +
                               kLibrary.gpu + "); it has: " + (list.empty() ? "nothing" : list) +
                               ". Tune that shape (autotune run) and rebuild (plugin-gen build)");
}

constexpr int64_t kWorkspaceAlign = 256;

int64_t align_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// Byte offsets of a variant's workspaces inside one buffer; returns the total.
int64_t workspace_layout(const Variant& var, const int64_t* dims, int64_t* offsets) {
  int64_t sizes[kMaxTensors];
  int64_t total = 0;
  if (var.n_workspaces) var.workspaces(dims, sizes);
  for (int32_t w = 0; w < var.n_workspaces; ++w) {
    offsets[w] = total;
    total += align_up(sizes[w] > 0 ? sizes[w] : 1, kWorkspaceAlign);
  }
  return total;
}

}  // namespace

int32_t fail(int32_t status, const std::string& message) {
  t_error = message;
  return status;
}

const char* last_error() { return t_error.c_str(); }

const char* dtype_name(int32_t dtype) {
  static const char* const names[] = {"float16", "bfloat16", "float32", "int32",
                                      "int64",   "uint8",    "int8"};
  return dtype >= 0 && dtype < 7 ? names[dtype] : "unknown dtype";
}

int32_t check_device() {
  const Driver& d = driver();
  if (!d.error.empty()) return fail(NO_DRIVER, d.error);
  CUcontext ctx = nullptr;
  CUdevice dev = 0;
  CUresult r = d.cuCtxGetCurrent(&ctx);
  if (r == CUDA_SUCCESS) r = ctx ? d.cuCtxGetDevice(&dev) : d.cuDeviceGet(&dev, 0);
  if (r != CUDA_SUCCESS) return fail(CUDA_ERROR, cu_error(d, r, "cuCtxGetDevice"));
  return check_cc(d, dev);
}

int32_t check_dims(const KernelDesc& k, const int64_t* dims) {
  for (int32_t i = 0; i < k.n_dims; ++i) {
    const DimDesc& dim = k.dims[i];
    if (dims[i] < dim.lo || dims[i] > dim.hi)
      return fail(INVALID_ARGUMENT, std::string(k.name) + ": " + dim.name + "=" +
                                        std::to_string(dims[i]) +
                                        " is outside the supported range [" +
                                        std::to_string(dim.lo) + ", " + std::to_string(dim.hi) + "]");
  }
  return OK;
}

bool tensor_present(const KernelDesc& k, int32_t tensor, const int64_t* dims) {
  const int32_t when = k.tensors[tensor].when;
  return when < 0 || dims[when] != 0;
}

int32_t select(const KernelDesc& k, int32_t dtype, const int64_t* dims) {
  int64_t target[kMaxDims];
  for (int32_t i = 0; i < k.n_dims; ++i) target[i] = bucket_value(k.dims[i], dims[i]);
  int32_t best = -1;
  int64_t best_distance = 0, best_size = 0;
  for (int32_t v = 0; v < k.n_variants; ++v) {
    const Variant& var = k.variants[v];
    if (var.dtype != dtype || !same_static(k, var, dims)) continue;
    int64_t distance = 0, size = 0;
    for (int32_t i = 0; i < k.n_dims; ++i) {
      if (!k.dims[i].dynamic) continue;
      distance += std::abs(bit_length(var.bucket[i]) - bit_length(target[i]));
      size += var.bucket[i];
    }
    // min over (distance, -size), first in table order on ties, as kernels.contract does
    if (best < 0 || distance < best_distance || (distance == best_distance && size > best_size)) {
      best = v;
      best_distance = distance;
      best_size = size;
    }
  }
  if (best < 0) unsupported(k, dtype, dims);
  return best;
}

bool has_variant(const KernelDesc& k, int32_t dtype, const int64_t* dims) {
  for (int32_t v = 0; v < k.n_variants; ++v)
    if (k.variants[v].dtype == dtype && same_static(k, k.variants[v], dims)) return true;
  return false;
}

int32_t workspace_size(const KernelDesc& k, int32_t dtype, const int64_t* dims, size_t* bytes) {
  if (int32_t st = check_dims(k, dims)) return st;
  const int32_t v = select(k, dtype, dims);
  if (v < 0) return UNSUPPORTED;
  int64_t offsets[kMaxTensors];
  *bytes = static_cast<size_t>(workspace_layout(k.variants[v], dims, offsets));
  return OK;
}

size_t max_workspace_size(const KernelDesc& k, int32_t dtype, const int64_t* dims) {
  int64_t most = 0, offsets[kMaxTensors];
  for (int32_t v = 0; v < k.n_variants; ++v) {
    const Variant& var = k.variants[v];
    if (var.dtype == dtype && same_static(k, var, dims)) {
      const int64_t total = workspace_layout(var, dims, offsets);
      most = total > most ? total : most;
    }
  }
  return static_cast<size_t>(most);
}

const KernelDesc* find_kernel(const char* name) {
  for (int32_t i = 0; name && i < kLibrary.n_kernels; ++i)
    if (std::strcmp(kLibrary.kernels[i]->name, name) == 0) return kLibrary.kernels[i];
  fail(INVALID_ARGUMENT, std::string("this library has no kernel named '") + (name ? name : "") + "'");
  return nullptr;
}

// A launch that may start while the stream's previous grid drains (programmatic stream
// serialization, sm_90+): the kernel itself waits for that grid before touching memory.
static CUresult launch_pdl(const Driver& d, CUfunction fn, const Geometry& g, CUstream stream,
                           void** params) {
  CUlaunchAttribute attr;
  std::memset(&attr, 0, sizeof(attr));
  attr.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
  attr.value.programmaticStreamSerializationAllowed = 1;
  CUlaunchConfig config;
  std::memset(&config, 0, sizeof(config));
  config.gridDimX = static_cast<unsigned>(g.grid[0]);
  config.gridDimY = static_cast<unsigned>(g.grid[1]);
  config.gridDimZ = static_cast<unsigned>(g.grid[2]);
  config.blockDimX = static_cast<unsigned>(g.threads);
  config.blockDimY = config.blockDimZ = 1;
  config.sharedMemBytes = static_cast<unsigned>(g.smem);
  config.hStream = stream;
  config.attrs = &attr;
  config.numAttrs = 1;
  return d.cuLaunchKernelEx(&config, fn, params, nullptr);
}

int32_t launch(const KernelDesc& k, int32_t dtype, const void* const* tensors, const int64_t* dims,
               const float* scalars, void* workspace, size_t workspace_bytes, CUstream stream) {
  if (dtype < FLOAT16 || dtype > FLOAT32)
    return fail(INVALID_ARGUMENT, std::string(k.name) + ": dtype code " + std::to_string(dtype) +
                                      " is not an activation dtype (0 float16, 1 bfloat16, 2 float32)");
  if (int32_t st = check_dims(k, dims)) return st;
  for (int32_t t = 0; t < k.n_tensors; ++t) {
    const TensorDesc& spec = k.tensors[t];
    const uintptr_t p = reinterpret_cast<uintptr_t>(tensors[t]);
    if (!tensor_present(k, t, dims)) {
      if (p)
        return fail(INVALID_ARGUMENT, std::string(k.name) + ": " + spec.name + " given but " +
                                          k.dims[spec.when].name + "=0; pass a null pointer");
    } else if (!p) {
      return fail(INVALID_ARGUMENT, std::string(k.name) + ": " + spec.name + " is a null pointer");
    } else if (p % 16) {
      return fail(INVALID_ARGUMENT, std::string(k.name) + ": " + spec.name +
                                        " is not 16-byte aligned (the kernels require it)");
    }
  }
  const int32_t v = select(k, dtype, dims);
  if (v < 0) return UNSUPPORTED;
  const Variant& var = k.variants[v];
  int64_t offsets[kMaxTensors];
  const int64_t needed = workspace_layout(var, dims, offsets);
  if (needed > 0) {
    if (!workspace || workspace_bytes < static_cast<size_t>(needed))  // SIZE_MAX: "enough"
      return fail(WORKSPACE_TOO_SMALL, std::string(k.name) + ": the call needs a workspace of " +
                                           std::to_string(needed) + " bytes, got " +
                                           std::to_string(workspace ? workspace_bytes : 0));
    if (reinterpret_cast<uintptr_t>(workspace) % 16)
      return fail(INVALID_ARGUMENT, std::string(k.name) + ": the workspace is not 16-byte aligned");
  }
  const Driver& d = driver();
  if (!d.error.empty()) return fail(NO_DRIVER, d.error);
  const ContextState* state = nullptr;
  if (int32_t st = context_state(d, &state)) return st;

  for (int32_t l = 0; l < var.n_launches; ++l) {
    const Launch& launch = var.launches[l];
    Geometry g;
    launch.geometry(dims, &g);
    if (g.grid[0] == 0 || g.grid[1] == 0 || g.grid[2] == 0) continue;  // nothing to do
    if (g.grid[0] < 0 || g.grid[0] > 0x7fffffff || g.grid[1] < 0 || g.grid[1] > 65535 ||
        g.grid[2] < 0 || g.grid[2] > 65535 || g.threads < 1 || g.threads > 1024 || g.smem < 0)
      return fail(INVALID_ARGUMENT, std::string(k.name) + ": launch " + std::to_string(l) +
                                        " would need grid (" + std::to_string(g.grid[0]) + ", " +
                                        std::to_string(g.grid[1]) + ", " + std::to_string(g.grid[2]) +
                                        ") x " + std::to_string(g.threads) +
                                        " threads, beyond CUDA's limits");
    union Value {
      CUdeviceptr ptr;
      int32_t i32;
      int64_t i64;
      float f32;
    } values[kMaxParams];
    void* params[kMaxParams];
    int32_t n = 0;
    for (int32_t a = 0; a < launch.n_args; ++a, ++n) {
      const Arg& arg = launch.args[a];
      Value& value = values[n];
      switch (arg.kind) {
        case ARG_TENSOR: value.ptr = reinterpret_cast<CUdeviceptr>(tensors[arg.index]); break;
        case ARG_WORKSPACE:
          value.ptr = reinterpret_cast<CUdeviceptr>(workspace) + offsets[arg.index];
          break;
        case ARG_DIM_I32: value.i32 = static_cast<int32_t>(dims[arg.index]); break;
        case ARG_DIM_I64: value.i64 = dims[arg.index]; break;
        default: value.f32 = scalars[arg.index]; break;
      }
      params[n] = &value;
    }
    for (int32_t s = 0; s < launch.n_scratch; ++s, ++n) {
      values[n].ptr = 0;
      params[n] = &values[n];
    }
    const bool pdl = launch.pdl && d.cuLaunchKernelEx;
    const CUresult r = pdl ? launch_pdl(d, state->functions[launch.function], g, stream, params)
                           : d.cuLaunchKernel(state->functions[launch.function],
                                              static_cast<unsigned>(g.grid[0]),
                                              static_cast<unsigned>(g.grid[1]),
                                              static_cast<unsigned>(g.grid[2]),
                                              static_cast<unsigned>(g.threads), 1, 1,
                                              static_cast<unsigned>(g.smem), stream, params, nullptr);
    if (r != CUDA_SUCCESS)
      return fail(CUDA_ERROR, std::string(k.name) + ": " +
                                  cu_error(d, r, pdl ? "cuLaunchKernelEx" : "cuLaunchKernel") +
                                  " for " + kLibrary.functions[launch.function].entry);
  }
  return OK;
}

}  // namespace ct

// ---- generic C entry points (the per-kernel ones are generated) ---------------------------------

CT_EXPORT const char* ct_last_error(void) { return ct::last_error(); }

CT_EXPORT const char* ct_manifest(void) { return ct::kLibrary.manifest; }

CT_EXPORT int ct_check_device(void) { return ct::check_device(); }

CT_EXPORT int ct_select(const char* kernel, int32_t dtype, const int64_t* dims, int32_t n_dims) {
  const ct::KernelDesc* k = ct::find_kernel(kernel);
  if (!k) return -1;
  if (n_dims != k->n_dims)
    return ct::fail(ct::INVALID_ARGUMENT, std::string(kernel) + " has " +
                                              std::to_string(k->n_dims) + " dims"),
           -1;
  if (ct::check_dims(*k, dims)) return -1;
  return ct::select(*k, dtype, dims);
}

CT_EXPORT int ct_workspace_size(const char* kernel, int32_t dtype, const int64_t* dims,
                                size_t* bytes) {
  const ct::KernelDesc* k = ct::find_kernel(kernel);
  return k ? ct::workspace_size(*k, dtype, dims, bytes) : ct::INVALID_ARGUMENT;
}

CT_EXPORT int ct_launch(const char* kernel, int32_t dtype, const void* const* tensors,
                        const int64_t* dims, const float* scalars, void* workspace,
                        size_t workspace_bytes, CUstream stream) {
  const ct::KernelDesc* k = ct::find_kernel(kernel);
  return k ? ct::launch(*k, dtype, tensors, dims, scalars, workspace, workspace_bytes, stream)
           : ct::INVALID_ARGUMENT;
}
