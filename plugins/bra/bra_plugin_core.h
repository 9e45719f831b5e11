/*
 * What the two TensorRT plugin classes of BiLevelRoutingAttention share: the IPluginV3 of TensorRT >= 10
 * (bra_plugin.h) and the IPluginV2DynamicExt of TensorRT 8.5/8.6 (bra_plugin_v2.h) are thin adapters of
 * this class to their interface. It holds the layer's attributes and run-time state and implements the
 * op's rules on types, formats and shapes (with bra_validation.h), the kernel module of the current CUDA
 * context (bra_kernel_module.h), the launch (bra_launch.h), the metadata string and the serialized state.
 */
#ifndef EDGE_BIFORMER_BRA_PLUGIN_CORE_H
#define EDGE_BIFORMER_BRA_PLUGIN_CORE_H

#include "bra_kernel_module.h"
#include "bra_launch.h"
#include "bra_validation.h"

#include <NvInferRuntime.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace edge_biformer
{
namespace plugin
{

//! `make()`, or null when it throws (`onError` gets what went wrong): the plugin factories' error path.
template <typename Make, typename OnError>
auto nullOnThrow(Make&& make, OnError&& onError) noexcept -> decltype(make())
{
    try
    {
        return make();
    }
    catch (std::exception const& e)
    {
        onError(e.what());
    }
    catch (...)
    {
        onError("unknown error");
    }
    return nullptr;
}

//! The plugin namespace TensorRT 8 sets on creators and plugins (setPluginNamespace), the contract's by default.
class PluginNamespace
{
public:
    void set(char const* value) noexcept;
    char const* get() const noexcept
    {
        return mValue.c_str();
    }

private:
    std::string mValue{kBRA_PLUGIN_NAMESPACE};
};

class BraPluginCore
{
public:
    //! What both creators list in getFieldNames(): the contract's plugin fields (no data; static storage).
    static nvinfer1::PluginFieldCollection const* fieldNames() noexcept;
    //! The attributes of creation fields (parsed and validated). On error logs "cannot create layer '<name>'
    //! (<phase> phase): ..." and returns false.
    static bool creationAttributes(
        char const* name, nvinfer1::PluginFieldCollection const* fc, char const* phase, BraAttributes& attrs) noexcept;

    BraPluginCore(std::string layerName, BraAttributes const& attrs);

    //! The same layer with the same configuration (attributes, GPU, launch parameters), but no kernel
    //! module and no error recorder: both belong to one execution context.
    BraPluginCore(BraPluginCore const& other);
    BraPluginCore& operator=(BraPluginCore const&) = delete;
    BraPluginCore(BraPluginCore&&) = delete;
    BraPluginCore& operator=(BraPluginCore&&) = delete;
    ~BraPluginCore() = default;

    BraAttributes const& attributes() const noexcept
    {
        return mAttrs;
    }
    bool hasKernelModule() const noexcept
    {
        return mModule != nullptr;
    }
    //! The execution context's error recorder (IPluginV3 only; TensorRT 8 plugins have none).
    void setErrorRecorder(nvinfer1::IErrorRecorder* recorder) noexcept
    {
        mErrorRecorder = recorder;
    }

    //! Log an error (the logger and, when set, the error recorder), prefixed with the layer's name.
    void reportError(nvinfer1::ErrorCode code, std::string const& message) const noexcept;
    //! Whether `error` is one (non-empty): then it is reported with `code`.
    bool failed(nvinfer1::ErrorCode code, std::string const& error) const noexcept
    {
        if (error.empty())
        {
            return false;
        }
        reportError(code, error);
        return true;
    }

    // ---- build phase ------------------------------------------------------------------------------

    //! supportsFormatCombination: whether tensor `pos` (q, k, v, r_idx, o) may have its type and format, given
    //! q's (IPluginV3 and IPluginV2DynamicExt pass their own descriptor arrays).
    static bool supportsFormat(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept;
    static bool supportsFormat(
        int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept;
    //! The type of o for the input types; empty on success, else what is wrong.
    static std::string outputType(nvinfer1::DataType const* inputTypes, int32_t nbInputs, int32_t nbOutputs,
        nvinfer1::DataType& output);
    //! o = [N, Hq, Wq, Cv] as expressions of the inputs, after the build-time checks of the known dims.
    std::string outputShape(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs& output) const;
    //! configurePlugin: the types and each bound of the optimization profile (kMIN/kOPT/kMAX; TensorRT 8 has
    //! no kOPT) against the contract and, when a CUDA context is current, against the compiled kernels.
    std::string configure(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs);

    // ---- run time ---------------------------------------------------------------------------------

    //! Load (or share) the kernel module of the CUDA context current on this thread. Empty on success.
    std::string loadKernelModule() noexcept;
    //! In enqueue: load the module if there is none yet (a cold path: logs a warning; errors are reported).
    bool ensureKernelModule() noexcept;
    //! Whether the cached launch parameters were made for exactly these tensors (no allocation).
    bool shapesMatch(nvinfer1::PluginTensorDesc const* in, nvinfer1::PluginTensorDesc const* out) const noexcept;
    //! Validate concrete shapes and cache the launch parameters; loads the kernel module if there is none.
    std::string setShapes(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs);
    bool shapesValid() const noexcept
    {
        return mParamsValid;
    }
    //! One eb_bra_launch with the cached parameters on `stream` (0 on success; errors are reported).
    int32_t launch(void const* const* inputs, void* const* outputs, cudaStream_t stream) noexcept;

    // ---- state ------------------------------------------------------------------------------------

    //! "n_win=7, num_heads=2, topk=4, scale=0.125": the metadata string and timing-cache ID (stable pointer).
    char const* metadata() noexcept;
    //! The plugin fields that hold the state (IPluginV3::getFieldsToSerialize; stable pointer).
    nvinfer1::PluginFieldCollection const* serialFields();
    //! The state as bytes (IPluginV2::serialize): a format word, then each plugin field in the contract's order.
    static size_t serializedSize() noexcept;
    void serialize(void* buffer) const noexcept;
    //! The attributes of bytes written by serialize(); empty on success, else what is wrong.
    static std::string deserialize(void const* data, size_t length, BraAttributes& attrs);

    std::string const& layerName() const noexcept
    {
        return mLayerName;
    }

private:
    std::string describe() const;

    std::string mLayerName;
    BraAttributes mAttrs;
    //! Compute capability (major*10+minor) of the device the kernels were loaded for; -1 if unknown.
    int32_t mSm{-1};
    //! Launch parameters of the current shapes, valid if mParamsValid.
    eb_bra_params_t mParams{};
    bool mParamsValid{false};
    BraModulePtr mModule;
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};

    // Storage behind the pointers that TensorRT reads after the calls return.
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialFc{};
    std::string mMetadata;
};

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_BRA_PLUGIN_CORE_H
