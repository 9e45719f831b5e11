#include "bra_plugin_core.h"

#include "cuda_driver.h"
#include "plugin_fields.h"
#include "plugin_logging.h"
#include "tensorrt_compat.h"

#include <cstring>
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
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace
{

//! First word of the serialized state: the layout of the bytes that follow (one value per plugin field).
constexpr uint32_t kSERIAL_FORMAT = 0x45420001U; // "EB", layout 1

eb_bra_dtype_t toBraDtype(DataType type) noexcept
{
    return type == DataType::kHALF ? EB_BRA_FLOAT16 : EB_BRA_FLOAT32;
}

bool isFloatType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

//! Whether q, k, v, o share one float type and r_idx is int32.
bool typesValid(DataType q, DataType k, DataType v, DataType rIdx, DataType o) noexcept
{
    return isFloatType(q) && k == q && v == q && o == q && rIdx == DataType::kINT32;
}

//! Whether tensor `pos` of `inOut` (q, k, v, r_idx, o) may have its type and format; `desc` reads an element.
template <typename Desc, typename GetDesc>
bool formatSupported(int32_t pos, Desc const* inOut, int32_t nbInputs, int32_t nbOutputs, GetDesc desc) noexcept
{
    if (inOut == nullptr || nbInputs != kBRA_NB_INPUTS || nbOutputs != kBRA_NB_OUTPUTS || pos < 0
        || pos >= kBRA_NB_INPUTS + kBRA_NB_OUTPUTS)
    {
        return false;
    }
    PluginTensorDesc const tensor = desc(inOut[pos]);
    if (tensor.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return isFloatType(tensor.type); // q decides the float type of k, v and o
    case 3: return tensor.type == DataType::kINT32;
    default: return tensor.type == desc(inOut[0]).type;
    }
}

void const* fieldData(BraAttributes const& attrs, BraField const& field) noexcept
{
    return field.intMember != nullptr ? static_cast<void const*>(&(attrs.*field.intMember))
                                      : static_cast<void const*>(&(attrs.*field.floatMember));
}

} // namespace

void PluginNamespace::set(char const* value) noexcept
{
    try
    {
        mValue = value != nullptr ? value : "";
    }
    catch (...)
    {
        mValue.clear();
    }
}

PluginFieldCollection const* BraPluginCore::fieldNames() noexcept
{
    struct Names
    {
        std::vector<PluginField> fields;
        PluginFieldCollection fc{};
        Names()
        {
            for (BraField const& field : kBRA_FIELDS)
            {
                fields.emplace_back(field.name, nullptr, field.type, 1);
            }
            fc.nbFields = static_cast<int32_t>(fields.size());
            fc.fields = fields.data();
        }
    };
    try
    {
        static Names const names;
        return &names.fc;
    }
    catch (...)
    {
        return nullptr;
    }
}

bool BraPluginCore::creationAttributes(
    char const* name, PluginFieldCollection const* fc, char const* phase, BraAttributes& attrs) noexcept
{
    try
    {
        std::string err = parseAttributes(fc, attrs);
        if (err.empty())
        {
            err = validateAttributes(attrs);
        }
        if (err.empty())
        {
            return true;
        }
        logMessage(Severity::kERROR,
            "cannot create layer '" + std::string{name != nullptr ? name : ""} + "' (" + phase + " phase): " + err);
    }
    catch (...)
    {
        logMessage(Severity::kERROR, "cannot create the plugin (out of memory)");
    }
    return false;
}

BraPluginCore::BraPluginCore(std::string layerName, BraAttributes const& attrs)
    : mLayerName(std::move(layerName))
    , mAttrs(attrs)
{
    mParams.dtype = EB_BRA_FLOAT32;
}

BraPluginCore::BraPluginCore(BraPluginCore const& other)
    : mLayerName(other.mLayerName)
    , mAttrs(other.mAttrs)
    , mSm(other.mSm)
    , mParams(other.mParams)
    , mParamsValid(other.mParamsValid)
{
}

std::string BraPluginCore::describe() const
{
    return "layer '" + mLayerName + "'";
}

void BraPluginCore::reportError(ErrorCode code, std::string const& message) const noexcept
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

bool BraPluginCore::supportsFormat(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return formatSupported(pos, inOut, nbInputs, nbOutputs, [](DynamicPluginTensorDesc const& d) { return d.desc; });
}

bool BraPluginCore::supportsFormat(
    int32_t pos, PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return formatSupported(pos, inOut, nbInputs, nbOutputs, [](PluginTensorDesc const& d) { return d; });
}

std::string BraPluginCore::outputType(DataType const* inputTypes, int32_t nbInputs, int32_t nbOutputs, DataType& output)
{
    if (inputTypes == nullptr || nbInputs != kBRA_NB_INPUTS || nbOutputs != kBRA_NB_OUTPUTS)
    {
        return "expects 4 inputs (q, k, v, r_idx) and 1 output, got " + std::to_string(nbInputs) + " and "
            + std::to_string(nbOutputs);
    }
    if (!isFloatType(inputTypes[0]) || inputTypes[1] != inputTypes[0] || inputTypes[2] != inputTypes[0])
    {
        return std::string{"q, k and v must all be float32 or all be float16; got q "} + dataTypeName(inputTypes[0])
            + ", k " + dataTypeName(inputTypes[1]) + ", v " + dataTypeName(inputTypes[2]);
    }
    if (inputTypes[3] != DataType::kINT32)
    {
        return std::string{"r_idx must be int32 (Cast the TopK indices to int32), got "} + dataTypeName(inputTypes[3]);
    }
    output = inputTypes[0];
    return {};
}

std::string BraPluginCore::outputShape(DimsExprs const* inputs, int32_t nbInputs, DimsExprs& output) const
{
    if (inputs == nullptr || nbInputs != kBRA_NB_INPUTS)
    {
        return "expects 4 tensor inputs (q, k, v, r_idx), got " + std::to_string(nbInputs);
    }
    std::string err = checkShapeExprs(mAttrs, inputs);
    if (!err.empty())
    {
        return err;
    }
    // o = [N, Hq, Wq, Cv]
    output.nbDims = 4;
    output.d[0] = inputs[0].d[0];
    output.d[1] = inputs[0].d[1];
    output.d[2] = inputs[0].d[2];
    output.d[3] = inputs[2].d[3];
    return {};
}

std::string BraPluginCore::configure(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs)
{
    if (in == nullptr || out == nullptr || nbInputs != kBRA_NB_INPUTS || nbOutputs != kBRA_NB_OUTPUTS)
    {
        return "expects 4 inputs and 1 output";
    }
    DataType const type = in[0].desc.type;
    if (!typesValid(type, in[1].desc.type, in[2].desc.type, in[3].desc.type, out[0].desc.type))
    {
        return "q, k, v, o must be all float32 or all float16 and r_idx int32 (linear layout)";
    }
    // The optimization profile's bounds must satisfy the contract (a shape inside the range may still
    // break it, e.g. an H that is not a multiple of n_win: the run-time shape check rejects those).
    struct Bound
    {
        char const* name;
        Dims DynamicPluginTensorDesc::*member;
    };
    Bound const bounds[] = {Bound{"profile kMIN shapes", &DynamicPluginTensorDesc::min},
#if EB_TRT_HAS_PLUGIN_V3
        Bound{"profile kOPT shapes", &DynamicPluginTensorDesc::opt},
#endif
        Bound{"profile kMAX shapes", &DynamicPluginTensorDesc::max}};
    int32_t const sm = currentDeviceSm(nullptr);
    for (Bound const& bound : bounds)
    {
        eb_bra_params_t params{};
        std::string err = checkShapes(mAttrs, in[0].*bound.member, in[1].*bound.member, in[2].*bound.member,
            in[3].*bound.member, bound.name, &params);
        if (!err.empty())
        {
            return err;
        }
        params.dtype = toBraDtype(type);
        if (sm >= 0 && params.batch > 0 && params.hq > 0 && params.wq > 0)
        {
            eb_bra_status_t const status = eb_bra_check(&params, sm);
            if (status != EB_BRA_SUCCESS)
            {
                return std::string{bound.name} + ": " + statusMessage(status, params, sm);
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
                         "architecture runs when the kernels are loaded");
    }
    return {};
}

std::string BraPluginCore::loadKernelModule() noexcept
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
            std::string message = "cannot load the kernels: " + statusMessage(status, p, sm);
            if (status == EB_BRA_ERR_CUDA)
            {
                message += imageLoadHint(eb_bra_last_cuda_error());
            }
            return message;
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

bool BraPluginCore::ensureKernelModule() noexcept
{
    if (mModule)
    {
        return true;
    }
    try
    {
        // Cold path: a clone that was never attached (or whose attach found no current CUDA context) and
        // whose module no shape check could load. Load now rather than refuse to run.
        logMessage(Severity::kWARNING,
            describe() + ": loading the kernels in enqueue (the plugin was not attached to an execution context); "
                         "this call pays for the load and must not be captured into a CUDA graph");
        std::string const err = loadKernelModule();
        if (!err.empty())
        {
            reportError(ErrorCode::kINVALID_STATE, err);
            return false;
        }
        return true;
    }
    catch (...)
    {
        return false;
    }
}

bool BraPluginCore::shapesMatch(PluginTensorDesc const* in, PluginTensorDesc const* out) const noexcept
{
    if (!mParamsValid || in == nullptr || out == nullptr)
    {
        return false;
    }
    eb_bra_params_t const& p = mParams;
    Dims const& q = in[0].dims;
    Dims const& k = in[1].dims;
    Dims const& v = in[2].dims;
    Dims const& r = in[3].dims;
    Dims const& o = out[0].dims;
    return q.nbDims == 4 && k.nbDims == 4 && v.nbDims == 4 && r.nbDims == 3 && o.nbDims == 4 && q.d[0] == p.batch
        && q.d[1] == p.hq && q.d[2] == p.wq && q.d[3] == p.c_qk && k.d[0] == p.batch && k.d[1] == p.hk
        && k.d[2] == p.wk && k.d[3] == p.c_qk && v.d[0] == p.batch && v.d[1] == p.hk && v.d[2] == p.wk
        && v.d[3] == p.c_v && r.d[0] == p.batch && r.d[1] == p.n_win * p.n_win && r.d[2] == p.topk && o.d[0] == p.batch
        && o.d[1] == p.hq && o.d[2] == p.wq && o.d[3] == p.c_v && toBraDtype(in[0].type) == p.dtype
        && typesValid(in[0].type, in[1].type, in[2].type, in[3].type, out[0].type);
}

std::string BraPluginCore::setShapes(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs)
{
    mParamsValid = false;
    if (in == nullptr || out == nullptr || nbInputs != kBRA_NB_INPUTS || nbOutputs != kBRA_NB_OUTPUTS)
    {
        return "expects 4 inputs and 1 output";
    }
    DataType const type = in[0].type;
    if (!typesValid(type, in[1].type, in[2].type, in[3].type, out[0].type))
    {
        return "q, k, v, o must be all float32 or all float16 and r_idx int32";
    }
    eb_bra_params_t params{};
    std::string err = checkShapes(mAttrs, in[0].dims, in[1].dims, in[2].dims, in[3].dims, "input shapes", &params);
    if (!err.empty())
    {
        return err;
    }
    Dims const& o = out[0].dims;
    if (o.nbDims != 4 || o.d[0] != params.batch || o.d[1] != params.hq || o.d[2] != params.wq || o.d[3] != params.c_v)
    {
        return "the output shape " + dimsToString(o) + " is not [N, Hq, Wq, Cv] of the inputs";
    }
    params.dtype = toBraDtype(type);
    if (!mModule)
    {
        err = loadKernelModule();
        if (!err.empty())
        {
            return err;
        }
    }
    if (params.batch > 0 && params.hq > 0 && params.wq > 0)
    {
        eb_bra_status_t const status = eb_bra_check(&params, mSm);
        if (status != EB_BRA_SUCCESS)
        {
            return "input shapes: " + statusMessage(status, params, mSm);
        }
    }
    mParams = params;
    mParamsValid = true;
    return {};
}

int32_t BraPluginCore::launch(void const* const* inputs, void* const* outputs, cudaStream_t stream) noexcept
{
    if (mParams.batch == 0 || mParams.hq == 0 || mParams.wq == 0)
    {
        return 0; // empty output: nothing to compute
    }
    auto const ptr = [](void const* p) { return static_cast<CUdeviceptr>(reinterpret_cast<std::uintptr_t>(p)); };
    auto const cuStream = reinterpret_cast<CUstream>(stream);
    eb_bra_status_t const status = eb_bra_launch(mModule.get(), cuStream, &mParams, ptr(inputs[0]), ptr(inputs[1]),
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
        if (status == EB_BRA_ERR_CUDA && cuStreamGetCtx(cuStream, &streamCtx) == CUDA_SUCCESS
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

char const* BraPluginCore::metadata() noexcept
{
    try
    {
        // Built once: the attributes never change after construction, and a pointer returned earlier
        // (the timing cache ID shares this string) must stay valid while TensorRT holds it.
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

PluginFieldCollection const* BraPluginCore::serialFields()
{
    mSerialFields.clear();
    for (BraField const& field : kBRA_FIELDS)
    {
        mSerialFields.emplace_back(field.name, fieldData(mAttrs, field), field.type, 1);
    }
    mSerialFc.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialFc.fields = mSerialFields.data();
    return &mSerialFc;
}

size_t BraPluginCore::serializedSize() noexcept
{
    // Every plugin field is one 4-byte value (int32 or float32: see braFieldTypesMatchAttributes).
    return sizeof(kSERIAL_FORMAT) + static_cast<size_t>(kBRA_NB_FIELDS) * 4U;
}

void BraPluginCore::serialize(void* buffer) const noexcept
{
    auto* bytes = static_cast<unsigned char*>(buffer);
    std::memcpy(bytes, &kSERIAL_FORMAT, sizeof(kSERIAL_FORMAT));
    bytes += sizeof(kSERIAL_FORMAT);
    for (BraField const& field : kBRA_FIELDS)
    {
        std::memcpy(bytes, fieldData(mAttrs, field), 4U);
        bytes += 4;
    }
}

std::string BraPluginCore::deserialize(void const* data, size_t length, BraAttributes& attrs)
{
    uint32_t format{0};
    if (data == nullptr || length != serializedSize()
        || (std::memcpy(&format, data, sizeof(format)), format != kSERIAL_FORMAT))
    {
        return "the serialized state (" + std::to_string(length) + " bytes) was not written by this version of the "
            "plugin (expected " + std::to_string(serializedSize()) + " bytes); rebuild the engine with this library";
    }
    // The bytes are the plugin fields: read them back through the one field parser.
    auto const* values = static_cast<unsigned char const*>(data) + sizeof(format);
    std::vector<PluginField> fields;
    for (int32_t i = 0; i < kBRA_NB_FIELDS; ++i)
    {
        fields.emplace_back(kBRA_FIELDS[i].name, values + 4 * i, kBRA_FIELDS[i].type, 1);
    }
    PluginFieldCollection const fc{static_cast<int32_t>(fields.size()), fields.data()};
    std::string err = parseAttributes(&fc, attrs);
    return err.empty() ? validateAttributes(attrs) : err;
}

} // namespace plugin
} // namespace edge_biformer
