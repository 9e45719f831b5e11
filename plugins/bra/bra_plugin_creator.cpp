#include "bra_plugin_creator.h"

#include "bra_plugin.h"
#include "bra_validation.h"
#include "plugin_logging.h"

#include <exception>
#include <string>

namespace edge_biformer
{
namespace plugin
{

using nvinfer1::IPluginV3;
using nvinfer1::PluginFieldCollection;
using nvinfer1::TensorRTPhase;

BiLevelRoutingAttentionCreator::BiLevelRoutingAttentionCreator()
{
    for (BraField const& field : kBRA_FIELDS)
    {
        mFieldNames.emplace_back(field.name, nullptr, field.type, 1);
    }
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
