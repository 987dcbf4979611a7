// conformer-trt plugin library: TensorRT plugins (IPluginV3) for every kernel in the library, and
// the entry points TensorRT's IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and Python's
// get_plugin_registry().load_library look for (getCreators, setLoggerFinder).
//
// Attributes are PluginFields: the kernel's static dims and switches (int32, or int64 for dims
// passed as int64) and its float scalars. They are checked when a plugin is created, at build
// time and when an engine is deserialised, and creation fails with a logged message (also
// returned by ct_last_error()) for a bad field, for static dims this library has no tuned winner
// for, or on a GPU of another architecture. Formats: linear only; activations float16, bfloat16
// or float32 as far as the library holds winners for them; fixed-dtype tensors their own dtype.
#include "ct_trt.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

namespace ct {
namespace trt {
namespace {

using namespace nvinfer1;

std::mutex g_logger_mutex;
ILoggerFinder* g_logger_finder = nullptr;

// Record (ct_last_error) and log an error; returns status.
int32_t error(int32_t status, const std::string& message) {
  fail(status, message);
  ILogger* logger = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_logger_mutex);
    if (g_logger_finder) logger = g_logger_finder->findLogger();
  }
  if (logger) logger->log(ILogger::Severity::kERROR, message.c_str());
  return status;
}

// Log what a runtime call recorded.
int32_t relay(int32_t status) { return status ? error(status, last_error()) : OK; }

int32_t from_trt(DataType t) {
  switch (t) {
    case DataType::kHALF: return FLOAT16;
    case DataType::kBF16: return BFLOAT16;
    case DataType::kFLOAT: return FLOAT32;
    case DataType::kINT32: return INT32;
    case DataType::kINT64: return INT64;
    case DataType::kUINT8: return UINT8;
    case DataType::kINT8: return INT8;
    default: return -2;
  }
}

std::string dims_text(const int64_t* d, int32_t n) {
  std::string s = "[";
  for (int32_t i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

class Plugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild,
               public IPluginV3OneRuntime {
 public:
  Plugin(const PluginSpec& spec, const int64_t* dims, const float* scalars) : spec_(&spec) {
    const KernelDesc& k = *spec.kernel;
    std::memcpy(dims_, dims, sizeof(int64_t) * k.n_dims);
    std::memcpy(scalars_, scalars, sizeof(float) * k.n_scalars);
    for (int32_t t = 0; t < k.n_tensors; ++t) {
      input_pos_[t] = -1;
      if (!tensor_present(k, t, dims_)) continue;
      if (k.tensors[t].output) {
        outputs_[n_outputs_++] = t;
      } else {
        input_pos_[t] = n_inputs_;
        inputs_[n_inputs_++] = t;
      }
    }
  }

  // IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
  }

  IPluginV3* clone() noexcept override {
    try {
      return new Plugin(*spec_, dims_, scalars_);
    } catch (...) {
      error(INVALID_ARGUMENT, std::string(spec_->name) + ": out of memory in clone");
      return nullptr;
    }
  }

  // IPluginV3OneCore
  AsciiChar const* getPluginName() const noexcept override { return spec_->name; }
  AsciiChar const* getPluginVersion() const noexcept override { return spec_->version; }
  AsciiChar const* getPluginNamespace() const noexcept override { return ""; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return n_outputs_; }

  int32_t getOutputDataTypes(DataType* types, int32_t nb_outputs, DataType const* input_types,
                             int32_t nb_inputs) const noexcept override {
    if (nb_outputs != n_outputs_ || nb_inputs != n_inputs_) return counts_error(nb_inputs, nb_outputs);
    const int32_t act = first_act_input();
    for (int32_t o = 0; o < n_outputs_; ++o) {
      const int32_t dtype = kernel().tensors[outputs_[o]].dtype;
      if (dtype == ACT && act < 0)
        return error(UNSUPPORTED, std::string(spec_->name) + ": no activation input to take the "
                                                             "output dtype from");
      types[o] = dtype == ACT ? input_types[act] : to_trt(dtype);
    }
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nb_inputs, DimsExprs const*, int32_t,
                          DimsExprs* outputs, int32_t nb_outputs,
                          IExprBuilder& eb) noexcept override {
    if (nb_outputs != n_outputs_ || nb_inputs != n_inputs_) return counts_error(nb_inputs, nb_outputs);
    const KernelDesc& k = kernel();
    for (int32_t i = 0; i < n_inputs_; ++i)
      if (int32_t st = check_rank(i, inputs[i].nbDims)) return st;
    IDimensionExpr const* values[kMaxDims];
    for (int32_t d = 0; d < k.n_dims; ++d) {
      const DimDesc& dim = k.dims[d];
      values[d] = dim.dynamic ? inputs[input_pos_[dim.src_tensor]].d[dim.src_axis]
                              : eb.constant(dims_[d]);
    }
    for (int32_t o = 0; o < n_outputs_; ++o) {
      bool ok = spec_->output_shape(outputs_[o], values, eb, outputs[o]);
      for (int32_t a = 0; ok && a < outputs[o].nbDims; ++a) ok = outputs[o].d[a] != nullptr;
      if (!ok)
        return error(INVALID_ARGUMENT, std::string(spec_->name) + ": no shape expression for " +
                                           k.tensors[outputs_[o]].name);
    }
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* in_out,
                                 int32_t nb_inputs, int32_t nb_outputs) noexcept override {
    if (nb_inputs != n_inputs_ || nb_outputs != n_outputs_ || pos < 0 || pos >= nb_inputs + nb_outputs)
      return false;
    const PluginTensorDesc& desc = in_out[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    const int32_t tensor = pos < nb_inputs ? inputs_[pos] : outputs_[pos - nb_inputs];
    const int32_t want = kernel().tensors[tensor].dtype;
    if (want != ACT) return from_trt(desc.type) == want;
    for (int32_t p = 0; p < pos; ++p)  // the first activation tensor decides; the rest follow it
      if (kernel().tensors[p < nb_inputs ? inputs_[p] : outputs_[p - nb_inputs]].dtype == ACT)
        return desc.type == in_out[p].desc.type;
    const int32_t dtype = from_trt(desc.type);
    return dtype >= FLOAT16 && dtype <= FLOAT32 && has_variant(kernel(), dtype, dims_);
  }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nb_inputs,
                          DynamicPluginTensorDesc const*, int32_t nb_outputs) noexcept override {
    if (nb_inputs != n_inputs_ || nb_outputs != n_outputs_) return counts_error(nb_inputs, nb_outputs);
    Dims ends[kMaxTensors];
    for (int32_t bound = 0; bound < 2; ++bound) {  // the profile's smallest and largest shapes
      for (int32_t i = 0; i < n_inputs_; ++i) ends[i] = bound ? in[i].max : in[i].min;
      int64_t dims[kMaxDims];
      if (int32_t st = shape_dims(ends, dims)) return st;
    }
    return 0;
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const* in, int32_t nb_inputs,
                          DynamicPluginTensorDesc const*, int32_t) const noexcept override {
    const int32_t act = first_act_input();
    if (nb_inputs != n_inputs_ || act < 0) return 0;
    Dims largest[kMaxTensors];
    for (int32_t i = 0; i < n_inputs_; ++i) largest[i] = in[i].max;
    int64_t dims[kMaxDims];
    if (shape_dims(largest, dims)) return 0;
    return max_workspace_size(kernel(), from_trt(in[act].desc.type), dims);
  }

  // IPluginV3OneRuntime
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nb_inputs, PluginTensorDesc const*,
                        int32_t nb_outputs) noexcept override {
    if (nb_inputs != n_inputs_ || nb_outputs != n_outputs_) return counts_error(nb_inputs, nb_outputs);
    Dims shapes[kMaxTensors];
    for (int32_t i = 0; i < n_inputs_; ++i) shapes[i] = in[i].dims;
    int64_t dims[kMaxDims];
    if (int32_t st = shape_dims(shapes, dims)) return st;
    const int32_t act = first_act_input();
    if (act >= 0 && select(kernel(), from_trt(in[act].type), dims) < 0) return relay(UNSUPPORTED);
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* input_desc, PluginTensorDesc const*,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override {
    const KernelDesc& k = kernel();
    Dims shapes[kMaxTensors];
    for (int32_t i = 0; i < n_inputs_; ++i) shapes[i] = input_desc[i].dims;
    int64_t dims[kMaxDims];
    if (int32_t st = shape_dims(shapes, dims)) return st;
    const void* tensors[kMaxTensors] = {};
    for (int32_t i = 0; i < n_inputs_; ++i) tensors[inputs_[i]] = inputs[i];
    for (int32_t o = 0; o < n_outputs_; ++o) tensors[outputs_[o]] = outputs[o];
    const int32_t act = first_act_input();
    const int32_t dtype = act >= 0 ? from_trt(input_desc[act].type) : FLOAT32;
    // TensorRT hands over getWorkspaceSize() bytes: the most any shape of the profile needs.
    return relay(launch(k, dtype, tensors, dims, scalars_, workspace, SIZE_MAX,
                        reinterpret_cast<CUstream>(stream)));
  }

  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    const KernelDesc& k = kernel();
    fields_.clear();
    for (int32_t d = 0; d < k.n_dims; ++d) {
      const DimDesc& dim = k.dims[d];
      if (dim.dynamic) continue;
      if (dim.i64) {
        fields_.emplace_back(dim.name, &dims_[d], PluginFieldType::kINT64, 1);
      } else {
        dims32_[d] = static_cast<int32_t>(dims_[d]);
        fields_.emplace_back(dim.name, &dims32_[d], PluginFieldType::kINT32, 1);
      }
    }
    for (int32_t s = 0; s < k.n_scalars; ++s)
      fields_.emplace_back(k.scalars[s], &scalars_[s], PluginFieldType::kFLOAT32, 1);
    collection_.nbFields = static_cast<int32_t>(fields_.size());
    collection_.fields = fields_.data();
    return &collection_;
  }

 private:
  const KernelDesc& kernel() const { return *spec_->kernel; }

  DataType to_trt(int32_t dtype) const {
    static const DataType types[] = {DataType::kHALF,  DataType::kBF16,  DataType::kFLOAT,
                                     DataType::kINT32, DataType::kINT64, DataType::kUINT8,
                                     DataType::kINT8};
    return types[dtype];
  }

  int32_t first_act_input() const {
    for (int32_t i = 0; i < n_inputs_; ++i)
      if (kernel().tensors[inputs_[i]].dtype == ACT) return i;
    return -1;
  }

  int32_t counts_error(int32_t nb_inputs, int32_t nb_outputs) const {
    return error(INVALID_ARGUMENT, std::string(spec_->name) + ": called with " +
                                       std::to_string(nb_inputs) + " inputs and " +
                                       std::to_string(nb_outputs) + " outputs; it has " +
                                       std::to_string(n_inputs_) + " and " +
                                       std::to_string(n_outputs_) + " for these fields");
  }

  int32_t check_rank(int32_t input, int32_t rank) const {
    const TensorDesc& t = kernel().tensors[inputs_[input]];
    if (rank == t.rank) return OK;
    return error(INVALID_ARGUMENT, std::string(spec_->name) + ": input " + t.name + " has rank " +
                                       std::to_string(rank) + ", expected " + std::to_string(t.rank));
  }

  // The dims of a call from its input shapes (static ones from the fields), checked: ranges, and
  // every input's shape against its declared dims.
  int32_t shape_dims(const Dims* shapes, int64_t* dims) const {
    const KernelDesc& k = kernel();
    for (int32_t i = 0; i < n_inputs_; ++i)
      if (int32_t st = check_rank(i, shapes[i].nbDims)) return st;
    for (int32_t d = 0; d < k.n_dims; ++d) {
      const DimDesc& dim = k.dims[d];
      dims[d] = dim.dynamic ? shapes[input_pos_[dim.src_tensor]].d[dim.src_axis] : dims_[d];
    }
    if (int32_t st = check_dims(k, dims)) return relay(st);
    int64_t want[Dims::MAX_DIMS];
    for (int32_t i = 0; i < n_inputs_; ++i) {
      k.extents(inputs_[i], dims, want);
      if (std::memcmp(want, shapes[i].d, sizeof(int64_t) * shapes[i].nbDims) != 0)
        return error(INVALID_ARGUMENT, std::string(spec_->name) + ": input " +
                                           k.tensors[inputs_[i]].name + " has shape " +
                                           dims_text(shapes[i].d, shapes[i].nbDims) +
                                           ", expected " + dims_text(want, shapes[i].nbDims) +
                                           " from its fields and the other inputs");
    }
    return OK;
  }

  const PluginSpec* spec_;
  int64_t dims_[kMaxDims] = {};  // static dims; dynamic entries unused
  float scalars_[kMaxTensors] = {};
  int32_t inputs_[kMaxTensors] = {}, outputs_[kMaxTensors] = {}, input_pos_[kMaxTensors] = {};
  int32_t n_inputs_ = 0, n_outputs_ = 0;
  int32_t dims32_[kMaxDims] = {};
  std::vector<PluginField> fields_;
  PluginFieldCollection collection_{};
};

// A field's one value, of type Narrow (tagged narrow) or Wide (tagged wide), as Wide.
template <typename Narrow, typename Wide>
bool read(const PluginField& field, PluginFieldType narrow, PluginFieldType wide, Wide* out) {
  if (field.type == narrow) {
    *out = *static_cast<const Narrow*>(field.data);
  } else if (field.type == wide) {
    *out = *static_cast<const Wide*>(field.data);
  } else {
    return false;
  }
  return true;
}

class Creator : public IPluginCreatorV3One {
 public:
  explicit Creator(const PluginSpec& spec) : spec_(&spec) {
    const KernelDesc& k = *spec.kernel;
    for (int32_t d = 0; d < k.n_dims; ++d)
      if (!k.dims[d].dynamic)
        fields_.emplace_back(k.dims[d].name, nullptr,
                             k.dims[d].i64 ? PluginFieldType::kINT64 : PluginFieldType::kINT32, 1);
    for (int32_t s = 0; s < k.n_scalars; ++s)
      fields_.emplace_back(k.scalars[s], nullptr, PluginFieldType::kFLOAT32, 1);
    collection_.nbFields = static_cast<int32_t>(fields_.size());
    collection_.fields = fields_.data();
  }

  IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const* fc,
                          TensorRTPhase) noexcept override {
    try {
      int64_t dims[kMaxDims] = {};
      float scalars[kMaxTensors];
      if (parse(fc, dims, scalars) || relay(check_device())) return nullptr;
      return new Plugin(*spec_, dims, scalars);
    } catch (...) {
      error(INVALID_ARGUMENT, std::string(spec_->name) + ": out of memory in createPlugin");
      return nullptr;
    }
  }

  PluginFieldCollection const* getFieldNames() noexcept override { return &collection_; }
  AsciiChar const* getPluginName() const noexcept override { return spec_->name; }
  AsciiChar const* getPluginVersion() const noexcept override { return spec_->version; }
  AsciiChar const* getPluginNamespace() const noexcept override { return ""; }

 private:
  // Fields -> static dims and scalars; every field known, typed, single, in range; every static
  // dim given; a tuned winner in this library for the static dims.
  int32_t parse(PluginFieldCollection const* fc, int64_t* dims, float* scalars) const {
    const KernelDesc& k = *spec_->kernel;
    const std::string who = std::string(spec_->name) + ": ";
    if (!fc || fc->nbFields < 0 || (fc->nbFields > 0 && !fc->fields))
      return error(INVALID_ARGUMENT, who + "no field collection");
    bool seen[kMaxDims + kMaxTensors] = {};
    for (int32_t s = 0; s < k.n_scalars; ++s) scalars[s] = k.scalar_defaults[s];
    for (int32_t f = 0; f < fc->nbFields; ++f) {
      const PluginField& field = fc->fields[f];
      const std::string name = field.name ? field.name : "";
      if (!field.data || field.length != 1)
        return error(INVALID_ARGUMENT, who + "field '" + name + "' must hold exactly one value");
      int32_t slot = -1;
      for (int32_t d = 0; d < k.n_dims; ++d)
        if (!k.dims[d].dynamic && name == k.dims[d].name) slot = d;
      for (int32_t s = 0; s < k.n_scalars; ++s)
        if (name == k.scalars[s]) slot = kMaxDims + s;
      if (slot < 0) return error(INVALID_ARGUMENT, who + "unknown field '" + name + "'; " + expected());
      if (seen[slot]) return error(INVALID_ARGUMENT, who + "field '" + name + "' given twice");
      seen[slot] = true;
      if (slot < kMaxDims) {
        int64_t v;
        if (!read<int32_t>(field, PluginFieldType::kINT32, PluginFieldType::kINT64, &v))
          return error(INVALID_ARGUMENT, who + "field '" + name + "' must be kINT32 or kINT64");
        const DimDesc& dim = k.dims[slot];
        if (v < dim.lo || v > dim.hi)
          return error(INVALID_ARGUMENT, who + name + "=" + std::to_string(v) +
                                             " is outside the supported range [" +
                                             std::to_string(dim.lo) + ", " + std::to_string(dim.hi) + "]");
        dims[slot] = v;
      } else {
        double v;
        if (!read<float>(field, PluginFieldType::kFLOAT32, PluginFieldType::kFLOAT64, &v))
          return error(INVALID_ARGUMENT, who + "field '" + name + "' must be kFLOAT32 or kFLOAT64");
        if (!std::isfinite(v) || std::fabs(v) > 3.4e38)
          return error(INVALID_ARGUMENT, who + "field '" + name + "' is not a finite float32");
        scalars[slot - kMaxDims] = static_cast<float>(v);
      }
    }
    for (int32_t d = 0; d < k.n_dims; ++d)
      if (!k.dims[d].dynamic && !seen[d])
        return error(INVALID_ARGUMENT, who + "field '" + k.dims[d].name + "' is missing; " + expected());
    for (int32_t dtype = FLOAT16; dtype <= FLOAT32; ++dtype)
      if (has_variant(k, dtype, dims)) return OK;
    select(k, FLOAT16, dims);  // records the list of what the library was tuned for
    return relay(UNSUPPORTED);
  }

  std::string expected() const {
    std::string s = "fields: ";
    for (size_t f = 0; f < fields_.size(); ++f)
      s += (f ? ", " : "") + std::string(fields_[f].name) +
           (fields_[f].type == PluginFieldType::kFLOAT32 ? " (float, optional)" : " (int)");
    return s;
  }

  const PluginSpec* spec_;
  std::vector<PluginField> fields_;
  PluginFieldCollection collection_{};
};

IPluginCreatorInterface* const* creators(int32_t& count) {
  static const std::vector<std::unique_ptr<Creator>> owned = [] {
    std::vector<std::unique_ptr<Creator>> v;
    for (int32_t p = 0; p < kNumPlugins; ++p) v.push_back(std::make_unique<Creator>(*kPlugins[p]));
    return v;
  }();
  static const std::vector<IPluginCreatorInterface*> list = [] {
    std::vector<IPluginCreatorInterface*> v;
    for (const auto& c : owned) v.push_back(c.get());
    return v;
  }();
  count = static_cast<int32_t>(list.size());
  return list.data();
}

}  // namespace

IDimensionExpr const* op(IExprBuilder& eb, DimensionOperation o, IDimensionExpr const* a,
                         IDimensionExpr const* b) {
  return a && b ? eb.operation(o, *a, *b) : nullptr;
}

}  // namespace trt
}  // namespace ct

CT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& count) {
  return ct::trt::creators(count);
}

// The older name TensorRT's loader also accepts (documented as deprecated next to getCreators).
CT_EXPORT nvinfer1::IPluginCreatorInterface* const* getPluginCreators(int32_t& count) {
  return ct::trt::creators(count);
}

CT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  std::lock_guard<std::mutex> lock(ct::trt::g_logger_mutex);
  ct::trt::g_logger_finder = finder;
}
