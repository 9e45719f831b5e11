/*
 * The IPluginCreator of BiLevelRoutingAttention for TensorRT 8.5/8.6: the contract's plugin fields, plugins
 * from fields (ONNX parser, application) and from the bytes of a serialized plan. The creator of
 * TensorRT >= 10 is bra_plugin_creator.h; both take fields and attributes from BraPluginCore.
 */
#ifndef EDGE_BIFORMER_BRA_PLUGIN_CREATOR_V2_H
#define EDGE_BIFORMER_BRA_PLUGIN_CREATOR_V2_H

#include "bra_plugin_core.h"
#include "bra_plugin_v2.h"
#include "bra_validation.h"

#include <NvInferRuntime.h>

#include <cstddef>

// IPluginV2 (the return type of IPluginCreator) is marked deprecated in the TensorRT 8 headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace edge_biformer
{
namespace plugin
{

class BiLevelRoutingAttentionCreatorV2 final : public nvinfer1::IPluginCreator
{
public:
    BiLevelRoutingAttentionCreatorV2() = default;
    ~BiLevelRoutingAttentionCreatorV2() override = default;

    BiLevelRoutingAttentionCreatorV2(BiLevelRoutingAttentionCreatorV2 const&) = delete;
    BiLevelRoutingAttentionCreatorV2& operator=(BiLevelRoutingAttentionCreatorV2 const&) = delete;
    BiLevelRoutingAttentionCreatorV2(BiLevelRoutingAttentionCreatorV2&&) = delete;
    BiLevelRoutingAttentionCreatorV2& operator=(BiLevelRoutingAttentionCreatorV2&&) = delete;

    char const* getPluginName() const noexcept override { return kBRA_PLUGIN_NAME; }
    char const* getPluginVersion() const noexcept override { return kBRA_PLUGIN_VERSION; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return BraPluginCore::fieldNames();
    }
    nvinfer1::IPluginV2* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc) noexcept override;
    nvinfer1::IPluginV2* deserializePlugin(
        char const* name, void const* serialData, size_t serialLength) noexcept override;
    void setPluginNamespace(char const* pluginNamespace) noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    BiLevelRoutingAttentionPluginV2* make(char const* name, BraAttributes const& attrs) const;

    PluginNamespace mNamespace;
};

//! The creator of this library instance (one per loaded copy of the library).
BiLevelRoutingAttentionCreatorV2& braCreatorV2() noexcept;

} // namespace plugin
} // namespace edge_biformer

#pragma GCC diagnostic pop

#endif // EDGE_BIFORMER_BRA_PLUGIN_CREATOR_V2_H
