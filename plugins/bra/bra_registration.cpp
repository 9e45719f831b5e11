/*
 * How the creator reaches TensorRT's plugin registry (see plugins/bra/README.md, Registration).
 *
 * 1. Load time (what REGISTER_TENSORRT_PLUGIN does): ctypes.CDLL, `polygraphy --plugins`,
 *    `trtexec --staticPlugins`, DeepStream's custom-lib-path and a plain dlopen() only load the
 *    library, so it registers its creator while it is being loaded, into the registry of the TensorRT
 *    runtime of the process, found at run time in this order:
 *      a. libnvinfer.so.<major of the headers> if it is already loaded (RTLD_NOLOAD: Python's tensorrt
 *         module loads it with RTLD_LOCAL, so it is not in the global scope);
 *      b. a getPluginRegistry() in the global scope (an application linked against a lean runtime);
 *      c. if the lean or dispatch runtime is loaded, nothing: they load plugins with loadLibrary (2.);
 *      d. otherwise libnvinfer.so.<major> from the library search path, as a DT_NEEDED entry would do
 *         (polygraphy loads plugin libraries before it imports TensorRT).
 *    The library does not link libnvinfer (plugin libraries serialized into version-compatible plans
 *    or loaded by the lean runtime must not), so the literal REGISTER_TENSORRT_PLUGIN macro, which
 *    imports getPluginRegistry at link time, is replaced by this registrar.
 * 2. IPluginRegistry::loadLibrary (`trtexec --dynamicPlugins`, registry.load_library, plugin
 *    libraries serialized into version-compatible plans): TensorRT calls the exported
 *    setLoggerFinder() and getCreators() (TensorRT >= 10; getPluginCreators() in TensorRT 8.6, whose
 *    creators are IPluginCreator) and registers what it returns. TensorRT 8.5 has no loadLibrary.
 *
 * The creator is the IPluginCreatorV3One of bra_plugin_creator.h for TensorRT >= 10 headers, the
 * IPluginCreator of bra_plugin_creator_v2.h for TensorRT 8 headers; everything else here is the same.
 *
 * The major guard: the plugin ABI differs between TensorRT majors (ILogger/ILoggerFinder gained the
 * IVersionedInterface base in 11, the plugin interfaces changed from 8 to 10), so a library registers only
 * into a runtime of the major of its headers: the load-time registrar asks the runtime it found, and each
 * entry point asks the runtime that calls it (the shared object holding its return address). A caller of
 * another major gets no creators and no logger finder is kept; edge_biformer_plugin_status() says why.
 *
 * The guard: loadLibrary dlopen()s the library first, so step 1 has already registered the creator
 * when getCreators() runs. getCreators() then hands out an empty list if the caller is the very
 * TensorRT library that step 1 registered into (registering again would make loadLibrary fail with
 * "already registered"); any other caller (the lean runtime of a version-compatible plan, another
 * TensorRT) gets the creator. Each TensorRT instance in the process therefore holds the creator once.
 */
#include "bra_validation.h"
#include "plugin_logging.h"
#include "tensorrt_compat.h"
#include "tensorrt_runtime.h"

#if EB_TRT_HAS_PLUGIN_V3
#include "bra_plugin_creator.h"
#else
#include "bra_plugin_creator_v2.h"
#endif

#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

#define EB_PLUGIN_EXPORT __attribute__((visibility("default")))
#define EB_STRINGIFY_IMPL(x) #x
#define EB_STRINGIFY(x) EB_STRINGIFY_IMPL(x)

namespace edge_biformer
{
namespace plugin
{

char const kLOG_PREFIX[] = EB_BRA_PLUGIN_NAMESPACE " " EB_BRA_PLUGIN_NAME ": ";

namespace
{

using GetRegistryFn = nvinfer1::IPluginRegistry* (*) () noexcept;

// The creator of the headers' generation, and the registry lookup of that generation's creators.
#if EB_TRT_HAS_PLUGIN_V3
using Creator = nvinfer1::IPluginCreatorInterface;
#define EB_BRA_CREATOR braCreator
#define EB_REGISTRY_LOOKUP getCreator
#else
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
using Creator = nvinfer1::IPluginCreator;
#define EB_BRA_CREATOR braCreatorV2
#define EB_REGISTRY_LOOKUP getPluginCreator
#endif

Creator& theCreator() noexcept
{
    return EB_BRA_CREATOR();
}

Creator* findRegistered(nvinfer1::IPluginRegistry& registry) noexcept
{
    return registry.EB_REGISTRY_LOOKUP(kBRA_PLUGIN_NAME, kBRA_PLUGIN_VERSION, kBRA_PLUGIN_NAMESPACE);
}

//! The TensorRT runtime of the headers this library was compiled against, e.g. "libnvinfer.so.10".
constexpr char const* kNVINFER_SONAME = "libnvinfer.so." EB_STRINGIFY(NV_TENSORRT_MAJOR);
//! Set to 0 to leave registration to IPluginRegistry::loadLibrary alone (no load-time registration).
constexpr char const* kSTATIC_REGISTRATION_ENV = "EDGE_BIFORMER_PLUGIN_STATIC_REGISTRATION";
constexpr char const* kNVINFER_LEAN_SONAME = "libnvinfer_lean.so." EB_STRINGIFY(NV_TENSORRT_MAJOR);
constexpr char const* kNVINFER_DISPATCH_SONAME = "libnvinfer_dispatch.so." EB_STRINGIFY(NV_TENSORRT_MAJOR);
constexpr char const* kBUILT_AGAINST = "TensorRT " EB_STRINGIFY(NV_TENSORRT_MAJOR) "." EB_STRINGIFY(
    NV_TENSORRT_MINOR) "." EB_STRINGIFY(NV_TENSORRT_PATCH);

template <typename Fn>
Fn symbolAs(void* handle, char const* name) noexcept
{
    // POSIX guarantees that a dlsym() result for a function can be converted to a function pointer.
    return reinterpret_cast<Fn>(dlsym(handle, name));
}

//! Why the library does not serve TensorRT `major` (found at `where`), with the fix.
std::string majorMismatch(int32_t major, std::string const& where)
{
    return "that TensorRT is version " + std::to_string(major) + " (" + where + ") but this library was built "
        "against " + kBUILT_AGAINST + " headers, and the plugin ABI differs between majors; rebuild it with "
        "TENSORRT_ROOT pointing at TensorRT " + std::to_string(major);
}

class LoadTimeRegistrar
{
public:
    LoadTimeRegistrar() noexcept
    {
        try
        {
            registerIntoResidentTensorRT();
        }
        catch (...)
        {
            mRegistered = false;
        }
    }

    LoadTimeRegistrar(LoadTimeRegistrar const&) = delete;
    LoadTimeRegistrar& operator=(LoadTimeRegistrar const&) = delete;
    LoadTimeRegistrar(LoadTimeRegistrar&&) = delete;
    LoadTimeRegistrar& operator=(LoadTimeRegistrar&&) = delete;
    // No deregistration in the destructor: at process exit the registry may already be gone, and the
    // library is never unloaded before that (-z nodelete), so the registered creator never dangles.
    ~LoadTimeRegistrar() = default;

    //! Whether the creator was registered at load time into the TensorRT library mapped at `dsoBase`.
    bool registeredInto(void const* dsoBase) const noexcept
    {
        return mRegistered && dsoBase != nullptr && dsoBase == mTensorRTBase;
    }

    char const* status() const noexcept
    {
        return mStatus.c_str();
    }

private:
    void registerIntoResidentTensorRT()
    {
        mStatus = std::string{kBRA_PLUGIN_NAME} + " version " + kBRA_PLUGIN_VERSION + " (namespace "
            + kBRA_PLUGIN_NAMESPACE + "), built against " + kBUILT_AGAINST + " headers: ";
        char const* optOut = std::getenv(kSTATIC_REGISTRATION_ENV);
        if (optOut != nullptr && std::string{optOut} == "0")
        {
            mStatus += std::string{"not registered at load time ("} + kSTATIC_REGISTRATION_ENV
                + "=0); IPluginRegistry::loadLibrary gets the creator from getCreators()";
            return;
        }
        // Python's tensorrt module loads libnvinfer with RTLD_LOCAL, so look for it by soname first;
        // RTLD_NOLOAD only finds a library that is already loaded, it never loads one.
        void* tensorrt = dlopen(kNVINFER_SONAME, RTLD_LAZY | RTLD_NOLOAD);
        auto getRegistry = tensorrt != nullptr ? symbolAs<GetRegistryFn>(tensorrt, "getPluginRegistry") : nullptr;
        if (getRegistry == nullptr)
        {
            // Another TensorRT library in the global scope (a lean runtime linked by the application).
            getRegistry = symbolAs<GetRegistryFn>(RTLD_DEFAULT, "getPluginRegistry");
        }
        if (getRegistry == nullptr)
        {
            if (void* lean = dlopen(kNVINFER_LEAN_SONAME, RTLD_LAZY | RTLD_NOLOAD))
            {
                dlclose(lean);
                mStatus += std::string{"not registered at load time, because the process runs the lean TensorRT "
                                       "runtime ("}
                    + kNVINFER_LEAN_SONAME + "), which loads plugin libraries with IPluginRegistry::loadLibrary";
                return;
            }
            if (void* dispatch = dlopen(kNVINFER_DISPATCH_SONAME, RTLD_LAZY | RTLD_NOLOAD))
            {
                dlclose(dispatch);
                mStatus += std::string{"not registered at load time, because the process runs the dispatch "
                                       "TensorRT runtime ("}
                    + kNVINFER_DISPATCH_SONAME + "), which loads plugin libraries with IPluginRegistry::loadLibrary";
                return;
            }
            // Nothing of TensorRT is loaded yet (polygraphy --plugins loads plugin libraries before it imports
            // TensorRT): load the runtime the way a DT_NEEDED entry would, from the library search path.
            tensorrt = dlopen(kNVINFER_SONAME, RTLD_LAZY | RTLD_LOCAL);
            getRegistry = tensorrt != nullptr ? symbolAs<GetRegistryFn>(tensorrt, "getPluginRegistry") : nullptr;
        }
        Dl_info info{};
        if (getRegistry == nullptr || dladdr(reinterpret_cast<void*>(getRegistry), &info) == 0
            || info.dli_fname == nullptr)
        {
            mStatus += std::string{"not registered at load time, because no TensorRT runtime is loaded in this "
                                   "process and "}
                + kNVINFER_SONAME
                + " is not on the library search path; load TensorRT first (e.g. import tensorrt), add its lib "
                  "directory to LD_LIBRARY_PATH, or load the library with IPluginRegistry::loadLibrary, which uses "
                  "getCreators()";
            return;
        }
        if (tensorrt == nullptr)
        {
            // Pin the library that owns the registry for as long as this library lives.
            tensorrt = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
        }
        void* const lookup = tensorrt != nullptr ? tensorrt : RTLD_DEFAULT;
        std::string const where{info.dli_fname};
        int32_t const loaded = tensorrtMajorOf(lookup);
        if (loaded >= 0 && loaded != NV_TENSORRT_MAJOR)
        {
            mStatus += "not registered: " + majorMismatch(loaded, where);
            std::fprintf(stderr, "[ERROR] " EB_BRA_PLUGIN_NAMESPACE ": %s\n", mStatus.c_str());
            return;
        }
        if (auto getLogger = symbolAs<GetLoggerFn>(lookup, "getLogger"))
        {
            setProcessLoggerGetter(getLogger);
        }
        nvinfer1::IPluginRegistry* registry = getRegistry();
        if (registry == nullptr)
        {
            mStatus += "not registered: getPluginRegistry() of " + where + " returned null";
            return;
        }
        if (findRegistered(*registry) != nullptr)
        {
            mStatus += "not registered at load time, because another copy of the library already registered "
                       "the creator into "
                + where;
            logMessage(Severity::kVERBOSE, mStatus);
            return;
        }
        if (!registry->registerCreator(theCreator(), kBRA_PLUGIN_NAMESPACE))
        {
            mStatus += "the plugin registry of " + where + " refused the creator (see the TensorRT log)";
            logMessage(Severity::kWARNING, mStatus);
            return;
        }
        mRegistered = true;
        mTensorRTBase = info.dli_fbase;
        mStatus += "registered into the plugin registry of " + where + " at load time";
        logMessage(Severity::kVERBOSE, mStatus);
    }

    bool mRegistered{false};
    void const* mTensorRTBase{nullptr};
    std::string mStatus;
};

LoadTimeRegistrar gLoadTimeRegistrar;

//! The status once an entry point refused a caller (set once, never changed: its pointer stays valid).
std::string gRefusedStatus;
std::once_flag gRefusedOnce;
std::atomic<bool> gRefused{false};

//! Whether the TensorRT that called entry point `entry` (from `returnAddress`) has the major of the headers.
//! A caller whose major cannot be told (no version export, no versioned name) is accepted.
bool callerAccepted(void const* returnAddress, char const* entry) noexcept
{
    LoadedLibrary const caller = libraryAt(returnAddress);
    if (caller.tensorrtMajor < 0 || caller.tensorrtMajor == NV_TENSORRT_MAJOR)
    {
        return true;
    }
    try
    {
        std::string const why = std::string{entry} + " refused: " + majorMismatch(caller.tensorrtMajor, caller.path);
        std::call_once(gRefusedOnce, [&why] {
            gRefusedStatus = std::string{gLoadTimeRegistrar.status()} + "; " + why;
            gRefused.store(true, std::memory_order_release);
        });
        std::fprintf(stderr, "[ERROR] " EB_BRA_PLUGIN_NAMESPACE ": %s\n", why.c_str());
    }
    catch (...)
    {
        std::fprintf(stderr, "[ERROR] " EB_BRA_PLUGIN_NAMESPACE ": %s refused a TensorRT of another major\n", entry);
    }
    return false;
}

//! The creators for the registry that calls loadLibrary (none if the load-time registrar already put the
//! creator there, or if the caller is a TensorRT of another major).
Creator* const* creatorsFor(void const* returnAddress, char const* entry, int32_t& nbCreators) noexcept
{
    static Creator* const kCREATORS[] = {&theCreator()};
    nbCreators = 0;
    if (!callerAccepted(returnAddress, entry))
    {
        return kCREATORS;
    }
    LoadedLibrary const caller = libraryAt(returnAddress);
    if (gLoadTimeRegistrar.registeredInto(caller.base))
    {
        logMessage(Severity::kVERBOSE,
            std::string{entry}
                + ": the creator was registered into this TensorRT when the library was loaded; returning no "
                  "creators so that it is not registered twice");
        return kCREATORS;
    }
    nbCreators = 1;
    return kCREATORS;
}

} // namespace
} // namespace plugin
} // namespace edge_biformer

#define EB_CALLER() __builtin_extract_return_addr(__builtin_return_address(0))

#if EB_TRT_HAS_PLUGIN_V3
//! Entry point of IPluginRegistry::loadLibrary (TensorRT >= 10): the creators for the calling registry.
extern "C" EB_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return edge_biformer::plugin::creatorsFor(EB_CALLER(), "getCreators", nbCreators);
}
#else
//! Entry point of IPluginRegistry::loadLibrary (TensorRT 8.6): the IPluginCreators for the calling registry.
extern "C" EB_PLUGIN_EXPORT nvinfer1::IPluginCreator* const* getPluginCreators(int32_t& nbCreators)
{
    return edge_biformer::plugin::creatorsFor(EB_CALLER(), "getPluginCreators", nbCreators);
}
#endif

#if EB_TRT_HAS_LOAD_LIBRARY
//! Entry point of IPluginRegistry::loadLibrary: how the library finds the logger of the calling engine/context.
//! Kept only from a runtime of the headers' major (another major's ILoggerFinder has another layout).
extern "C" EB_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    if (edge_biformer::plugin::callerAccepted(EB_CALLER(), "setLoggerFinder"))
    {
        edge_biformer::plugin::setLoggerFinder(finder);
    }
}
#endif

//! One line saying what the library is and how it was registered (read by edge_biformer.plugins.load()).
extern "C" EB_PLUGIN_EXPORT char const* edge_biformer_plugin_status()
{
    using namespace edge_biformer::plugin;
    return gRefused.load(std::memory_order_acquire) ? gRefusedStatus.c_str() : gLoadTimeRegistrar.status();
}
