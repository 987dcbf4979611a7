// Test harness for a conformer-trt plugin library's TensorRT layer, without TensorRT's runtime.
//
// Built against TensorRT's public headers only (no libnvinfer): it loads the library with dlopen,
// takes its creators from getCreators, and drives each plugin through the IPluginV3 interfaces the
// way TensorRT does, with a small IExprBuilder of its own. Usage:
//
//   ct_harness LIBRARY CASES [--no-gpu]
//
// CASES is a text file of cases (tests/test_plugin_gen*.py write them):
//
//   case <label> <plugin name>
//   field <name> <i32|i64|f32|f64> <value>
//   input <name> <dtype> <rank> <extents...> <raw data file>
//   output <name> <dtype> <rank> <extents...> <float64 reference file, or -> <tolerance>
//   refuse <text>      (optional: creation from these fields must fail with this in the message)
//   end
//
// For each case: malformed field collections must be refused with a message; then (not with
// --no-gpu, where creation must fail for want of a driver) createPlugin -> clone -> output types
// and shapes -> format combinations -> configurePlugin -> getWorkspaceSize -> serialise the fields
// and create the runtime plugin from them (they must come back equal) -> onShapeChange -> enqueue
// on poisoned outputs -> compare with the reference. Prints one line per check, "ok ..." or
// "FAIL ...", and exits non-zero if any failed.
#include <NvInferRuntime.h>
#include <cuda.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

int g_failures = 0;

void report(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok" : "FAIL", what.c_str());
  std::fflush(stdout);
  if (!ok) ++g_failures;
}

// ---- the library's error channel ------------------------------------------------------------

class Logger : public ILogger {
 public:
  void log(Severity severity, AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kERROR) last = msg;
  }
  std::string last;
};

class Finder : public ILoggerFinder {
 public:
  ILogger* findLogger() override { return &logger; }
  Logger logger;
};

// ---- a small IExprBuilder: constants only (the harness gives concrete input shapes) ---------

class ConstImpl : public apiv::VDimensionExpr {
 public:
  explicit ConstImpl(int64_t v) : value(v) {}
  bool isConstant() const override { return true; }
  int64_t getConstantValue() const override { return value; }
  bool isSizeTensor() const override { return false; }
  int64_t value;
};

class Expr : public IDimensionExpr {
 public:
  explicit Expr(int64_t v) : impl_(v) { mImpl = &impl_; }
  ~Expr() noexcept override = default;

 private:
  ConstImpl impl_;
};

class BuilderImpl : public apiv::VExprBuilder {
 public:
  IDimensionExpr const* constant(int64_t v) override {
    pool.push_back(std::make_unique<Expr>(v));
    return pool.back().get();
  }
  IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a,
                                  IDimensionExpr const& b) override {
    const int64_t x = a.getConstantValue(), y = b.getConstantValue();
    auto floor_div = [](int64_t p, int64_t q) { return p / q - ((p % q != 0) && ((p < 0) != (q < 0))); };
    switch (op) {
      case DimensionOperation::kSUM: return constant(x + y);
      case DimensionOperation::kPROD: return constant(x * y);
      case DimensionOperation::kMAX: return constant(x > y ? x : y);
      case DimensionOperation::kMIN: return constant(x < y ? x : y);
      case DimensionOperation::kSUB: return constant(x - y);
      case DimensionOperation::kEQUAL: return constant(x == y);
      case DimensionOperation::kLESS: return constant(x < y);
      case DimensionOperation::kFLOOR_DIV: return y ? constant(floor_div(x, y)) : nullptr;
      case DimensionOperation::kCEIL_DIV: return y ? constant(-floor_div(-x, y)) : nullptr;
    }
    return nullptr;
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&,
                                          IDimensionExpr const&) override {
    return nullptr;
  }
  std::deque<std::unique_ptr<Expr>> pool;
};

class Builder : public IExprBuilder {
 public:
  Builder() { mImpl = &impl_; }
  ~Builder() noexcept override = default;

 private:
  BuilderImpl impl_;
};

class ResourceContext : public IPluginResourceContext {
 public:
  IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
};

// ---- the CUDA driver, for memory ------------------------------------------------------------

struct Cuda {
  bool load() {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) return false;
    init = reinterpret_cast<decltype(init)>(dlsym(lib, "cuInit"));
    device_get = reinterpret_cast<decltype(device_get)>(dlsym(lib, "cuDeviceGet"));
    retain = reinterpret_cast<decltype(retain)>(dlsym(lib, "cuDevicePrimaryCtxRetain"));
    set_current = reinterpret_cast<decltype(set_current)>(dlsym(lib, "cuCtxSetCurrent"));
    alloc = reinterpret_cast<decltype(alloc)>(dlsym(lib, "cuMemAlloc_v2"));
    free = reinterpret_cast<decltype(free)>(dlsym(lib, "cuMemFree_v2"));
    htod = reinterpret_cast<decltype(htod)>(dlsym(lib, "cuMemcpyHtoD_v2"));
    dtoh = reinterpret_cast<decltype(dtoh)>(dlsym(lib, "cuMemcpyDtoH_v2"));
    memset = reinterpret_cast<decltype(memset)>(dlsym(lib, "cuMemsetD8_v2"));
    sync = reinterpret_cast<decltype(sync)>(dlsym(lib, "cuCtxSynchronize"));
    if (!init || !device_get || !retain || !set_current || !alloc || !free || !htod || !dtoh ||
        !memset || !sync)
      return false;
    CUdevice dev;
    CUcontext ctx;
    return init(0) == CUDA_SUCCESS && device_get(&dev, 0) == CUDA_SUCCESS &&
           retain(&ctx, dev) == CUDA_SUCCESS && set_current(ctx) == CUDA_SUCCESS;
  }
  CUresult (*init)(unsigned);
  CUresult (*device_get)(CUdevice*, int);
  CUresult (*retain)(CUcontext*, CUdevice);
  CUresult (*set_current)(CUcontext);
  CUresult (*alloc)(CUdeviceptr*, size_t);
  CUresult (*free)(CUdeviceptr);
  CUresult (*htod)(CUdeviceptr, const void*, size_t);
  CUresult (*dtoh)(void*, CUdeviceptr, size_t);
  CUresult (*memset)(CUdeviceptr, unsigned char, size_t);
  CUresult (*sync)();
};

// ---- cases ----------------------------------------------------------------------------------

struct Field {
  std::string name, type;
  int32_t i32 = 0;
  int64_t i64 = 0;
  float f32 = 0;
  double f64 = 0;
};

struct Tensor {
  std::string name, dtype, path;
  Dims dims{};
  double tolerance = 0;
};

struct Case {
  std::string label, plugin;
  std::vector<Field> fields;
  std::vector<Tensor> inputs, outputs;
  std::string refuse;
};

std::vector<Case> read_cases(const char* path) {
  std::ifstream in(path);
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream s(line);
    std::string kind;
    s >> kind;
    if (kind == "case") {
      cases.emplace_back();
      s >> cases.back().label >> cases.back().plugin;
    } else if (kind == "field") {
      Field f;
      s >> f.name >> f.type;
      if (f.type == "i32") s >> f.i32;
      if (f.type == "i64") s >> f.i64;
      if (f.type == "f32") s >> f.f32;
      if (f.type == "f64") s >> f.f64;
      cases.back().fields.push_back(f);
    } else if (kind == "refuse") {
      std::getline(s >> std::ws, cases.back().refuse);
    } else if (kind == "input" || kind == "output") {
      Tensor t;
      s >> t.name >> t.dtype >> t.dims.nbDims;
      for (int32_t i = 0; i < t.dims.nbDims; ++i) s >> t.dims.d[i];
      s >> t.path;
      if (kind == "output") s >> t.tolerance;
      (kind == "input" ? cases.back().inputs : cases.back().outputs).push_back(t);
    }
  }
  return cases;
}

DataType trt_type(const std::string& d) {
  if (d == "float16") return DataType::kHALF;
  if (d == "bfloat16") return DataType::kBF16;
  if (d == "float32") return DataType::kFLOAT;
  if (d == "int32") return DataType::kINT32;
  if (d == "int64") return DataType::kINT64;
  if (d == "uint8") return DataType::kUINT8;
  return DataType::kINT8;
}

size_t element_size(const std::string& d) {
  if (d == "float16" || d == "bfloat16") return 2;
  if (d == "float32" || d == "int32") return 4;
  if (d == "int64") return 8;
  return 1;
}

size_t volume(const Dims& d) {
  size_t n = 1;
  for (int32_t i = 0; i < d.nbDims; ++i) n *= static_cast<size_t>(d.d[i]);
  return n;
}

double to_double(const std::string& dtype, const unsigned char* p) {
  uint32_t bits = 0;
  float f;
  if (dtype == "float32") {
    std::memcpy(&f, p, 4);
    return f;
  }
  if (dtype == "bfloat16") {
    bits = static_cast<uint32_t>(p[0] | (p[1] << 8)) << 16;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  const uint32_t h = p[0] | (p[1] << 8);  // float16
  const uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  const double mag = exp == 0 ? std::ldexp(man, -24)
                   : exp == 31 ? (man ? NAN : INFINITY)
                               : std::ldexp(man + 1024.0, static_cast<int>(exp) - 25);
  return sign ? -mag : mag;
}

std::vector<unsigned char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(in)), {});
}

PluginFieldCollection collection(const std::vector<PluginField>& v) {
  PluginFieldCollection fc;
  fc.nbFields = static_cast<int32_t>(v.size());
  fc.fields = v.data();
  return fc;
}

std::vector<PluginField> to_fields(std::vector<Field>& fields) {
  std::vector<PluginField> out;
  for (auto& f : fields) {
    if (f.type == "i32") out.emplace_back(f.name.c_str(), &f.i32, PluginFieldType::kINT32, 1);
    if (f.type == "i64") out.emplace_back(f.name.c_str(), &f.i64, PluginFieldType::kINT64, 1);
    if (f.type == "f32") out.emplace_back(f.name.c_str(), &f.f32, PluginFieldType::kFLOAT32, 1);
    if (f.type == "f64") out.emplace_back(f.name.c_str(), &f.f64, PluginFieldType::kFLOAT64, 1);
  }
  return out;
}

size_t field_bytes(const PluginField& f) {
  switch (f.type) {
    case PluginFieldType::kINT64:
    case PluginFieldType::kFLOAT64: return 8;
    default: return 4;
  }
}

bool same_fields(const PluginFieldCollection* a, const PluginFieldCollection* b, std::string* why) {
  if (a->nbFields != b->nbFields) return *why = "field counts differ", false;
  for (int32_t i = 0; i < a->nbFields; ++i) {
    const PluginField &x = a->fields[i], &y = b->fields[i];
    if (std::strcmp(x.name, y.name) || x.type != y.type || x.length != y.length ||
        std::memcmp(x.data, y.data, field_bytes(x)))
      return *why = std::string("field ") + x.name + " differs", false;
  }
  return true;
}

// Malformed field collections, each of which createPlugin must refuse with a message.
void check_bad_fields(IPluginCreatorV3One* creator, Case& c, Logger& logger) {
  auto refused = [&](const std::string& what, std::vector<PluginField> fields,
                     const char* expect) {
    logger.last.clear();
    PluginFieldCollection fc = collection(fields);
    IPluginV3* p = creator->createPlugin("bad", &fc, TensorRTPhase::kBUILD);
    const bool ok = p == nullptr && logger.last.find(expect) != std::string::npos;
    report(ok, c.label + " refuses " + what + ": " + logger.last);
    delete p;
  };
  const std::vector<PluginField> good = to_fields(c.fields);
  int32_t bogus = 1;
  std::vector<PluginField> v = good;
  v.emplace_back("no_such_field", &bogus, PluginFieldType::kINT32, 1);
  refused("an unknown field", v, "unknown field");
  v = good;
  v.push_back(v.front());
  refused("a repeated field", v, "given twice");
  for (size_t i = 0; i < good.size(); ++i) {
    if (good[i].type != PluginFieldType::kINT32) continue;
    float wrong = 1.0f;
    int32_t out_of_range = -1;
    int32_t two[2] = {1, 1};
    v = good;
    v[i].data = &wrong;
    v[i].type = PluginFieldType::kFLOAT32;
    refused(std::string("a float ") + good[i].name, v, "must be kINT32 or kINT64");
    v = good;
    v[i].data = &out_of_range;
    refused(std::string("an out-of-range ") + good[i].name, v, "outside the supported range");
    v = good;
    v[i].data = two;
    v[i].length = 2;
    refused(std::string("two values for ") + good[i].name, v, "exactly one value");
    v = good;
    v.erase(v.begin() + static_cast<long>(i));
    refused(std::string("a missing ") + good[i].name, v, "is missing");
    break;  // one integer field shows the checks; the others share the code
  }
  for (size_t i = 0; i < good.size(); ++i) {
    if (good[i].type != PluginFieldType::kFLOAT32 && good[i].type != PluginFieldType::kFLOAT64)
      continue;
    float nan = NAN;
    v = good;
    v[i].data = &nan;
    v[i].type = PluginFieldType::kFLOAT32;
    refused(std::string("a NaN ") + good[i].name, v, "not a finite float32");
    break;
  }
}

void run_case(IPluginCreatorV3One* creator, Case& c, Logger& logger, Cuda* cuda) {
  std::vector<PluginField> fields = to_fields(c.fields);
  PluginFieldCollection fc = collection(fields);
  logger.last.clear();
  std::unique_ptr<IPluginV3> made(creator->createPlugin(c.label.c_str(), &fc, TensorRTPhase::kBUILD));
  const std::string message = logger.last;
  if (!c.refuse.empty()) {
    report(!made && message.find(c.refuse) != std::string::npos,
           c.label + " createPlugin refused: " + message);
    return;
  }
  check_bad_fields(creator, c, logger);
  if (!cuda) {  // no GPU: creation must stop at the driver, saying so
    report(!made && message.find("libcuda.so.1") != std::string::npos,
           c.label + " createPlugin without a GPU fails clearly: " + message);
    return;
  }
  report(made != nullptr, c.label + " createPlugin " + message);
  if (!made) return;
  std::unique_ptr<IPluginV3> plugin(made->clone());
  report(plugin != nullptr, c.label + " clone");
  if (!plugin) return;
  auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  report(core && build && c.plugin == core->getPluginName() &&
             std::string(core->getPluginVersion()) == "1",
         c.label + " core interface names the plugin");
  const int32_t n_in = static_cast<int32_t>(c.inputs.size());
  const int32_t n_out = static_cast<int32_t>(c.outputs.size());
  report(build->getNbOutputs() == n_out, c.label + " getNbOutputs");

  std::vector<DataType> in_types, out_types(n_out);
  for (auto& t : c.inputs) in_types.push_back(trt_type(t.dtype));
  bool ok = build->getOutputDataTypes(out_types.data(), n_out, in_types.data(), n_in) == 0;
  for (int32_t o = 0; ok && o < n_out; ++o) ok = out_types[o] == trt_type(c.outputs[o].dtype);
  report(ok, c.label + " getOutputDataTypes");

  Builder eb;
  std::vector<DimsExprs> in_exprs(n_in), out_exprs(n_out);
  for (int32_t i = 0; i < n_in; ++i) {
    in_exprs[i].nbDims = c.inputs[i].dims.nbDims;
    for (int32_t a = 0; a < c.inputs[i].dims.nbDims; ++a) in_exprs[i].d[a] = eb.constant(c.inputs[i].dims.d[a]);
  }
  logger.last.clear();
  ok = build->getOutputShapes(in_exprs.data(), n_in, nullptr, 0, out_exprs.data(), n_out, eb) == 0;
  for (int32_t o = 0; ok && o < n_out; ++o) {
    ok = out_exprs[o].nbDims == c.outputs[o].dims.nbDims;
    for (int32_t a = 0; ok && a < out_exprs[o].nbDims; ++a)
      ok = out_exprs[o].d[a]->isConstant() && out_exprs[o].d[a]->getConstantValue() == c.outputs[o].dims.d[a];
  }
  report(ok, c.label + " getOutputShapes " + logger.last);

  std::vector<DynamicPluginTensorDesc> io(n_in + n_out);
  for (int32_t p = 0; p < n_in + n_out; ++p) {
    const Tensor& t = p < n_in ? c.inputs[p] : c.outputs[p - n_in];
    io[p].desc.dims = t.dims;
    io[p].desc.type = trt_type(t.dtype);
    io[p].desc.format = TensorFormat::kLINEAR;
    io[p].desc.scale = 1.0f;
    io[p].min = io[p].max = io[p].opt = t.dims;
  }
  ok = true;
  for (int32_t p = 0; p < n_in + n_out; ++p) ok = ok && build->supportsFormatCombination(p, io.data(), n_in, n_out);
  report(ok, c.label + " supportsFormatCombination accepts the case's formats");
  {
    auto wrong = io;
    wrong[0].desc.format = TensorFormat::kCHW32;
    report(!build->supportsFormatCombination(0, wrong.data(), n_in, n_out), c.label + " refuses a non-linear format");
    wrong = io;
    wrong[0].desc.type = DataType::kINT8;
    report(!build->supportsFormatCombination(0, wrong.data(), n_in, n_out), c.label + " refuses int8 for input 0");
    if (n_out) {
      wrong = io;
      const DataType other = io[n_in].desc.type == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT;
      wrong[n_in].desc.type = other;
      report(!build->supportsFormatCombination(n_in, wrong.data(), n_in, n_out), c.label + " refuses mixed output dtype");
    }
  }
  logger.last.clear();
  ok = build->configurePlugin(io.data(), n_in, io.data() + n_in, n_out) == 0;
  report(ok, c.label + " configurePlugin " + logger.last);
  if (n_in > 0) {
    auto wrong = io;
    wrong[0].min.d[wrong[0].min.nbDims - 1] += 1;
    wrong[0].max = wrong[0].min;
    ok = build->configurePlugin(wrong.data(), n_in, wrong.data() + n_in, n_out) != 0;
    report(ok && !logger.last.empty(),
           c.label + " configurePlugin refuses an input of the wrong shape: " + logger.last);
  }
  const size_t workspace = build->getWorkspaceSize(io.data(), n_in, io.data() + n_in, n_out);
  report(true, c.label + " getWorkspaceSize " + std::to_string(workspace));

  // serialise, deserialise, compare
  auto* runtime_build = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  const PluginFieldCollection* saved = runtime_build->getFieldsToSerialize();
  logger.last.clear();
  std::unique_ptr<IPluginV3> loaded(creator->createPlugin(c.label.c_str(), saved, TensorRTPhase::kRUNTIME));
  report(loaded != nullptr, c.label + " createPlugin from serialised fields " + logger.last);
  if (!loaded) return;
  ResourceContext resources;
  std::unique_ptr<IPluginV3> attached(
      static_cast<IPluginV3OneRuntime*>(loaded->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
          ->attachToContext(&resources));
  auto* runtime = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  std::string why;
  report(same_fields(saved, runtime->getFieldsToSerialize(), &why), c.label + " fields round trip " + why);

  // run it
  std::vector<PluginTensorDesc> in_desc(n_in), out_desc(n_out);
  for (int32_t p = 0; p < n_in + n_out; ++p) (p < n_in ? in_desc[p] : out_desc[p - n_in]) = io[p].desc;
  logger.last.clear();
  ok = runtime->onShapeChange(in_desc.data(), n_in, out_desc.data(), n_out) == 0;
  report(ok, c.label + " onShapeChange " + logger.last);
  std::vector<CUdeviceptr> in_ptr(n_in), out_ptr(n_out);
  std::vector<size_t> out_bytes(n_out);
  CUdeviceptr ws = 0;
  for (int32_t i = 0; i < n_in; ++i) {
    std::vector<unsigned char> data = read_file(c.inputs[i].path);
    cuda->alloc(&in_ptr[i], data.size() + 16);
    cuda->htod(in_ptr[i], data.data(), data.size());
  }
  for (int32_t o = 0; o < n_out; ++o) {
    out_bytes[o] = volume(c.outputs[o].dims) * element_size(c.outputs[o].dtype);
    cuda->alloc(&out_ptr[o], out_bytes[o] + 16);
    cuda->memset(out_ptr[o], 0xff, out_bytes[o]);  // NaN in every float format
  }
  if (workspace) cuda->alloc(&ws, workspace);
  std::vector<const void*> ins(n_in);
  std::vector<void*> outs(n_out);
  for (int32_t i = 0; i < n_in; ++i) ins[i] = reinterpret_cast<const void*>(in_ptr[i]);
  for (int32_t o = 0; o < n_out; ++o) outs[o] = reinterpret_cast<void*>(out_ptr[o]);
  logger.last.clear();
  const int32_t rc = runtime->enqueue(in_desc.data(), out_desc.data(), ins.data(), outs.data(),
                                      reinterpret_cast<void*>(ws), nullptr);
  const bool synced = cuda->sync() == CUDA_SUCCESS;
  report(rc == 0 && synced, c.label + " enqueue " + logger.last);
  for (int32_t o = 0; rc == 0 && o < n_out; ++o) {
    if (c.outputs[o].path == "-") continue;  // launched, not checked (a stub driver runs nothing)
    std::vector<unsigned char> host(out_bytes[o]);
    cuda->dtoh(host.data(), out_ptr[o], host.size());
    std::vector<unsigned char> ref = read_file(c.outputs[o].path);
    const size_t n = volume(c.outputs[o].dims), esize = element_size(c.outputs[o].dtype);
    double diff = 0, norm = 0;
    bool finite = ref.size() == n * sizeof(double);
    for (size_t e = 0; finite && e < n; ++e) {
      double r;
      std::memcpy(&r, ref.data() + e * sizeof(double), sizeof(double));
      const double v = to_double(c.outputs[o].dtype, host.data() + e * esize);
      finite = std::isfinite(v);
      diff += (v - r) * (v - r);
      norm += r * r;
    }
    const double err = finite ? std::sqrt(diff) / (norm > 0 ? std::sqrt(norm) : 1.0) : INFINITY;
    char line[256];
    std::snprintf(line, sizeof(line), " output %s relative error %.3g (tolerance %.3g)",
                  c.outputs[o].name.c_str(), err, c.outputs[o].tolerance);
    report(err <= c.outputs[o].tolerance, c.label + line);
  }
  for (auto p : in_ptr) cuda->free(p);
  for (auto p : out_ptr) cuda->free(p);
  if (ws) cuda->free(ws);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s LIBRARY CASES [--no-gpu]\n", argv[0]);
    return 2;
  }
  const bool gpu = !(argc > 3 && std::string(argv[3]) == "--no-gpu");
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 2;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto set_finder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  report(get_creators && set_finder && dlsym(lib, "getPluginCreators"),
         "library exports getCreators, getPluginCreators, setLoggerFinder");
  if (!get_creators || !set_finder) return 1;
  Finder finder;
  set_finder(&finder);
  int32_t n = 0;
  IPluginCreatorInterface* const* creators = get_creators(n);
  Cuda cuda;
  if (gpu && !cuda.load()) {
    std::fprintf(stderr, "no usable CUDA driver/GPU; run with --no-gpu\n");
    return 2;
  }
  for (Case& c : read_cases(argv[2])) {
    IPluginCreatorV3One* creator = nullptr;
    for (int32_t i = 0; i < n; ++i) {
      InterfaceInfo info = creators[i]->getInterfaceInfo();
      auto* v3 = static_cast<IPluginCreatorV3One*>(creators[i]);
      if (std::string(info.kind) == "PLUGIN CREATOR_V3ONE" && c.plugin == v3->getPluginName()) creator = v3;
    }
    report(creator != nullptr && std::string(creator->getPluginNamespace()).empty(),
           c.label + " creator " + c.plugin + " found");
    if (creator) run_case(creator, c, finder.logger, gpu ? &cuda : nullptr);
  }
  std::printf("%d failed\n", g_failures);
  return g_failures ? 1 : 0;
}
