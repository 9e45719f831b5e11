/*
 * BiLevelRoutingAttention: the TensorRT IPluginV3 plugin (IPluginV3OneCore/Build/Runtime) of TensorRT >= 10.
 * Its creator is bra_plugin_creator.h; what it computes and checks is BraPluginCore (bra_plugin_core.h),
 * which the IPluginV2DynamicExt of TensorRT 8 (bra_plugin_v2.h) shares; the op contract is
 * plugins/bra/README.md. The kernels are reached only through the C launch interface bra_launch.h.
 *
 * Object lifecycle, as TensorRT drives it:
 *   build phase   creator.createPlugin(name, fields, kBUILD) -> clone() -> getOutputDataTypes /
 *                 getOutputShapes / supportsFormatCombination / configurePlugin (validation at
 *                 network build time) -> attachToContext() for the clones that TensorRT times
 *                 -> getFieldsToSerialize() when the plan is written.
 *   runtime phase creator.createPlugin(name, serialized fields, kRUNTIME) -> attachToContext()
 *                 once per IExecutionContext (loads the kernel module into the CUDA context that
 *                 is current there) -> onShapeChange() (validates, caches the launch params) ->
 *                 enqueue() (one eb_bra_launch: no allocation, no synchronisation; loads the kernels
 *                 first only if no earlier call could, e.g. on a clone TensorRT never attached).
 */
#ifndef EDGE_BIFORMER_BRA_PLUGIN_H
#define EDGE_BIFORMER_BRA_PLUGIN_H

#include "bra_plugin_core.h"
#include "bra_validation.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <memory>
#include <string>

namespace edge_biformer
{
namespace plugin
{

class BiLevelRoutingAttentionPlugin final : public nvinfer1::IPluginV3,
                                            public nvinfer1::IPluginV3OneCore,
                                            public nvinfer1::IPluginV3OneBuild,
                                            public nvinfer1::IPluginV3OneRuntime
{
public:
    BiLevelRoutingAttentionPlugin(std::string layerName, BraAttributes const& attrs);
    ~BiLevelRoutingAttentionPlugin() override = default;

    BiLevelRoutingAttentionPlugin(BiLevelRoutingAttentionPlugin const&) = delete;
    BiLevelRoutingAttentionPlugin& operator=(BiLevelRoutingAttentionPlugin const&) = delete;
    BiLevelRoutingAttentionPlugin(BiLevelRoutingAttentionPlugin&&) = delete;
    BiLevelRoutingAttentionPlugin& operator=(BiLevelRoutingAttentionPlugin&&) = delete;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore: the contract's identity
    char const* getPluginName() const noexcept override { return kBRA_PLUGIN_NAME; }
    char const* getPluginVersion() const noexcept override { return kBRA_PLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return kBRA_PLUGIN_NAMESPACE; }

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override { return kBRA_NB_OUTPUTS; }
    //! No workspace: the kernels need none.
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
        nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        return 0;
    }
    char const* getTimingCacheID() noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    //! Attributes (for tests and diagnostics).
    BraAttributes const& attributes() const noexcept
    {
        return mCore.attributes();
    }
    //! Whether a kernel module is loaded (attached to an execution context).
    bool hasKernelModule() const noexcept
    {
        return mCore.hasKernelModule();
    }

private:
    explicit BiLevelRoutingAttentionPlugin(BraPluginCore const& core);
    //! attachToContext without its error handling.
    nvinfer1::IPluginV3* attach(nvinfer1::IPluginResourceContext* context);

    BraPluginCore mCore;
};

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_BRA_PLUGIN_H
