#include "bra_plugin.h"

#include "bra_logging.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
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
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;
using nvinfer1::TensorRTPhase;

namespace
{

constexpr char const* kFIELD_N_WIN = "n_win";
constexpr char const* kFIELD_NUM_HEADS = "num_heads";
constexpr char const* kFIELD_TOPK = "topk";
constexpr char const* kFIELD_SCALE = "scale";
constexpr char const* kFIELD_PLUGIN_VERSION = "plugin_version";
constexpr char const* kFIELD_PLUGIN_NAMESPACE = "plugin_namespace";
constexpr char const* kFIELDS_HELP
    = "BiLevelRoutingAttention takes the fields n_win, num_heads, topk (int32) and scale (float32)";

//! Largest n_win for which n_win * n_win fits int32.
constexpr int32_t kMAX_N_WIN = 46340;

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

//! One integer value of a field (kINT8/16/32/64 are accepted: applications build fields by hand).
std::string readIntField(PluginField const& field, int64_t& value)
{
    if (field.data == nullptr || field.length != 1)
    {
        return std::string{"field '"} + field.name + "' must hold exactly one value (got length "
            + std::to_string(field.length) + ")";
    }
    switch (field.type)
    {
    case PluginFieldType::kINT8:
    {
        int8_t v{};
        std::memcpy(&v, field.data, sizeof(v));
        value = v;
        return {};
    }
    case PluginFieldType::kINT16:
    {
        int16_t v{};
        std::memcpy(&v, field.data, sizeof(v));
        value = v;
        return {};
    }
    case PluginFieldType::kINT32:
    {
        int32_t v{};
        std::memcpy(&v, field.data, sizeof(v));
        value = v;
        return {};
    }
    case PluginFieldType::kINT64:
    {
        int64_t v{};
        std::memcpy(&v, field.data, sizeof(v));
        value = v;
        return {};
    }
    default: break;
    }
    return std::string{"field '"} + field.name + "' must be an integer (kINT32), got " + fieldTypeName(field.type);
}

//! One float value of a field (kFLOAT32, or kFLOAT64 from hand-built fields).
std::string readFloatField(PluginField const& field, double& value)
{
    if (field.data == nullptr || field.length != 1)
    {
        return std::string{"field '"} + field.name + "' must hold exactly one value (got length "
            + std::to_string(field.length) + ")";
    }
    if (field.type == PluginFieldType::kFLOAT32)
    {
        float v{};
        std::memcpy(&v, field.data, sizeof(v));
        value = v;
        return {};
    }
    if (field.type == PluginFieldType::kFLOAT64)
    {
        double v{};
        std::memcpy(&v, field.data, sizeof(v));
        value = v;
        return {};
    }
    return std::string{"field '"} + field.name + "' must be a float (kFLOAT32), got " + fieldTypeName(field.type);
}

//! A kCHAR field as a string (the ONNX parser passes its length without a terminating NUL).
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

std::string intAttribute(PluginField const& field, int32_t& out)
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
    out = static_cast<int32_t>(v);
    return {};
}

bool fitsInt32(int64_t v) noexcept
{
    return v >= 0 && v <= std::numeric_limits<int32_t>::max();
}

eb_bra_dtype_t toBraDtype(DataType type) noexcept
{
    return type == DataType::kHALF ? EB_BRA_FLOAT16 : EB_BRA_FLOAT32;
}

bool isFloatType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

//! major*10 + minor of the device of the current CUDA context, or -1 (no context, driver error).
int32_t currentDeviceSm(CUcontext* ctxOut) noexcept
{
    CUcontext ctx{nullptr};
    if (cuCtxGetCurrent(&ctx) != CUDA_SUCCESS || ctx == nullptr)
    {
        return -1;
    }
    CUdevice device{};
    int major{0};
    int minor{0};
    if (cuCtxGetDevice(&device) != CUDA_SUCCESS
        || cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device) != CUDA_SUCCESS
        || cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device) != CUDA_SUCCESS)
    {
        return -1;
    }
    if (ctxOut != nullptr)
    {
        *ctxOut = ctx;
    }
    return major * 10 + minor;
}

std::string cudaErrorText(CUresult result)
{
    char const* name = nullptr;
    char const* text = nullptr;
    if (cuGetErrorName(result, &name) != CUDA_SUCCESS || name == nullptr)
    {
        return "CUresult " + std::to_string(static_cast<int>(result));
    }
    std::string out{name};
    if (cuGetErrorString(result, &text) == CUDA_SUCCESS && text != nullptr)
    {
        out += std::string{" ("} + text + ")";
    }
    return out;
}

//! What a failed eb_bra_check/eb_bra_launch status means for the user.
std::string statusMessage(eb_bra_status_t status, eb_bra_params_t const& p, int32_t sm)
{
    std::ostringstream os;
    char const* text = eb_bra_status_string(status);
    os << (text != nullptr ? text : "unknown status") << " [status " << static_cast<int>(status) << "]";
    switch (status)
    {
    case EB_BRA_ERR_NO_KERNEL_FOR_ARCH:
        os << ": the library holds no kernel image for this GPU (sm_" << sm
           << "); rebuild it with this architecture, e.g. scripts/build_plugins.sh --cuda-architectures " << sm;
        break;
    case EB_BRA_ERR_UNSUPPORTED:
    {
        int32_t const dQk = p.num_heads > 0 ? p.c_qk / p.num_heads : 0;
        int32_t const dV = p.num_heads > 0 ? p.c_v / p.num_heads : 0;
        char const* const dtype = p.dtype == EB_BRA_FLOAT16 ? "float16" : "float32";
        if (dQk > 128 || dV > 128)
        {
            os << ": head dims d_qk=" << dQk << ", d_v=" << dV << " (" << dtype
               << ") exceed the largest compiled kernel variant (128)";
        }
        else
        {
            os << ": no compiled kernel variant runs this call (" << dtype << ", d_qk=" << dQk << ", d_v=" << dV
               << "): the variant was left out of the AOT build (--dtype/--head-dim), it needs more shared memory "
                  "than this GPU offers, or one image's map or the grid exceeds 2^31 elements; see "
                  "plugins/bra/README.md, Kernel";
        }
        break;
    }
    case EB_BRA_ERR_CUDA: os << ": " << cudaErrorText(eb_bra_last_cuda_error()); break;
    default: break;
    }
    return os.str();
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------------
// Attributes and shape rules (free functions, unit-tested without a GPU).

std::string parseAttributes(PluginFieldCollection const* fc, BraAttributes& out) noexcept
{
    try
    {
        if (fc == nullptr || fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr))
        {
            return std::string{"no plugin fields were given; "} + kFIELDS_HELP;
        }
        bool seenNWin{false};
        bool seenHeads{false};
        bool seenTopk{false};
        bool seenScale{false};
        BraAttributes attrs;
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            if (field.name == nullptr)
            {
                return "plugin field #" + std::to_string(i) + " has no name; " + kFIELDS_HELP;
            }
            std::string const name{field.name};
            auto once = [&name](bool& seen) -> std::string {
                if (seen)
                {
                    return "field '" + name + "' is given twice";
                }
                seen = true;
                return {};
            };
            std::string err;
            if (name == kFIELD_N_WIN)
            {
                err = once(seenNWin);
                if (err.empty())
                {
                    err = intAttribute(field, attrs.nWin);
                }
            }
            else if (name == kFIELD_NUM_HEADS)
            {
                err = once(seenHeads);
                if (err.empty())
                {
                    err = intAttribute(field, attrs.numHeads);
                }
            }
            else if (name == kFIELD_TOPK)
            {
                err = once(seenTopk);
                if (err.empty())
                {
                    err = intAttribute(field, attrs.topk);
                }
            }
            else if (name == kFIELD_SCALE)
            {
                err = once(seenScale);
                double v{};
                if (err.empty())
                {
                    err = readFloatField(field, v);
                }
                if (err.empty())
                {
                    attrs.scale = static_cast<float>(v);
                }
            }
            else if (name == kFIELD_PLUGIN_VERSION || name == kFIELD_PLUGIN_NAMESPACE)
            {
                // The ONNX node's lookup keys; some parser versions pass them on as fields.
                std::string value;
                err = readStringField(field, value);
                char const* expected = name == kFIELD_PLUGIN_VERSION ? kBRA_PLUGIN_VERSION : kBRA_PLUGIN_NAMESPACE;
                if (err.empty() && value != expected)
                {
                    err = "field '" + name + "' is '" + value + "' but this library implements " + kBRA_PLUGIN_NAME
                        + " version " + kBRA_PLUGIN_VERSION + " in namespace " + kBRA_PLUGIN_NAMESPACE;
                }
            }
            else
            {
                err = "unknown plugin field '" + name + "'; " + kFIELDS_HELP;
            }
            if (!err.empty())
            {
                return err;
            }
        }
        std::string missing;
        for (auto const& [seen, name] : {std::pair<bool, char const*>{seenNWin, kFIELD_N_WIN},
                 {seenHeads, kFIELD_NUM_HEADS}, {seenTopk, kFIELD_TOPK}, {seenScale, kFIELD_SCALE}})
        {
            if (!seen)
            {
                missing += (missing.empty() ? "" : ", ") + std::string{name};
            }
        }
        if (!missing.empty())
        {
            return "missing plugin field(s) " + missing + "; " + kFIELDS_HELP;
        }
        out = attrs;
        return {};
    }
    catch (std::exception const& e)
    {
        return std::string{"cannot read the plugin fields: "} + e.what();
    }
    catch (...)
    {
        return "cannot read the plugin fields";
    }
}

std::string validateAttributes(BraAttributes const& a) noexcept
{
    try
    {
        if (a.nWin < 1 || a.nWin > kMAX_N_WIN)
        {
            return "n_win = " + std::to_string(a.nWin) + " is out of range [1, " + std::to_string(kMAX_N_WIN) + "]";
        }
        if (a.numHeads < 1)
        {
            return "num_heads = " + std::to_string(a.numHeads) + " must be >= 1";
        }
        int32_t const regions = a.nWin * a.nWin;
        if (a.topk < 1 || a.topk > regions)
        {
            return "topk = " + std::to_string(a.topk) + " must lie in [1, n_win*n_win = " + std::to_string(regions)
                + "]";
        }
        if (!std::isfinite(a.scale))
        {
            return "scale must be a finite number (BiFormer uses qk_dim ** -0.5)";
        }
        return {};
    }
    catch (...)
    {
        return "cannot validate the attributes (out of memory)";
    }
}

std::string checkShapes(BraAttributes const& a, Dims const& q, Dims const& k, Dims const& v, Dims const& rIdx,
    char const* what, eb_bra_params_t* params) noexcept
{
    try
    {
        std::string const prefix = std::string{what} + ": ";
        if (q.nbDims != 4 || k.nbDims != 4 || v.nbDims != 4 || rIdx.nbDims != 3)
        {
            return prefix + "q, k, v must be 4-D NHWC and r_idx 3-D [N, n_win*n_win, topk]; got q " + dimsToString(q)
                + ", k " + dimsToString(k) + ", v " + dimsToString(v) + ", r_idx " + dimsToString(rIdx);
        }
        for (Dims const* d : {&q, &k, &v, &rIdx})
        {
            for (int32_t i = 0; i < d->nbDims; ++i)
            {
                if (!fitsInt32(d->d[i]))
                {
                    return prefix + "every dimension must lie in [0, 2^31); got q " + dimsToString(q) + ", k "
                        + dimsToString(k) + ", v " + dimsToString(v) + ", r_idx " + dimsToString(rIdx);
                }
            }
        }
        std::string const shapes = " (q " + dimsToString(q) + ", k " + dimsToString(k) + ", v " + dimsToString(v)
            + ", r_idx " + dimsToString(rIdx) + ")";
        if (k.d[0] != q.d[0] || v.d[0] != q.d[0] || rIdx.d[0] != q.d[0])
        {
            return prefix + "q, k, v and r_idx must have the same batch size" + shapes;
        }
        if (v.d[1] != k.d[1] || v.d[2] != k.d[2])
        {
            return prefix + "k and v must have the same height and width" + shapes;
        }
        if (k.d[3] != q.d[3])
        {
            return prefix + "q and k must have the same number of channels" + shapes;
        }
        int64_t const s = a.nWin;
        if (q.d[1] % s != 0 || q.d[2] % s != 0 || k.d[1] % s != 0 || k.d[2] % s != 0)
        {
            return prefix + "the heights and widths of q and k/v must be multiples of n_win = " + std::to_string(s)
                + shapes + "; pad the maps to a multiple of n_win before the op (BiFormer's auto_pad)";
        }
        if (q.d[3] == 0 || v.d[3] == 0 || q.d[3] % a.numHeads != 0 || v.d[3] % a.numHeads != 0)
        {
            return prefix + "the channels of q/k and of v must be positive multiples of num_heads = "
                + std::to_string(a.numHeads) + shapes;
        }
        if (rIdx.d[1] != s * s || rIdx.d[2] != a.topk)
        {
            return prefix + "r_idx must have shape [N, n_win*n_win = " + std::to_string(s * s)
                + ", topk = " + std::to_string(a.topk) + "]" + shapes;
        }
        if (params != nullptr)
        {
            params->batch = static_cast<int32_t>(q.d[0]);
            params->hq = static_cast<int32_t>(q.d[1]);
            params->wq = static_cast<int32_t>(q.d[2]);
            params->hk = static_cast<int32_t>(k.d[1]);
            params->wk = static_cast<int32_t>(k.d[2]);
            params->c_qk = static_cast<int32_t>(q.d[3]);
            params->c_v = static_cast<int32_t>(v.d[3]);
            params->n_win = a.nWin;
            params->num_heads = a.numHeads;
            params->topk = a.topk;
            params->scale = a.scale;
        }
        return {};
    }
    catch (...)
    {
        return "cannot check the shapes (out of memory)";
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Plugin

BiLevelRoutingAttentionPlugin::BiLevelRoutingAttentionPlugin(std::string layerName, BraAttributes const& attrs)
    : mLayerName(std::move(layerName))
    , mAttrs(attrs)
{
    mSerialFields.reserve(4);
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
        DimsExprs const& q = inputs[0];
        DimsExprs const& k = inputs[1];
        DimsExprs const& v = inputs[2];
        DimsExprs const& r = inputs[3];
        if (q.nbDims != 4 || k.nbDims != 4 || v.nbDims != 4 || r.nbDims != 3)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT,
                "q, k, v must be 4-D NHWC [N, H, W, C] and r_idx 3-D [N, n_win*n_win, topk]; got ranks "
                    + std::to_string(q.nbDims) + ", " + std::to_string(k.nbDims) + ", " + std::to_string(v.nbDims)
                    + ", " + std::to_string(r.nbDims));
            return -1;
        }
        // Build-time checks on whatever is known now; the rest is checked per profile (configurePlugin)
        // and per shape (onShapeChange).
        auto known = [](nvinfer1::IDimensionExpr const* e) { return e != nullptr && e->isConstant(); };
        auto value = [](nvinfer1::IDimensionExpr const* e) { return e->getConstantValue(); };
        for (auto const& [tensor, name] : {std::pair<DimsExprs const*, char const*>{&q, "q"}, {&k, "k"}, {&v, "v"}})
        {
            if (!known(tensor->d[3]))
            {
                reportError(ErrorCode::kINVALID_ARGUMENT,
                    std::string{"the channel count (last dim) of "} + name
                        + " must be known at build time; only N, H and W may be dynamic");
                return -1;
            }
        }
        int64_t const cqk = value(q.d[3]);
        int64_t const cv = value(v.d[3]);
        if (value(k.d[3]) != cqk)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT,
                "q and k must have the same number of channels; got " + std::to_string(cqk) + " and "
                    + std::to_string(value(k.d[3])));
            return -1;
        }
        if (cqk <= 0 || cv <= 0 || cqk % mAttrs.numHeads != 0 || cv % mAttrs.numHeads != 0)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT,
                "the channels of q/k (" + std::to_string(cqk) + ") and of v (" + std::to_string(cv)
                    + ") must be positive multiples of num_heads = " + std::to_string(mAttrs.numHeads));
            return -1;
        }
        int64_t const s = mAttrs.nWin;
        for (auto const& [tensor, name] : {std::pair<DimsExprs const*, char const*>{&q, "q"}, {&k, "k"}, {&v, "v"}})
        {
            for (int32_t axis = 1; axis <= 2; ++axis)
            {
                if (known(tensor->d[axis]) && value(tensor->d[axis]) % s != 0)
                {
                    reportError(ErrorCode::kINVALID_ARGUMENT,
                        std::string{"the "} + (axis == 1 ? "height" : "width") + " of " + name + " ("
                            + std::to_string(value(tensor->d[axis])) + ") must be a multiple of n_win = "
                            + std::to_string(s) + "; pad the maps to a multiple of n_win before the op");
                    return -1;
                }
            }
        }
        for (int32_t axis = 0; axis <= 2; ++axis)
        {
            if (known(k.d[axis]) && known(v.d[axis]) && value(k.d[axis]) != value(v.d[axis]))
            {
                reportError(ErrorCode::kINVALID_ARGUMENT,
                    "k and v must have the same batch, height and width; they differ in dim "
                        + std::to_string(axis));
                return -1;
            }
        }
        int64_t const batches[] = {known(q.d[0]) ? value(q.d[0]) : -1, known(k.d[0]) ? value(k.d[0]) : -1,
            known(r.d[0]) ? value(r.d[0]) : -1};
        for (int64_t b : batches)
        {
            for (int64_t c : batches)
            {
                if (b >= 0 && c >= 0 && b != c)
                {
                    reportError(ErrorCode::kINVALID_ARGUMENT, "q, k, v and r_idx must have the same batch size");
                    return -1;
                }
            }
        }
        if ((known(r.d[1]) && value(r.d[1]) != s * s) || (known(r.d[2]) && value(r.d[2]) != mAttrs.topk))
        {
            reportError(ErrorCode::kINVALID_ARGUMENT,
                "r_idx must have shape [N, n_win*n_win = " + std::to_string(s * s) + ", topk = "
                    + std::to_string(mAttrs.topk) + "]; got [..., "
                    + (known(r.d[1]) ? std::to_string(value(r.d[1])) : std::string{"?"}) + ", "
                    + (known(r.d[2]) ? std::to_string(value(r.d[2])) : std::string{"?"}) + "]");
            return -1;
        }
        // o = [N, Hq, Wq, Cv]
        outputs[0].nbDims = 4;
        outputs[0].d[0] = q.d[0];
        outputs[0].d[1] = q.d[1];
        outputs[0].d[2] = q.d[2];
        outputs[0].d[3] = v.d[3];
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
            os << "n_win=" << mAttrs.nWin << ", num_heads=" << mAttrs.numHeads << ", topk=" << mAttrs.topk
               << ", scale=" << mAttrs.scale;
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
    // The creation state is the four attributes; TensorRT adds the I/O shapes and formats itself.
    return getMetadataString();
}

BraModulePtr acquireKernelModule(CUcontext ctx, eb_bra_status_t* status)
{
    static std::mutex mutex;
    static std::map<CUcontext, std::weak_ptr<struct eb_bra_module>> modules;
    std::lock_guard<std::mutex> const lock(mutex);
    auto const found = modules.find(ctx);
    if (found != modules.end())
    {
        if (BraModulePtr shared = found->second.lock())
        {
            *status = EB_BRA_SUCCESS;
            return shared;
        }
    }
    eb_bra_module_t raw{nullptr};
    *status = eb_bra_module_load(&raw);
    if (*status != EB_BRA_SUCCESS)
    {
        eb_bra_module_unload(raw); // safe on NULL
        return nullptr;
    }
    BraModulePtr shared(raw, [](eb_bra_module_t module) { eb_bra_module_unload(module); });
    modules[ctx] = shared; // an expired entry of a destroyed context with the same handle is replaced
    return shared;
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
        mSerialFields.emplace_back(kFIELD_N_WIN, &mAttrs.nWin, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back(kFIELD_NUM_HEADS, &mAttrs.numHeads, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back(kFIELD_TOPK, &mAttrs.topk, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back(kFIELD_SCALE, &mAttrs.scale, PluginFieldType::kFLOAT32, 1);
        mSerialFc.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialFc.fields = mSerialFields.data();
        return &mSerialFc;
    }
    catch (...)
    {
        return nullptr;
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Creator

BiLevelRoutingAttentionCreator::BiLevelRoutingAttentionCreator()
{
    mFieldNames.emplace_back(kFIELD_N_WIN, nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back(kFIELD_NUM_HEADS, nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back(kFIELD_TOPK, nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back(kFIELD_SCALE, nullptr, PluginFieldType::kFLOAT32, 1);
    mFc.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFc.fields = mFieldNames.data();
}

char const* BiLevelRoutingAttentionCreator::getPluginName() const noexcept
{
    return kBRA_PLUGIN_NAME;
}

char const* BiLevelRoutingAttentionCreator::getPluginVersion() const noexcept
{
    return kBRA_PLUGIN_VERSION;
}

char const* BiLevelRoutingAttentionCreator::getPluginNamespace() const noexcept
{
    return kBRA_PLUGIN_NAMESPACE;
}

PluginFieldCollection const* BiLevelRoutingAttentionCreator::getFieldNames() noexcept
{
    return &mFc;
}

IPluginV3* BiLevelRoutingAttentionCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    try
    {
        std::string const layer = name != nullptr ? name : "";
        BraAttributes attrs;
        std::string err = parseAttributes(fc, attrs);
        if (err.empty())
        {
            err = validateAttributes(attrs);
        }
        if (!err.empty())
        {
            logMessage(Severity::kERROR,
                "cannot create layer '" + layer + "' (" + (phase == TensorRTPhase::kBUILD ? "build" : "runtime")
                    + " phase): " + err);
            return nullptr;
        }
        return new BiLevelRoutingAttentionPlugin(layer, attrs);
    }
    catch (std::exception const& e)
    {
        logMessage(Severity::kERROR, std::string{"createPlugin failed: "} + e.what());
    }
    catch (...)
    {
        logMessage(Severity::kERROR, "createPlugin failed");
    }
    return nullptr;
}

BiLevelRoutingAttentionCreator& braCreator() noexcept
{
    // Constructed on first use (by the load-time registrar or the first getCreators call); lives until the
    // library is finalised. The library is linked with -z nodelete, so the registry never outlives it.
    static BiLevelRoutingAttentionCreator creator;
    return creator;
}

} // namespace plugin
} // namespace edge_biformer
