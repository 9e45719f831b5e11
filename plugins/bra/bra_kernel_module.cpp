#include "bra_kernel_module.h"

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

// cuCtxGetId exists in CUDA >= 12.0 drivers only (JetPack 5 has CUDA 11.4): referenced weakly, so the
// library loads on any driver and falls back to the context handle where the symbol is missing.
#if CUDA_VERSION < 12000
extern "C" CUresult CUDAAPI cuCtxGetId(CUcontext ctx, unsigned long long* ctxId);
#endif
#pragma weak cuCtxGetId

namespace edge_biformer
{
namespace plugin
{
namespace
{

//! (true, context ID) where the driver has IDs, else (false, handle).
using ContextKey = std::pair<bool, std::uintptr_t>;

ContextKey contextKey(CUcontext ctx) noexcept
{
    unsigned long long id{0};
    if (&cuCtxGetId != nullptr && cuCtxGetId(ctx, &id) == CUDA_SUCCESS)
    {
        return {true, static_cast<std::uintptr_t>(id)};
    }
    return {false, reinterpret_cast<std::uintptr_t>(ctx)};
}

//! Unload `module` with its context `ctx` current. If `ctx` cannot be made current, or (where the driver has
//! context IDs) the handle now names a newer context, the module's context has been destroyed, and its
//! modules with it: nothing is unloaded then (a module handle of a destroyed context may name another
//! context's module), only the launcher's host record of it is left behind.
void unloadInContext(CUcontext ctx, ContextKey const& key, eb_bra_module_t module) noexcept
{
    CUcontext current{nullptr};
    bool const switched = cuCtxGetCurrent(&current) != CUDA_SUCCESS || current != ctx;
    if (switched && cuCtxPushCurrent(ctx) != CUDA_SUCCESS)
    {
        return;
    }
    if (!key.first || contextKey(ctx) == key)
    {
        eb_bra_module_unload(module);
    }
    if (switched)
    {
        CUcontext popped{nullptr};
        cuCtxPopCurrent(&popped);
    }
}

} // namespace

BraModulePtr acquireKernelModule(CUcontext ctx, eb_bra_status_t* status)
{
    static std::mutex mutex;
    static std::map<ContextKey, std::weak_ptr<struct eb_bra_module>> modules;
    std::lock_guard<std::mutex> const lock(mutex);
    ContextKey const key = contextKey(ctx);
    for (auto it = modules.begin(); it != modules.end();)
    {
        if (BraModulePtr shared = it->second.lock())
        {
            if (it->first == key)
            {
                *status = EB_BRA_SUCCESS;
                return shared;
            }
            ++it;
        }
        else
        {
            it = modules.erase(it); // every holder released (context IDs never repeat: drop the entry)
        }
    }
    eb_bra_module_t raw{nullptr};
    *status = eb_bra_module_load(&raw);
    if (*status != EB_BRA_SUCCESS)
    {
        eb_bra_module_unload(raw); // safe on NULL; nothing of a failed load stays loaded
        return nullptr;
    }
    BraModulePtr shared(raw, [ctx, key](eb_bra_module_t module) { unloadInContext(ctx, key, module); });
    modules[key] = shared;
    return shared;
}

} // namespace plugin
} // namespace edge_biformer
