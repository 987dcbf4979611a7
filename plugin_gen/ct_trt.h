// conformer-trt plugin library: the TensorRT layer. One IPluginV3 (OneCore/OneBuild/OneRuntime)
// class and one IPluginCreatorV3One class serve every kernel; a PluginSpec carries what differs,
// all of it from the kernel's contract: its tables (ct_runtime.h) and a generated function giving
// each output's shape as TensorRT dimension expressions.
#pragma once

#include <NvInferRuntime.h>

#include <vector>

#include "ct_runtime.h"

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "the conformer-trt plugins use IPluginV3, which needs TensorRT 10 or newer headers"
#endif

namespace ct {
namespace trt {

using nvinfer1::DimsExprs;
using nvinfer1::IDimensionExpr;
using nvinfer1::IExprBuilder;

// Shape of output tensor `tensor` (kernel tensor index) from the dims as expressions; false if
// the tensor is not an output.
typedef bool (*OutputShapeFn)(int32_t tensor, IDimensionExpr const* const* dims, IExprBuilder& eb,
                              DimsExprs& out);

struct PluginSpec {
  const KernelDesc* kernel;
  const char* name;     // plugin name (ct_<kernel>)
  const char* version;  // "1"
  OutputShapeFn output_shape;
};

// a (op) b, or null when either side is null.
IDimensionExpr const* op(IExprBuilder& eb, nvinfer1::DimensionOperation o, IDimensionExpr const* a,
                         IDimensionExpr const* b);

extern const PluginSpec* const kPlugins[];  // generated
extern const int32_t kNumPlugins;

}  // namespace trt
}  // namespace ct
