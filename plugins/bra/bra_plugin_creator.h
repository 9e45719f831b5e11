/*
 * The IPluginCreatorV3One of BiLevelRoutingAttention: lists the contract's plugin fields and creates
 * plugins from fields (ONNX parser, application, serialized plan) in both TensorRT phases.
 */
#ifndef EDGE_BIFORMER_BRA_PLUGIN_CREATOR_H
#define EDGE_BIFORMER_BRA_PLUGIN_CREATOR_H

#include <NvInferRuntime.h>

#include <vector>

namespace edge_biformer
{
namespace plugin
{

class BiLevelRoutingAttentionCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    BiLevelRoutingAttentionCreator();
    ~BiLevelRoutingAttentionCreator() override = default;

    BiLevelRoutingAttentionCreator(BiLevelRoutingAttentionCreator const&) = delete;
    BiLevelRoutingAttentionCreator& operator=(BiLevelRoutingAttentionCreator const&) = delete;
    BiLevelRoutingAttentionCreator(BiLevelRoutingAttentionCreator&&) = delete;
    BiLevelRoutingAttentionCreator& operator=(BiLevelRoutingAttentionCreator&&) = delete;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFc{};
};

//! The creator of this library instance (one per loaded copy of the library).
BiLevelRoutingAttentionCreator& braCreator() noexcept;

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_BRA_PLUGIN_CREATOR_H
