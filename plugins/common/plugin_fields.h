/*
 * Reading TensorRT plugin fields and describing tensors in messages: helpers shared by the plugins of
 * the library. Every reader returns an empty string on success, else a one-line message that names
 * the field and what it should have been.
 */
#ifndef EDGE_BIFORMER_PLUGIN_FIELDS_H
#define EDGE_BIFORMER_PLUGIN_FIELDS_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>

namespace edge_biformer
{
namespace plugin
{

//! The enumerator name of a field type ("kINT32").
char const* fieldTypeName(nvinfer1::PluginFieldType type) noexcept;

//! The contract's name of a tensor type ("float32", "float16", "int32", ...).
char const* dataTypeName(nvinfer1::DataType type) noexcept;

//! "[2, 14, 14, 64]".
std::string dimsToString(nvinfer1::Dims const& dims);

//! Whether a dimension lies in [0, 2^31).
bool fitsInt32(int64_t v) noexcept;

//! One integer value of a field (kINT8/16/32, and kINT64 from TensorRT 10, are accepted: applications build
//! fields by hand).
std::string readIntField(nvinfer1::PluginField const& field, int64_t& value);

//! One integer value of a field that must fit int32.
std::string readInt32Field(nvinfer1::PluginField const& field, int32_t& value);

//! One float value of a field (kFLOAT32, or kFLOAT64 from hand-built fields).
std::string readFloatField(nvinfer1::PluginField const& field, double& value);

//! A kCHAR field as a string (the ONNX parser passes its length without a terminating NUL).
std::string readStringField(nvinfer1::PluginField const& field, std::string& value);

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_PLUGIN_FIELDS_H
