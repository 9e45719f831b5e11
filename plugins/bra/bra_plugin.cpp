#include "bra_plugin.h"

#include "bra_validation.h"
#include "cuda_driver.h"
#include "plugin_fields.h"
#include "plugin_logging.h"

#include <exception>
#include <sstream>
#include <utility>

namespace edge_biformer
{
namespace plugin
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ErrorCode;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace
{

eb_bra_dtype_t toBraDtype(DataType type) noexcept
{
    return type == DataType::kHALF ? EB_BRA_FLOAT16 : EB_BRA_FLOAT32;
}

bool isFloatType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

} // namespace

BiLevelRoutingAttentionPlugin::BiLevelRoutingAttentionPlugin(std::string layerName, BraAttributes const& attrs)
    : mLayerName(std::move(layerName))
    , mAttrs(attrs)
{
    mSerialFields.reserve(kBRA_NB_FIELDS);
    mParams.dtype = EB_BRA_FLOAT32;
}

std::string BiLevelRoutingAttentionPlugin::describe() const
{
    return "layer '" + mLayerName + "'";
}

void BiLevelRoutingAttentionPlugin::reportError(ErrorCode code, std::string const& message) const noexcept
{
    try
    {
        std::string const text = describe() + ": " + message;
        logMessage(Severity::kERROR, text);
        if (mErrorRecorder != nullptr)
        {
            std::string const recorded = std::string{kBRA_PLUGIN_NAME} + " " + text;
            mErrorRecorder->reportError(code, recorded.c_str());
        }
    }
    catch (...)
    {
        logMessage(Severity::kERROR, "an error occurred and could not be formatted (out of memory)");
    }
}

std::unique_ptr<BiLevelRoutingAttentionPlugin> BiLevelRoutingAttentionPlugin::copyConfiguration() const
{
    auto copy = std::make_unique<BiLevelRoutingAttentionPlugin>(mLayerName, mAttrs);
    copy->mSm = mSm;
    copy->mParams = mParams;
    copy->mParamsValid = mParamsValid;
    return copy;
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
    try
    {
        return copyConfiguration().release();
    }
    catch (std::exception const& e)
    {
        reportError(ErrorCode::kINTERNAL_ERROR, std::string{"clone failed: "} + e.what());
    }
    catch (...)
    {
        reportError(ErrorCode::kINTERNAL_ERROR, "clone failed");
    }
    return nullptr;
}

char const* BiLevelRoutingAttentionPlugin::getPluginName() const noexcept
{
    return kBRA_PLUGIN_NAME;
}

char const* BiLevelRoutingAttentionPlugin::getPluginVersion() const noexcept
{
    return kBRA_PLUGIN_VERSION;
}

char const* BiLevelRoutingAttentionPlugin::getPluginNamespace() const noexcept
{
    return kBRA_PLUGIN_NAMESPACE;
}

int32_t BiLevelRoutingAttentionPlugin::getNbOutputs() const noexcept
{
    return kBRA_NB_OUTPUTS;
}

bool BiLevelRoutingAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kBRA_NB_INPUTS || nbOutputs != kBRA_NB_OUTPUTS || pos < 0
        || pos >= kBRA_NB_INPUTS + kBRA_NB_OUTPUTS)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return isFloatType(desc.type); // q decides the float type of k, v and o
    case 3: return desc.type == DataType::kINT32;
    default: return desc.type == inOut[0].desc.type;
    }
}

int32_t BiLevelRoutingAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        if (outputTypes == nullptr || inputTypes == nullptr || nbInputs != kBRA_NB_INPUTS
            || nbOutputs != kBRA_NB_OUTPUTS)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT,
                "expects 4 inputs (q, k, v, r_idx) and 1 output, got " + std::to_string(nbInputs) + " and "
                    + std::to_string(nbOutputs));
            return -1;
        }
        if (!isFloatType(inputTypes[0]) || inputTypes[1] != inputTypes[0] || inputTypes[2] != inputTypes[0])
        {
            reportError(ErrorCode::kINVALID_ARGUMENT,
                std::string{"q, k and v must all be float32 or all be float16; got q "} + dataTypeName(inputTypes[0])
                    + ", k " + dataTypeName(inputTypes[1]) + ", v " + dataTypeName(inputTypes[2]));
            return -1;
        }
        if (inputTypes[3] != DataType::kINT32)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT,
                std::string{"r_idx must be int32 (Cast the TopK indices to int32), got "}
                    + dataTypeName(inputTypes[3]));
            return -1;
        }
        outputTypes[0] = inputTypes[0];
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
        if (inputs == nullptr || outputs == nullptr || nbInputs != kBRA_NB_INPUTS || nbOutputs != kBRA_NB_OUTPUTS
            || nbShapeInputs != 0)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT,
                "expects 4 tensor inputs (q, k, v, r_idx), no shape inputs and 1 output; got "
                    + std::to_string(nbInputs) + " inputs, " + std::to_string(nbShapeInputs) + " shape inputs and "
                    + std::to_string(nbOutputs) + " outputs");
            return -1;
        }
        std::string const err = checkShapeExprs(mAttrs, inputs);
        if (!err.empty())
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, err);
            return -1;
        }
        // o = [N, Hq, Wq, Cv]
        DimsExprs const& q = inputs[0];
        outputs[0].nbDims = 4;
        outputs[0].d[0] = q.d[0];
        outputs[0].d[1] = q.d[1];
        outputs[0].d[2] = q.d[2];
        outputs[0].d[3] = inputs[2].d[3];
        return 0;
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
        if (in == nullptr || out == nullptr || nbInputs != kBRA_NB_INPUTS || nbOutputs != kBRA_NB_OUTPUTS)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, "expects 4 inputs and 1 output");
            return -1;
        }
        DataType const type = in[0].desc.type;
        if (!isFloatType(type) || in[1].desc.type != type || in[2].desc.type != type || out[0].desc.type != type
            || in[3].desc.type != DataType::kINT32)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT,
                "q, k, v, o must be all float32 or all float16 and r_idx int32 (linear layout)");
            return -1;
        }
        // The optimization profile's bounds must satisfy the contract (a shape inside the range may still
        // break it, e.g. an H that is not a multiple of n_win: onShapeChange rejects those).
        struct Bound
        {
            char const* name;
            Dims DynamicPluginTensorDesc::*member;
        };
        int32_t const sm = currentDeviceSm(nullptr);
        for (Bound const& bound : {Bound{"profile kMIN shapes", &DynamicPluginTensorDesc::min},
                 Bound{"profile kOPT shapes", &DynamicPluginTensorDesc::opt},
                 Bound{"profile kMAX shapes", &DynamicPluginTensorDesc::max}})
        {
            eb_bra_params_t params{};
            std::string err = checkShapes(mAttrs, in[0].*bound.member, in[1].*bound.member, in[2].*bound.member,
                in[3].*bound.member, bound.name, &params);
            if (!err.empty())
            {
                reportError(ErrorCode::kINVALID_ARGUMENT, err);
                return -1;
            }
            params.dtype = toBraDtype(type);
            if (sm >= 0 && params.batch > 0 && params.hq > 0 && params.wq > 0)
            {
                eb_bra_status_t const status = eb_bra_check(&params, sm);
                if (status != EB_BRA_SUCCESS)
                {
                    reportError(ErrorCode::kINVALID_ARGUMENT,
                        std::string{bound.name} + ": " + statusMessage(status, params, sm));
                    return -1;
                }
            }
        }
        if (sm >= 0)
        {
            mSm = sm;
        }
        else
        {
            logMessage(Severity::kVERBOSE,
                describe() + ": no CUDA context is current in configurePlugin; the kernel check for the GPU "
                    "architecture runs when the plugin is attached to an execution context");
        }
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

size_t BiLevelRoutingAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/,
    int32_t /*nbInputs*/, DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

char const* BiLevelRoutingAttentionPlugin::getMetadataString() noexcept
{
    try
    {
        // Built once: the attributes never change after construction, and a pointer returned earlier
        // (getTimingCacheID shares this string) must stay valid while TensorRT holds it.
        if (mMetadata.empty())
        {
            std::ostringstream os;
            os.precision(9);
            for (BraField const& field : kBRA_FIELDS)
            {
                os << (&field == kBRA_FIELDS ? "" : ", ") << field.name << '=';
                if (field.intMember != nullptr)
                {
                    os << mAttrs.*field.intMember;
                }
                else
                {
                    os << mAttrs.*field.floatMember;
                }
            }
            mMetadata = os.str();
        }
        return mMetadata.c_str();
    }
    catch (...)
    {
        return nullptr;
    }
}

char const* BiLevelRoutingAttentionPlugin::getTimingCacheID() noexcept
{
    // The creation state is the attributes; TensorRT adds the I/O shapes and formats itself.
    return getMetadataString();
}

std::string BiLevelRoutingAttentionPlugin::loadKernelModule() noexcept
{
    try
    {
        CUcontext ctx{nullptr};
        int32_t const sm = currentDeviceSm(&ctx);
        if (sm < 0)
        {
            return "no CUDA context is current on this thread, so the kernels cannot be loaded; make the engine's "
                   "device current (cudaSetDevice) before creating the execution context";
        }
        eb_bra_status_t status{EB_BRA_SUCCESS};
        BraModulePtr module = acquireKernelModule(ctx, &status);
        if (!module)
        {
            eb_bra_params_t p = mParams;
            p.num_heads = mAttrs.numHeads;
            return "cannot load the kernels: " + statusMessage(status, p, sm);
        }
        mModule = std::move(module);
        mSm = sm;
        if (mParamsValid)
        {
            eb_bra_status_t const check = eb_bra_check(&mParams, mSm);
            if (check != EB_BRA_SUCCESS)
            {
                return "the current shapes cannot run here: " + statusMessage(check, mParams, mSm);
            }
        }
        return {};
    }
    catch (...)
    {
        return "cannot load the kernels (out of memory)";
    }
}

IPluginV3* BiLevelRoutingAttentionPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    try
    {
        std::unique_ptr<BiLevelRoutingAttentionPlugin> attached = copyConfiguration();
        attached->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
        CUcontext current{nullptr};
        if (cuCtxGetCurrent(&current) != CUDA_SUCCESS || current == nullptr)
        {
            // Unusual (TensorRT creates execution contexts with the engine's device current): load at the
            // first onShapeChange instead. TensorRT calls it during the next enqueueV3, so that first
            // inference pays for the load; the plugin's enqueue itself never loads.
            logMessage(Severity::kVERBOSE,
                describe() + ": no CUDA context is current in attachToContext; loading the kernels at the first "
                             "onShapeChange");
            return attached.release();
        }
        std::string const err = attached->loadKernelModule();
        if (!err.empty())
        {
            attached->reportError(ErrorCode::kINVALID_STATE, err);
            return nullptr;
        }
        return attached.release();
    }
    catch (std::exception const& e)
    {
        reportError(ErrorCode::kINTERNAL_ERROR, std::string{"attachToContext failed: "} + e.what());
    }
    catch (...)
    {
        reportError(ErrorCode::kINTERNAL_ERROR, "attachToContext failed");
    }
    return nullptr;
}

int32_t BiLevelRoutingAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        mParamsValid = false;
        if (in == nullptr || out == nullptr || nbInputs != kBRA_NB_INPUTS || nbOutputs != kBRA_NB_OUTPUTS)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, "expects 4 inputs and 1 output");
            return -1;
        }
        DataType const type = in[0].type;
        if (!isFloatType(type) || in[1].type != type || in[2].type != type || out[0].type != type
            || in[3].type != DataType::kINT32)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, "q, k, v, o must be all float32 or all float16 and r_idx int32");
            return -1;
        }
        eb_bra_params_t params{};
        std::string err = checkShapes(mAttrs, in[0].dims, in[1].dims, in[2].dims, in[3].dims, "input shapes", &params);
        if (!err.empty())
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, err);
            return -1;
        }
        Dims const& o = out[0].dims;
        if (o.nbDims != 4 || o.d[0] != params.batch || o.d[1] != params.hq || o.d[2] != params.wq
            || o.d[3] != params.c_v)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT,
                "the output shape " + dimsToString(o) + " is not [N, Hq, Wq, Cv] of the inputs");
            return -1;
        }
        params.dtype = toBraDtype(type);
        if (!mModule)
        {
            err = loadKernelModule();
            if (!err.empty())
            {
                reportError(ErrorCode::kINVALID_STATE, err);
                return -1;
            }
        }
        if (params.batch > 0 && params.hq > 0 && params.wq > 0)
        {
            eb_bra_status_t const status = eb_bra_check(&params, mSm);
            if (status != EB_BRA_SUCCESS)
            {
                reportError(ErrorCode::kINVALID_ARGUMENT, "input shapes: " + statusMessage(status, params, mSm));
                return -1;
            }
        }
        mParams = params;
        mParamsValid = true;
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

int32_t BiLevelRoutingAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc,
    PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs, void* /*workspace*/,
    cudaStream_t stream) noexcept
{
    if (!mParamsValid || !mModule)
    {
        reportError(ErrorCode::kINVALID_STATE,
            "enqueue was called before the plugin was configured for its shapes (onShapeChange) and attached to an "
            "execution context");
        return -1;
    }
    Dims const& q = inputDesc[0].dims;
    Dims const& k = inputDesc[1].dims;
    if (q.d[0] != mParams.batch || q.d[1] != mParams.hq || q.d[2] != mParams.wq || k.d[1] != mParams.hk
        || k.d[2] != mParams.wk || toBraDtype(inputDesc[0].type) != mParams.dtype)
    {
        reportError(ErrorCode::kINVALID_STATE, "the tensor shapes changed without onShapeChange");
        return -1;
    }
    if (mParams.batch == 0 || mParams.hq == 0 || mParams.wq == 0)
    {
        return 0; // empty output: nothing to compute
    }
    auto const ptr = [](void const* p) { return static_cast<CUdeviceptr>(reinterpret_cast<std::uintptr_t>(p)); };
    eb_bra_status_t const status = eb_bra_launch(mModule.get(), stream, &mParams, ptr(inputs[0]), ptr(inputs[1]),
        ptr(inputs[2]), ptr(inputs[3]), ptr(outputs[0]));
    if (status == EB_BRA_SUCCESS)
    {
        return 0;
    }
    try
    {
        std::string message = "kernel launch failed: " + statusMessage(status, mParams, mSm);
        CUcontext streamCtx{nullptr};
        CUcontext currentCtx{nullptr};
        if (status == EB_BRA_ERR_CUDA && cuStreamGetCtx(stream, &streamCtx) == CUDA_SUCCESS
            && cuCtxGetCurrent(&currentCtx) == CUDA_SUCCESS && streamCtx != currentCtx)
        {
            message += "; the stream belongs to another CUDA context than the current one: enqueue on a stream of "
                       "the device the execution context was created on";
        }
        reportError(ErrorCode::kFAILED_EXECUTION, message);
    }
    catch (...)
    {
        logMessage(Severity::kERROR, "kernel launch failed");
    }
    return -1;
}

PluginFieldCollection const* BiLevelRoutingAttentionPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mSerialFields.clear();
        for (BraField const& field : kBRA_FIELDS)
        {
            void const* data = field.intMember != nullptr ? static_cast<void const*>(&(mAttrs.*field.intMember))
                                                          : static_cast<void const*>(&(mAttrs.*field.floatMember));
            mSerialFields.emplace_back(field.name, data, field.type, 1);
        }
        mSerialFc.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialFc.fields = mSerialFields.data();
        return &mSerialFc;
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace plugin
} // namespace edge_biformer
