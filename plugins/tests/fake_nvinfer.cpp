/*
 * Test double of libnvinfer's plugin registry, for registration_test.cpp: a shared library with the
 * soname of the TensorRT runtime (libnvinfer.so.<major>, or libnvinfer_lean.so.<major>) that exports
 * getPluginRegistry/getLogger and the version functions of its TensorRT (getInferLibVersion, and
 * getInferLibMajorVersion from TensorRT 10) and implements IPluginRegistry with TensorRT's documented
 * semantics: registerCreator refuses a second creator with the same name/version/namespace; loadLibrary
 * (TensorRT >= 8.6) dlopen()s the library, calls its setLoggerFinder and getCreators (>= 10: IPluginCreatorV3One
 * creators) or getPluginCreators (8.6: IPluginCreator creators) and fails (returns null) if any returned
 * creator is already registered. Compiled against the real TensorRT headers; never part of
 * libedge_biformer_plugins.so.
 */
#include "tensorrt_compat.h"

#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// The TensorRT 10 interface still declares the deprecated IPluginV2 registry methods; TensorRT 8 marks IPluginV2.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#define EB_FAKE_EXPORT __attribute__((visibility("default")))

namespace
{

class SilentLogger : public nvinfer1::ILogger
{
public:
    void log(Severity /*severity*/, char const* /*msg*/) noexcept override {}
};
SilentLogger gLogger;

#if EB_TRT_HAS_LOAD_LIBRARY
class Finder : public nvinfer1::ILoggerFinder
{
public:
    nvinfer1::ILogger* findLogger() override
    {
        return &gLogger;
    }
};
Finder gFinder;
#endif

//! The creators this registry holds: the interface of the headers' generation, and its identity.
#if EB_TRT_HAS_PLUGIN_V3
using Creator = nvinfer1::IPluginCreatorInterface;
constexpr char const* kCREATORS_ENTRY = "getCreators";
nvinfer1::IPluginCreatorV3One* identity(Creator* creator)
{
    if (creator == nullptr || std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
    {
        return nullptr;
    }
    return static_cast<nvinfer1::IPluginCreatorV3One*>(creator);
}
void adoptNamespace(Creator& /*creator*/, char const* /*pluginNamespace*/) {} // V3 creators name their own
#else
using Creator = nvinfer1::IPluginCreator;
constexpr char const* kCREATORS_ENTRY = "getPluginCreators";
Creator* identity(Creator* creator)
{
    return creator;
}
void adoptNamespace(Creator& creator, char const* pluginNamespace)
{
    creator.setPluginNamespace(pluginNamespace);
}
#endif

bool sameIdentity(Creator* creator, char const* name, char const* version, char const* ns)
{
    auto* id = identity(creator);
    return id != nullptr && std::strcmp(id->getPluginName(), name) == 0
        && std::strcmp(id->getPluginVersion(), version) == 0 && std::strcmp(id->getPluginNamespace(), ns) == 0;
}

class FakeRegistry : public nvinfer1::IPluginRegistry
{
public:
    FakeRegistry() = default;
    ~FakeRegistry() noexcept override = default;

    void setErrorRecorder(nvinfer1::IErrorRecorder* const /*recorder*/) noexcept override {}
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }

    //! The registry's own rule: one creator per name/version/namespace.
    bool add(Creator& creator)
    {
        auto* id = identity(&creator);
        if (id == nullptr || find(id->getPluginName(), id->getPluginVersion(), id->getPluginNamespace()) != nullptr)
        {
            return false;
        }
        mCreators.push_back(&creator);
        return true;
    }
    Creator* find(char const* name, char const* version, char const* ns) const
    {
        for (Creator* c : mCreators)
        {
            if (sameIdentity(c, name, version, ns))
            {
                return c;
            }
        }
        return nullptr;
    }
    bool remove(Creator const& creator)
    {
        for (auto it = mCreators.begin(); it != mCreators.end(); ++it)
        {
            if (*it == &creator)
            {
                mCreators.erase(it);
                return true;
            }
        }
        return false;
    }
    Creator* const* all(int32_t* const numCreators) const
    {
        *numCreators = static_cast<int32_t>(mCreators.size());
        return mCreators.empty() ? nullptr : mCreators.data();
    }

#if EB_TRT_HAS_LOAD_LIBRARY
    bool isParentSearchEnabled() const override
    {
        return true;
    }
    void setParentSearchEnabled(bool const /*enabled*/) override {}

    PluginLibraryHandle loadLibrary(char const* pluginPath) noexcept override
    {
        void* handle = dlopen(pluginPath, RTLD_LAZY | RTLD_LOCAL);
        if (handle == nullptr)
        {
            return nullptr;
        }
        using SetFinderFn = void (*)(nvinfer1::ILoggerFinder*);
        using GetCreatorsFn = Creator* const* (*) (int32_t&);
        if (auto setFinder = reinterpret_cast<SetFinderFn>(dlsym(handle, "setLoggerFinder")))
        {
            setFinder(&gFinder);
        }
        auto getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(handle, kCREATORS_ENTRY));
        if (getCreators == nullptr)
        {
            return nullptr;
        }
        int32_t n = -1;
        Creator* const* creators = getCreators(n);
        if (n < 0 || (n > 0 && creators == nullptr))
        {
            return nullptr;
        }
        for (int32_t i = 0; i < n; ++i)
        {
            if (!add(*creators[i]))
            {
                return nullptr; // "fails if any of the plugins are already registered"
            }
        }
        return handle;
    }

    void deregisterLibrary(PluginLibraryHandle /*handle*/) noexcept override {}
#endif

// The registry methods of the creators of the headers' generation (TensorRT >= 10: getAllCreators/getCreator;
// 8: getPluginCreatorList/getPluginCreator), forwarding to add/all/find/remove.
#define EB_FAKE_REGISTRY_METHODS(LIST, GET)                                                                            \
    bool registerCreator(Creator& creator, char const* const pluginNamespace) noexcept override                        \
    {                                                                                                                  \
        adoptNamespace(creator, pluginNamespace);                                                                      \
        return add(creator);                                                                                           \
    }                                                                                                                  \
    Creator* const* LIST(int32_t* const numCreators) const noexcept override                                           \
    {                                                                                                                  \
        return all(numCreators);                                                                                       \
    }                                                                                                                  \
    Creator* GET(char const* const name, char const* const version, char const* const ns) noexcept override            \
    {                                                                                                                  \
        return find(name, version, ns);                                                                                \
    }                                                                                                                  \
    bool deregisterCreator(Creator const& creator) noexcept override                                                  \
    {                                                                                                                  \
        return remove(creator);                                                                                        \
    }

#if EB_TRT_HAS_PLUGIN_V3
    EB_FAKE_REGISTRY_METHODS(getAllCreators, getCreator)
    nvinfer1::IPluginResource* acquirePluginResource(
        char const* /*key*/, nvinfer1::IPluginResource* /*resource*/) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(char const* /*key*/) noexcept override
    {
        return -1;
    }
#if EB_TRT_AT_LEAST(10, 10)
    Creator* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override
    {
        return all(numCreators);
    }
#endif
#if NV_TENSORRT_MAJOR < 11
    // IPluginV2 registry methods (deprecated, absent from TensorRT 11): no V2 creators here.
    bool registerCreator(nvinfer1::IPluginCreator& /*creator*/, char const* const /*ns*/) noexcept override
    {
        return false;
    }
    nvinfer1::IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    nvinfer1::IPluginCreator* getPluginCreator(
        char const* const /*name*/, char const* const /*version*/, char const* const /*ns*/) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(nvinfer1::IPluginCreator const& /*creator*/) noexcept override
    {
        return false;
    }
#endif
#else
    EB_FAKE_REGISTRY_METHODS(getPluginCreatorList, getPluginCreator)
#endif

private:
    std::vector<Creator*> mCreators;
};

FakeRegistry gRegistry;

//! The TensorRT major version; EB_FAKE_TRT_MAJOR overrides it to simulate a mismatched runtime.
int32_t fakeMajor() noexcept
{
    if (char const* major = std::getenv("EB_FAKE_TRT_MAJOR"))
    {
        return static_cast<int32_t>(std::strtol(major, nullptr, 10));
    }
    return NV_TENSORRT_MAJOR;
}

} // namespace

extern "C" EB_FAKE_EXPORT nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &gRegistry;
}

extern "C" EB_FAKE_EXPORT nvinfer1::ILogger* getLogger() noexcept
{
    return &gLogger;
}

//! As TensorRT encodes it: major*1000 + minor*100 + patch up to 9, major*10000 + minor*100 + patch from 10.
extern "C" EB_FAKE_EXPORT int32_t getInferLibVersion() noexcept
{
    int32_t const major = fakeMajor();
    return major >= 10 ? major * 10000 + NV_TENSORRT_MINOR * 100 : major * 1000 + NV_TENSORRT_MINOR * 100;
}

#if NV_TENSORRT_MAJOR >= 10
extern "C" EB_FAKE_EXPORT int32_t getInferLibMajorVersion() noexcept
{
    return fakeMajor();
}
#endif
