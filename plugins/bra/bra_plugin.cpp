#include "bra_plugin.h"

#include "cuda_driver.h"
#include "plugin_logging.h"

#include <exception>
#include <utility>

namespace edge_biformer
{
namespace plugin
{

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ErrorCode;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginTensorDesc;

BiLevelRoutingAttentionPlugin::BiLevelRoutingAttentionPlugin(std::string layerName, BraAttributes const& attrs)
    : mCore(std::move(layerName), attrs)
{
}

BiLevelRoutingAttentionPlugin::BiLevelRoutingAttentionPlugin(BraPluginCore const& core)
    : mCore(core)
{
}

IPluginCapability* BiLevelRoutingAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* BiLevelRoutingAttentionPlugin::clone() noexcept
{
    return nullOnThrow([this]() -> IPluginV3* { return new BiLevelRoutingAttentionPlugin(mCore); },
        [this](char const* what) {
            mCore.reportError(ErrorCode::kINTERNAL_ERROR, std::string{"clone failed: "} + what);
        });
}

bool BiLevelRoutingAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return BraPluginCore::supportsFormat(pos, inOut, nbInputs, nbOutputs);
}

int32_t BiLevelRoutingAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        DataType type{DataType::kFLOAT};
        std::string const err = BraPluginCore::outputType(inputTypes, nbInputs, nbOutputs, type);
        if (!err.empty() || outputTypes == nullptr)
        {
            mCore.reportError(ErrorCode::kINVALID_ARGUMENT, err.empty() ? "no output type array" : err);
            return -1;
        }
        outputTypes[0] = type;
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

int32_t BiLevelRoutingAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
    nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        if (outputs == nullptr || nbOutputs != kBRA_NB_OUTPUTS || nbShapeInputs != 0)
        {
            mCore.reportError(ErrorCode::kINVALID_ARGUMENT,
                "expects 4 tensor inputs (q, k, v, r_idx), no shape inputs and 1 output; got "
                    + std::to_string(nbInputs) + " inputs, " + std::to_string(nbShapeInputs) + " shape inputs and "
                    + std::to_string(nbOutputs) + " outputs");
            return -1;
        }
        return mCore.failed(ErrorCode::kINVALID_ARGUMENT, mCore.outputShape(inputs, nbInputs, outputs[0])) ? -1 : 0;
    }
    catch (...)
    {
        return -1;
    }
}

int32_t BiLevelRoutingAttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        return mCore.failed(ErrorCode::kINVALID_ARGUMENT, mCore.configure(in, nbInputs, out, nbOutputs)) ? -1 : 0;
    }
    catch (...)
    {
        return -1;
    }
}

char const* BiLevelRoutingAttentionPlugin::getMetadataString() noexcept
{
    return mCore.metadata();
}

char const* BiLevelRoutingAttentionPlugin::getTimingCacheID() noexcept
{
    // The creation state is the attributes; TensorRT adds the I/O shapes and formats itself.
    return mCore.metadata();
}

IPluginV3* BiLevelRoutingAttentionPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    return nullOnThrow([this, context] { return attach(context); },
        [this](char const* what) {
            mCore.reportError(ErrorCode::kINTERNAL_ERROR, std::string{"attachToContext failed: "} + what);
        });
}

IPluginV3* BiLevelRoutingAttentionPlugin::attach(nvinfer1::IPluginResourceContext* context)
{
    std::unique_ptr<BiLevelRoutingAttentionPlugin> attached{new BiLevelRoutingAttentionPlugin(mCore)};
    attached->mCore.setErrorRecorder(context != nullptr ? context->getErrorRecorder() : nullptr);
    CUcontext current{nullptr};
    if (cuCtxGetCurrent(&current) != CUDA_SUCCESS || current == nullptr)
    {
        // Unusual (TensorRT creates execution contexts with the engine's device current): load at the
        // first onShapeChange instead. TensorRT calls it during the next enqueueV3, so that first
        // inference pays for the load.
        logMessage(Severity::kVERBOSE,
            "layer '" + mCore.layerName()
                + "': no CUDA context is current in attachToContext; loading the kernels at the first "
                  "onShapeChange");
        return attached.release();
    }
    if (attached->mCore.failed(ErrorCode::kINVALID_STATE, attached->mCore.loadKernelModule()))
    {
        return nullptr;
    }
    return attached.release();
}

int32_t BiLevelRoutingAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        return mCore.failed(ErrorCode::kINVALID_ARGUMENT, mCore.setShapes(in, nbInputs, out, nbOutputs)) ? -1 : 0;
    }
    catch (...)
    {
        return -1;
    }
}

int32_t BiLevelRoutingAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    if (!mCore.shapesValid())
    {
        mCore.reportError(ErrorCode::kINVALID_STATE,
            "enqueue was called before the plugin was configured for its shapes (onShapeChange)");
        return -1;
    }
    if (!mCore.shapesMatch(inputDesc, outputDesc))
    {
        mCore.reportError(ErrorCode::kINVALID_STATE, "the tensor shapes changed without onShapeChange");
        return -1;
    }
    return mCore.ensureKernelModule() ? mCore.launch(inputs, outputs, stream) : -1;
}

PluginFieldCollection const* BiLevelRoutingAttentionPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        return mCore.serialFields();
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace plugin
} // namespace edge_biformer
