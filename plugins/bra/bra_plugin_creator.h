/*
 * The IPluginCreatorV3One of BiLevelRoutingAttention (TensorRT >= 10): lists the contract's plugin fields and
 * creates plugins from fields (ONNX parser, application, serialized plan) in both TensorRT phases. The
 * creator of TensorRT 8 is bra_plugin_creator_v2.h; both take fields and attributes from BraPluginCore.
 */
#ifndef EDGE_BIFORMER_BRA_PLUGIN_CREATOR_H
#define EDGE_BIFORMER_BRA_PLUGIN_CREATOR_H

#include "bra_plugin_core.h"
#include "bra_validation.h"

#include <NvInferRuntime.h>

namespace edge_biformer
{
namespace plugin
{

class BiLevelRoutingAttentionCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    BiLevelRoutingAttentionCreator() = default;
    ~BiLevelRoutingAttentionCreator() override = default;

    BiLevelRoutingAttentionCreator(BiLevelRoutingAttentionCreator const&) = delete;
    BiLevelRoutingAttentionCreator& operator=(BiLevelRoutingAttentionCreator const&) = delete;
    BiLevelRoutingAttentionCreator(BiLevelRoutingAttentionCreator&&) = delete;
    BiLevelRoutingAttentionCreator& operator=(BiLevelRoutingAttentionCreator&&) = delete;

    char const* getPluginName() const noexcept override { return kBRA_PLUGIN_NAME; }
    char const* getPluginVersion() const noexcept override { return kBRA_PLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return kBRA_PLUGIN_NAMESPACE; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return BraPluginCore::fieldNames();
    }
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

//! The creator of this library instance (one per loaded copy of the library).
BiLevelRoutingAttentionCreator& braCreator() noexcept;

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_BRA_PLUGIN_CREATOR_H
