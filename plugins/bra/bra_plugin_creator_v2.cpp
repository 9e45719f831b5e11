#include "bra_plugin_creator_v2.h"

#include "bra_plugin_core.h"
#include "bra_plugin_v2.h"
#include "bra_validation.h"
#include "plugin_logging.h"

#include <string>

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace edge_biformer
{
namespace plugin
{

using nvinfer1::IPluginV2;
using nvinfer1::PluginFieldCollection;

IPluginV2* BiLevelRoutingAttentionCreatorV2::createPlugin(char const* name, PluginFieldCollection const* fc) noexcept
{
    return nullOnThrow(
        [&]() -> IPluginV2* {
            BraAttributes attrs;
            return BraPluginCore::creationAttributes(name, fc, "build", attrs) ? make(name, attrs) : nullptr;
        },
        [](char const* what) { logMessage(Severity::kERROR, std::string{"createPlugin failed: "} + what); });
}

IPluginV2* BiLevelRoutingAttentionCreatorV2::deserializePlugin(
    char const* name, void const* serialData, size_t serialLength) noexcept
{
    return nullOnThrow(
        [&]() -> IPluginV2* {
            BraAttributes attrs;
            std::string const err = BraPluginCore::deserialize(serialData, serialLength, attrs);
            if (!err.empty())
            {
                logMessage(Severity::kERROR,
                    "cannot deserialize layer '" + std::string{name != nullptr ? name : ""} + "': " + err);
                return nullptr;
            }
            return make(name, attrs);
        },
        [](char const* what) { logMessage(Severity::kERROR, std::string{"deserializePlugin failed: "} + what); });
}

BiLevelRoutingAttentionPluginV2* BiLevelRoutingAttentionCreatorV2::make(
    char const* name, BraAttributes const& attrs) const
{
    auto* plugin = new BiLevelRoutingAttentionPluginV2(name != nullptr ? name : "", attrs);
    plugin->setPluginNamespace(mNamespace.get());
    return plugin;
}

void BiLevelRoutingAttentionCreatorV2::setPluginNamespace(char const* pluginNamespace) noexcept
{
    mNamespace.set(pluginNamespace);
}

char const* BiLevelRoutingAttentionCreatorV2::getPluginNamespace() const noexcept
{
    return mNamespace.get();
}

BiLevelRoutingAttentionCreatorV2& braCreatorV2() noexcept
{
    // Constructed on first use; the library is linked with -z nodelete, so the registry never outlives it.
    static BiLevelRoutingAttentionCreatorV2 creator;
    return creator;
}

} // namespace plugin
} // namespace edge_biformer
