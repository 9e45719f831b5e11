/*
 * Test double of libnvinfer's plugin registry, for registration_test.cpp: a shared library with the
 * soname of the TensorRT runtime (libnvinfer.so.<major>, or libnvinfer_lean.so.<major> when built with
 * EB_FAKE_LEAN=1) that exports getPluginRegistry/getInferLibMajorVersion/getLogger and implements
 * IPluginRegistry with TensorRT's documented semantics: registerCreator refuses a second creator with
 * the same name/version/namespace; loadLibrary dlopen()s the library, calls its setLoggerFinder and
 * getCreators and fails (returns null) if any returned creator is already registered.
 * Compiled against the real TensorRT headers; never part of libedge_biformer_plugins.so.
 */
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// The TensorRT 10 interface still declares the deprecated IPluginV2 registry methods.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#define EB_FAKE_EXPORT __attribute__((visibility("default")))

namespace
{

using nvinfer1::IPluginCreatorInterface;

class SilentLogger : public nvinfer1::ILogger
{
public:
    void log(Severity /*severity*/, char const* /*msg*/) noexcept override {}
};
SilentLogger gLogger;

class Finder : public nvinfer1::ILoggerFinder
{
public:
    nvinfer1::ILogger* findLogger() override
    {
        return &gLogger;
    }
};
Finder gFinder;

nvinfer1::IPluginCreatorV3One* asV3(IPluginCreatorInterface* creator)
{
    if (creator == nullptr || std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
    {
        return nullptr;
    }
    return static_cast<nvinfer1::IPluginCreatorV3One*>(creator);
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
        using GetCreatorsFn = IPluginCreatorInterface* const* (*) (int32_t&);
        if (auto setFinder = reinterpret_cast<SetFinderFn>(dlsym(handle, "setLoggerFinder")))
        {
            setFinder(&gFinder);
        }
        auto getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(handle, "getCreators"));
        if (getCreators == nullptr)
        {
            return nullptr;
        }
        int32_t n = -1;
        IPluginCreatorInterface* const* creators = getCreators(n);
        if (n < 0 || (n > 0 && creators == nullptr))
        {
            return nullptr;
        }
        for (int32_t i = 0; i < n; ++i)
        {
            auto* v3 = asV3(creators[i]);
            if (v3 == nullptr || !registerCreator(*creators[i], v3->getPluginNamespace()))
            {
                return nullptr; // "fails if any of the plugins are already registered"
            }
        }
        return handle;
    }

    void deregisterLibrary(PluginLibraryHandle /*handle*/) noexcept override {}

    bool registerCreator(IPluginCreatorInterface& creator, char const* const /*pluginNamespace*/) noexcept override
    {
        auto* v3 = asV3(&creator);
        if (v3 == nullptr || getCreator(v3->getPluginName(), v3->getPluginVersion(), v3->getPluginNamespace()) != nullptr)
        {
            return false;
        }
        mCreators.push_back(&creator);
        return true;
    }

    IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        *numCreators = static_cast<int32_t>(mCreators.size());
        return mCreators.empty() ? nullptr : mCreators.data();
    }

    IPluginCreatorInterface* getCreator(
        char const* const pluginName, char const* const pluginVersion, char const* const pluginNamespace) noexcept override
    {
        for (IPluginCreatorInterface* c : mCreators)
        {
            auto* v3 = asV3(c);
            if (v3 != nullptr && std::strcmp(v3->getPluginName(), pluginName) == 0
                && std::strcmp(v3->getPluginVersion(), pluginVersion) == 0
                && std::strcmp(v3->getPluginNamespace(), pluginNamespace) == 0)
            {
                return c;
            }
        }
        return nullptr;
    }

    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override
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

    nvinfer1::IPluginResource* acquirePluginResource(
        char const* /*key*/, nvinfer1::IPluginResource* /*resource*/) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(char const* /*key*/) noexcept override
    {
        return -1;
    }

#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 10)
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override
    {
        return getAllCreators(numCreators);
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

private:
    std::vector<IPluginCreatorInterface*> mCreators;
};

FakeRegistry gRegistry;

} // namespace

extern "C" EB_FAKE_EXPORT nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &gRegistry;
}

extern "C" EB_FAKE_EXPORT nvinfer1::ILogger* getLogger() noexcept
{
    return &gLogger;
}

//! The TensorRT major version; EB_FAKE_TRT_MAJOR overrides it to simulate a mismatched runtime.
extern "C" EB_FAKE_EXPORT int32_t getInferLibMajorVersion() noexcept
{
    if (char const* major = std::getenv("EB_FAKE_TRT_MAJOR"))
    {
        return static_cast<int32_t>(std::strtol(major, nullptr, 10));
    }
    return NV_TENSORRT_MAJOR;
}
