/*
 * What the C++ tests of the plugin share: the CHECK macro and its counters, stand-ins for the TensorRT
 * objects a plugin receives (logger, error recorder, dimension expressions), tensor descriptors, and
 * plugin fields built from the op contract header. Header-only; compiled against the real TensorRT
 * headers (8.5/8.6 or 10.x/11.x), with no TensorRT library behind them. The plugin of the build, behind one
 * interface for both TensorRT plugin interfaces, is plugin_under_test.h.
 */
#ifndef EDGE_BIFORMER_PLUGIN_TEST_HELPERS_H
#define EDGE_BIFORMER_PLUGIN_TEST_HELPERS_H

#include "bra_contract.h"
#include "tensorrt_compat.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace edge_biformer
{
namespace plugin_test
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

inline int gChecks = 0;
inline int gFailures = 0;

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        ++::edge_biformer::plugin_test::gChecks;                                                                       \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            ++::edge_biformer::plugin_test::gFailures;                                                                 \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond "\n";                                 \
        }                                                                                                              \
    } while (false)

//! "<program>: <passed>/<checks> checks passed" and the exit status.
inline int report(char const* program)
{
    std::cout << program << ": " << gChecks - gFailures << "/" << gChecks << " checks passed\n";
    return gFailures == 0 ? 0 : 1;
}

inline bool contains(std::string const& haystack, std::string const& needle)
{
    return haystack.find(needle) != std::string::npos;
}

// ------------------------------------------------------------------------------------------------
// Stand-ins for the TensorRT objects a plugin receives.

//! Keeps the last warning or error (and counts them).
class CapturingLogger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            last = msg;
            ++count;
        }
    }
    std::string last;
    int count{0};
};
inline CapturingLogger gLogger;
//! For setProcessLoggerGetter: the library's messages go to gLogger.
inline nvinfer1::ILogger* testGetLogger() noexcept
{
    return &gLogger;
}

class Recorder : public nvinfer1::IErrorRecorder
{
public:
    int32_t getNbErrors() const noexcept override
    {
        return static_cast<int32_t>(errors.size());
    }
    nvinfer1::ErrorCode getErrorCode(int32_t i) const noexcept override
    {
        return codes.at(static_cast<size_t>(i));
    }
    ErrorDesc getErrorDesc(int32_t i) const noexcept override
    {
        return errors.at(static_cast<size_t>(i)).c_str();
    }
    bool hasOverflowed() const noexcept override
    {
        return false;
    }
    void clear() noexcept override
    {
        errors.clear();
        codes.clear();
    }
    bool reportError(nvinfer1::ErrorCode code, ErrorDesc desc) noexcept override
    {
        codes.push_back(code);
        errors.emplace_back(desc);
        return true;
    }
    RefCount incRefCount() noexcept override
    {
        return ++refs;
    }
    RefCount decRefCount() noexcept override
    {
        return --refs;
    }
    std::vector<std::string> errors;
    std::vector<nvinfer1::ErrorCode> codes;
    RefCount refs{0};
};

//! An IDimensionExpr: a constant or a symbolic (runtime) dimension.
class DimImpl : public nvinfer1::apiv::VDimensionExpr
{
public:
    explicit DimImpl(int64_t value)
        : mValue(value)
    {
    }
    bool isConstant() const override
    {
        return mValue >= 0;
    }
    plugin::DimValue getConstantValue() const override
    {
        return mValue >= 0 ? static_cast<plugin::DimValue>(mValue) : std::numeric_limits<plugin::DimValue>::min();
    }
#if EB_TRT_HAS_PLUGIN_V3
    bool isSizeTensor() const override
    {
        return false;
    }
#endif

private:
    int64_t mValue;
};

class DimExpr : public nvinfer1::IDimensionExpr
{
public:
    explicit DimExpr(int64_t value)
        : mOwned(value)
    {
        mImpl = &mOwned;
    }
    ~DimExpr() override = default;

private:
    DimImpl mOwned;
};

class ExprBuilder : public nvinfer1::IExprBuilder
{
public:
    ExprBuilder()
    {
        mImpl = nullptr; // the plugin builds no new expressions
    }
    ~ExprBuilder() override = default;
};

//! Owns the expressions of one set of input shapes (-1 = dynamic).
struct ShapeExprs
{
    std::vector<std::unique_ptr<DimExpr>> owned;
    DimsExprs inputs[4]{};

    ShapeExprs(std::vector<std::vector<int64_t>> const& shapes)
    {
        for (size_t t = 0; t < shapes.size(); ++t)
        {
            inputs[t].nbDims = static_cast<int32_t>(shapes[t].size());
            for (size_t i = 0; i < shapes[t].size(); ++i)
            {
                owned.push_back(std::make_unique<DimExpr>(shapes[t][i]));
                inputs[t].d[i] = owned.back().get();
            }
        }
    }
};

inline Dims dims(std::vector<int64_t> const& values)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(values.size());
    for (size_t i = 0; i < values.size(); ++i)
    {
        d.d[i] = static_cast<plugin::DimValue>(values[i]);
    }
    return d;
}

inline PluginTensorDesc desc(std::vector<int64_t> const& shape, DataType type)
{
    PluginTensorDesc t{};
    t.dims = dims(shape);
    t.type = type;
    t.format = TensorFormat::kLINEAR;
    t.scale = -1.0F;
    return t;
}

// ------------------------------------------------------------------------------------------------
// Plugin fields and plugins

//! The plugin fields of one layer, named and typed as the contract header says (n_win 7, 2 heads,
//! topk 4, scale 0.125 unless changed).
struct Fields
{
    int32_t nWin{7};
    int32_t heads{2};
    int32_t topk{4};
    float scale{0.125F};
    std::vector<PluginField> list;
    PluginFieldCollection fc{};

    Fields()
    {
        static_assert(EB_BRA_NB_PLUGIN_FIELDS == 4, "the contract's plugin fields changed: update Fields");
        list = {PluginField{EB_BRA_ATTR_N_WIN, &nWin, PluginFieldType::EB_BRA_ATTR_N_WIN_TYPE, 1},
            PluginField{EB_BRA_ATTR_NUM_HEADS, &heads, PluginFieldType::EB_BRA_ATTR_NUM_HEADS_TYPE, 1},
            PluginField{EB_BRA_ATTR_TOPK, &topk, PluginFieldType::EB_BRA_ATTR_TOPK_TYPE, 1},
            PluginField{EB_BRA_ATTR_SCALE, &scale, PluginFieldType::EB_BRA_ATTR_SCALE_TYPE, 1}};
        sync();
    }
    Fields(Fields const&) = delete;
    Fields& operator=(Fields const&) = delete;
    void sync()
    {
        fc.nbFields = static_cast<int32_t>(list.size());
        fc.fields = list.data();
    }
};

} // namespace plugin_test
} // namespace edge_biformer

#endif // EDGE_BIFORMER_PLUGIN_TEST_HELPERS_H
