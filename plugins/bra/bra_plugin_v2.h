/*
 * BiLevelRoutingAttention for TensorRT 8.5/8.6 (JetPack 5.1, JetPack 6.0): the IPluginV2DynamicExt plugin.
 * The same op, fields, checks, kernels and launch as the IPluginV3 of TensorRT >= 10 (bra_plugin.h): both
 * are adapters of BraPluginCore (bra_plugin_core.h). Its creator is bra_plugin_creator_v2.h.
 *
 * Object lifecycle, as TensorRT 8 drives it:
 *   build phase   creator.createPlugin(name, fields) -> clone() -> getOutputDataType / getOutputDimensions /
 *                 supportsFormatCombination / configurePlugin (validation at network build time; an error is
 *                 logged and makes initialize() fail) -> initialize() -> enqueue() while timing ->
 *                 getSerializationSize() / serialize() when the plan is written.
 *   runtime phase creator.deserializePlugin(name, bytes) -> initialize(); per IExecutionContext clone() ->
 *                 attachToContext() (loads the kernel module into the CUDA context current there) ->
 *                 configurePlugin() (the profile) -> enqueue(): validates the shapes when they differ from the
 *                 last call's (TensorRT 8 has no onShapeChange), then one eb_bra_launch on the stream; the
 *                 kernels are loaded here only if no earlier call could -> detachFromContext() -> destroy().
 * TensorRT 8 gives plugins no error recorder: every error goes to the logger (plugin_logging.h).
 */
#ifndef EDGE_BIFORMER_BRA_PLUGIN_V2_H
#define EDGE_BIFORMER_BRA_PLUGIN_V2_H

#include "bra_plugin_core.h"
#include "bra_validation.h"

#include <NvInferRuntime.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace edge_biformer
{
namespace plugin
{

class BiLevelRoutingAttentionPluginV2 final : public nvinfer1::IPluginV2DynamicExt
{
public:
    BiLevelRoutingAttentionPluginV2(std::string layerName, BraAttributes const& attrs);
    ~BiLevelRoutingAttentionPluginV2() override = default;

    BiLevelRoutingAttentionPluginV2(BiLevelRoutingAttentionPluginV2 const&) = delete;
    BiLevelRoutingAttentionPluginV2& operator=(BiLevelRoutingAttentionPluginV2 const&) = delete;
    BiLevelRoutingAttentionPluginV2(BiLevelRoutingAttentionPluginV2&&) = delete;
    BiLevelRoutingAttentionPluginV2& operator=(BiLevelRoutingAttentionPluginV2&&) = delete;

    // IPluginV2: the contract's identity, the state (20 bytes: BraPluginCore::serialize)
    char const* getPluginType() const noexcept override { return kBRA_PLUGIN_NAME; }
    char const* getPluginVersion() const noexcept override { return kBRA_PLUGIN_VERSION; }
    int32_t getNbOutputs() const noexcept override { return kBRA_NB_OUTPUTS; }
    int32_t initialize() noexcept override;
    void terminate() noexcept override {}
    size_t getSerializationSize() const noexcept override { return BraPluginCore::serializedSize(); }
    void serialize(void* buffer) const noexcept override;
    void destroy() noexcept override;
    void setPluginNamespace(char const* pluginNamespace) noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV2Ext
    nvinfer1::DataType getOutputDataType(
        int32_t index, nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    void attachToContext(
        cudnnContext* cudnn, cublasContext* cublas, nvinfer1::IGpuAllocator* allocator) noexcept override;
    //! The module stays with the plugin, which TensorRT destroys after this.
    void detachFromContext() noexcept override {}

    // IPluginV2DynamicExt
    nvinfer1::IPluginV2DynamicExt* clone() const noexcept override;
    nvinfer1::DimsExprs getOutputDimensions(int32_t outputIndex, nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(
        int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override;
    void configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    //! No workspace: the kernels need none.
    size_t getWorkspaceSize(nvinfer1::PluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
        nvinfer1::PluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        return 0;
    }
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    //! Attributes (for tests and diagnostics).
    BraAttributes const& attributes() const noexcept
    {
        return mCore.attributes();
    }
    //! Whether a kernel module is loaded.
    bool hasKernelModule() const noexcept
    {
        return mCore.hasKernelModule();
    }
    //! The metadata string of the IPluginV3 ("n_win=7, num_heads=2, ..."), for tests and logs.
    char const* metadata() noexcept
    {
        return mCore.metadata();
    }

private:
    explicit BiLevelRoutingAttentionPluginV2(BiLevelRoutingAttentionPluginV2 const* other);

    BraPluginCore mCore;
    PluginNamespace mNamespace;
    //! The build-time error of getOutputDimensions/configurePlugin (they cannot fail): initialize() fails with it.
    std::string mConfigError;
};

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_BRA_PLUGIN_V2_H
