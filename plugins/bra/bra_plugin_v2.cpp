#include "bra_plugin_v2.h"

#include "plugin_logging.h"

#include <utility>

namespace edge_biformer
{
namespace plugin
{

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ErrorCode;
using nvinfer1::PluginTensorDesc;

BiLevelRoutingAttentionPluginV2::BiLevelRoutingAttentionPluginV2(std::string layerName, BraAttributes const& attrs)
    : mCore(std::move(layerName), attrs)
{
}

BiLevelRoutingAttentionPluginV2::BiLevelRoutingAttentionPluginV2(BiLevelRoutingAttentionPluginV2 const* other)
    : mCore(other->mCore)
    , mNamespace(other->mNamespace)
    , mConfigError(other->mConfigError)
{
}

int32_t BiLevelRoutingAttentionPluginV2::initialize() noexcept
{
    if (!mConfigError.empty())
    {
        mCore.reportError(ErrorCode::kINVALID_ARGUMENT, "cannot be built: " + mConfigError);
        return -1;
    }
    return 0;
}

void BiLevelRoutingAttentionPluginV2::serialize(void* buffer) const noexcept
{
    if (buffer != nullptr)
    {
        mCore.serialize(buffer);
    }
}

void BiLevelRoutingAttentionPluginV2::destroy() noexcept
{
    delete this;
}

void BiLevelRoutingAttentionPluginV2::setPluginNamespace(char const* pluginNamespace) noexcept
{
    mNamespace.set(pluginNamespace);
}

char const* BiLevelRoutingAttentionPluginV2::getPluginNamespace() const noexcept
{
    return mNamespace.get();
}

DataType BiLevelRoutingAttentionPluginV2::getOutputDataType(
    int32_t index, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        DataType type{DataType::kFLOAT};
        std::string const err = BraPluginCore::outputType(inputTypes, nbInputs, index + 1, type);
        if (!err.empty())
        {
            // No error return here: TensorRT 8 asks supportsFormatCombination next, which refuses these types.
            mCore.reportError(ErrorCode::kINVALID_ARGUMENT, err);
            return inputTypes != nullptr && nbInputs > 0 ? inputTypes[0] : DataType::kFLOAT;
        }
        return type;
    }
    catch (...)
    {
        return DataType::kFLOAT;
    }
}

void BiLevelRoutingAttentionPluginV2::attachToContext(
    cudnnContext* /*cudnn*/, cublasContext* /*cublas*/, nvinfer1::IGpuAllocator* /*allocator*/) noexcept
{
    // TensorRT attaches each execution context's clone with the engine's device current: load the kernels
    // here, outside the first enqueue. Without a current context the first enqueue loads them.
    CUcontext current{nullptr};
    if (mCore.hasKernelModule() || cuCtxGetCurrent(&current) != CUDA_SUCCESS || current == nullptr)
    {
        return;
    }
    mCore.failed(ErrorCode::kINVALID_STATE, mCore.loadKernelModule());
}

nvinfer1::IPluginV2DynamicExt* BiLevelRoutingAttentionPluginV2::clone() const noexcept
{
    return nullOnThrow(
        [this]() -> nvinfer1::IPluginV2DynamicExt* { return new BiLevelRoutingAttentionPluginV2(this); },
        [this](char const* what) {
            mCore.reportError(ErrorCode::kINTERNAL_ERROR, std::string{"clone failed: "} + what);
        });
}

DimsExprs BiLevelRoutingAttentionPluginV2::getOutputDimensions(
    int32_t outputIndex, DimsExprs const* inputs, int32_t nbInputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    DimsExprs output{};
    try
    {
        std::string err = "has one output, asked for output " + std::to_string(outputIndex);
        if (outputIndex == 0)
        {
            err = mCore.outputShape(inputs, nbInputs, output);
        }
        if (mCore.failed(ErrorCode::kINVALID_ARGUMENT, err))
        {
            mConfigError = err;
            output = DimsExprs{};
        }
    }
    catch (...)
    {
        output = DimsExprs{};
    }
    return output;
}

bool BiLevelRoutingAttentionPluginV2::supportsFormatCombination(
    int32_t pos, PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return BraPluginCore::supportsFormat(pos, inOut, nbInputs, nbOutputs);
}

void BiLevelRoutingAttentionPluginV2::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        std::string err = mCore.configure(in, nbInputs, out, nbOutputs);
        if (mCore.failed(ErrorCode::kINVALID_ARGUMENT, err) && mConfigError.empty())
        {
            mConfigError = std::move(err);
        }
    }
    catch (...)
    {
        mConfigError = "configurePlugin failed (out of memory)";
    }
}

int32_t BiLevelRoutingAttentionPluginV2::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    if (!mConfigError.empty())
    {
        mCore.reportError(ErrorCode::kINVALID_STATE, "cannot run: " + mConfigError);
        return -1;
    }
    try
    {
        // TensorRT 8 has no onShapeChange: validate (and load the kernels if needed) when the shapes change.
        if (!mCore.shapesMatch(inputDesc, outputDesc))
        {
            if (mCore.failed(ErrorCode::kINVALID_ARGUMENT,
                    mCore.setShapes(inputDesc, kBRA_NB_INPUTS, outputDesc, kBRA_NB_OUTPUTS)))
            {
                return -1;
            }
        }
    }
    catch (...)
    {
        return -1;
    }
    return mCore.ensureKernelModule() ? mCore.launch(inputs, outputs, stream) : -1;
}

} // namespace plugin
} // namespace edge_biformer
