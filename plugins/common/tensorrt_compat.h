/*
 * What the TensorRT headers of this build provide. The library is built from the same sources against
 * the headers of TensorRT 8.5/8.6 (IPluginV2DynamicExt, JetPack 5.1 and 6.0) or 10.x/11.x (IPluginV3);
 * these macros name the differences once, so that the sources test a feature, not a version number.
 */
#ifndef EDGE_BIFORMER_TENSORRT_COMPAT_H
#define EDGE_BIFORMER_TENSORRT_COMPAT_H

#include <NvInferRuntime.h>

#include <type_traits>

#define EB_TRT_AT_LEAST(major, minor)                                                                                  \
    (NV_TENSORRT_MAJOR > (major) || (NV_TENSORRT_MAJOR == (major) && NV_TENSORRT_MINOR >= (minor)))

//! IPluginV3, IPluginCreatorV3One, IPluginRegistry::getCreator and the loadLibrary entry point getCreators().
#define EB_TRT_HAS_PLUGIN_V3 EB_TRT_AT_LEAST(10, 0)
//! ILoggerFinder and IPluginRegistry::loadLibrary (with the entry points setLoggerFinder/getPluginCreators).
#define EB_TRT_HAS_LOAD_LIBRARY EB_TRT_AT_LEAST(8, 6)
//! PluginFieldType::kINT64/kBF16 and DataType::kBF16/kINT64 (TensorRT 10).
#define EB_TRT_HAS_64BIT_TYPES EB_TRT_AT_LEAST(10, 0)

#if !EB_TRT_AT_LEAST(8, 5)
#error "the plugin library needs the headers of TensorRT 8.5 or newer (JetPack 5.1+)"
#endif

namespace edge_biformer
{
namespace plugin
{

//! The integer type of one dimension: int32_t in TensorRT 8, int64_t from TensorRT 10.
using DimValue = std::remove_cv_t<std::remove_reference_t<decltype(nvinfer1::Dims{}.d[0])>>;

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_TENSORRT_COMPAT_H
