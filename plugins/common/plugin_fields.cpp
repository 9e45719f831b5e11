#include "plugin_fields.h"

#include "tensorrt_compat.h"

#include <cstring>
#include <limits>
#include <sstream>

namespace edge_biformer
{
namespace plugin
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;

namespace
{

std::string notOneValue(PluginField const& field)
{
    return std::string{"field '"} + field.name + "' must hold exactly one value (got length "
        + std::to_string(field.length) + ")";
}

template <typename T>
T readValue(PluginField const& field) noexcept
{
    T v{};
    std::memcpy(&v, field.data, sizeof(v));
    return v;
}

} // namespace

char const* fieldTypeName(PluginFieldType type) noexcept
{
    switch (type)
    {
    case PluginFieldType::kFLOAT16: return "kFLOAT16";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kFLOAT64: return "kFLOAT64";
    case PluginFieldType::kINT8: return "kINT8";
    case PluginFieldType::kINT16: return "kINT16";
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kCHAR: return "kCHAR";
    case PluginFieldType::kDIMS: return "kDIMS";
    case PluginFieldType::kUNKNOWN: return "kUNKNOWN";
    default: return "another type";
    }
}

char const* dataTypeName(DataType type) noexcept
{
    switch (type)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kBOOL: return "bool";
    default: return "an unsupported type";
    }
}

std::string dimsToString(Dims const& dims)
{
    std::ostringstream os;
    os << '[';
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        os << (i ? ", " : "") << dims.d[i];
    }
    os << ']';
    return os.str();
}

bool fitsInt32(int64_t v) noexcept
{
    return v >= 0 && v <= std::numeric_limits<int32_t>::max();
}

std::string readIntField(PluginField const& field, int64_t& value)
{
    if (field.data == nullptr || field.length != 1)
    {
        return notOneValue(field);
    }
    switch (field.type)
    {
    case PluginFieldType::kINT8: value = readValue<int8_t>(field); return {};
    case PluginFieldType::kINT16: value = readValue<int16_t>(field); return {};
    case PluginFieldType::kINT32: value = readValue<int32_t>(field); return {};
#if EB_TRT_HAS_64BIT_TYPES
    case PluginFieldType::kINT64: value = readValue<int64_t>(field); return {};
#endif
    default: break;
    }
    return std::string{"field '"} + field.name + "' must be an integer (kINT32), got " + fieldTypeName(field.type);
}

std::string readInt32Field(PluginField const& field, int32_t& value)
{
    int64_t v{};
    std::string err = readIntField(field, v);
    if (!err.empty())
    {
        return err;
    }
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
    {
        return std::string{"field '"} + field.name + "' = " + std::to_string(v) + " does not fit int32";
    }
    value = static_cast<int32_t>(v);
    return {};
}

std::string readFloatField(PluginField const& field, double& value)
{
    if (field.data == nullptr || field.length != 1)
    {
        return notOneValue(field);
    }
    if (field.type == PluginFieldType::kFLOAT32)
    {
        value = readValue<float>(field);
        return {};
    }
    if (field.type == PluginFieldType::kFLOAT64)
    {
        value = readValue<double>(field);
        return {};
    }
    return std::string{"field '"} + field.name + "' must be a float (kFLOAT32), got " + fieldTypeName(field.type);
}

std::string readStringField(PluginField const& field, std::string& value)
{
    if (field.type != PluginFieldType::kCHAR || (field.data == nullptr && field.length != 0) || field.length < 0)
    {
        return std::string{"field '"} + field.name + "' must be a string (kCHAR), got " + fieldTypeName(field.type);
    }
    if (field.length == 0)
    {
        value.clear();
        return {};
    }
    value.assign(static_cast<char const*>(field.data), static_cast<size_t>(field.length));
    auto const end = value.find('\0');
    if (end != std::string::npos)
    {
        value.resize(end);
    }
    return {};
}

} // namespace plugin
} // namespace edge_biformer
