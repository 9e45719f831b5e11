#include "bra_kernel_module.h"

#include <map>
#include <mutex>

namespace edge_biformer
{
namespace plugin
{

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

} // namespace plugin
} // namespace edge_biformer
