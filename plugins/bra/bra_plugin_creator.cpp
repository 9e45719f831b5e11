#include "bra_plugin_creator.h"

#include "bra_plugin.h"
#include "bra_plugin_core.h"
#include "bra_validation.h"
#include "plugin_logging.h"

#include <string>

namespace edge_biformer
{
namespace plugin
{

using nvinfer1::IPluginV3;
using nvinfer1::PluginFieldCollection;
using nvinfer1::TensorRTPhase;

IPluginV3* BiLevelRoutingAttentionCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    return nullOnThrow(
        [&]() -> IPluginV3* {
            BraAttributes attrs;
            char const* phaseName = phase == TensorRTPhase::kBUILD ? "build" : "runtime";
            if (!BraPluginCore::creationAttributes(name, fc, phaseName, attrs))
            {
                return nullptr;
            }
            return new BiLevelRoutingAttentionPlugin(name != nullptr ? name : "", attrs);
        },
        [](char const* what) { logMessage(Severity::kERROR, std::string{"createPlugin failed: "} + what); });
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
