/*
 * Registration test: loads a build of the plugin library (the real registration code, with the test
 * doubles of the kernels and the driver) into a process whose "TensorRT" is fake_nvinfer.cpp, the way
 * applications do, and checks that the creator ends up registered exactly once per registry.
 *
 *   registration_test MODE PLUGIN_LIBRARY FAKE_TRT_DIR [SECOND_COPY_OF_PLUGIN_LIBRARY]
 *
 * The fake runtimes are loaded with RTLD_LOCAL, like Python's tensorrt module loads libnvinfer. Each
 * mode runs in its own process (tests/plugins/test_plugin_build.py runs them all; the modes that need
 * IPluginRegistry::loadLibrary or a lean runtime exist from TensorRT 8.6). Exit status 0 = pass.
 */
#include "bra_contract.h"
#include "tensorrt_compat.h"

#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <iostream>
#include <string>

namespace
{

constexpr char const* kNAME = EB_BRA_PLUGIN_NAME;
constexpr char const* kVERSION = EB_BRA_PLUGIN_VERSION;
constexpr char const* kNAMESPACE = EB_BRA_PLUGIN_NAMESPACE;

#define EB_STRINGIFY_IMPL(x) #x
#define EB_STRINGIFY(x) EB_STRINGIFY_IMPL(x)
std::string const kFULL = "libnvinfer.so." EB_STRINGIFY(NV_TENSORRT_MAJOR);
std::string const kLEAN = "libnvinfer_lean.so." EB_STRINGIFY(NV_TENSORRT_MAJOR);

int gFailures = 0;

void expect(bool condition, std::string const& what)
{
    if (!condition)
    {
        ++gFailures;
        std::cerr << "FAILED: " << what << "\n";
    }
}

struct Runtime
{
    void* handle{nullptr};
    nvinfer1::IPluginRegistry* registry{nullptr};
};

Runtime openRuntime(std::string const& path, int flags)
{
    Runtime rt;
    rt.handle = dlopen(path.c_str(), flags);
    if (rt.handle == nullptr)
    {
        return rt;
    }
    using GetRegistryFn = nvinfer1::IPluginRegistry* (*) () noexcept;
    if (auto get = reinterpret_cast<GetRegistryFn>(dlsym(rt.handle, "getPluginRegistry")))
    {
        rt.registry = get();
    }
    return rt;
}

#if EB_TRT_HAS_PLUGIN_V3
using Creator = nvinfer1::IPluginCreatorInterface;
constexpr char const* kCREATORS_ENTRY = "getCreators";
Creator* const* allCreators(nvinfer1::IPluginRegistry* registry, int32_t* n)
{
    return registry->getAllCreators(n);
}
nvinfer1::IPluginCreatorV3One* identity(Creator* creator)
{
    return static_cast<nvinfer1::IPluginCreatorV3One*>(creator);
}
#else
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
using Creator = nvinfer1::IPluginCreator;
constexpr char const* kCREATORS_ENTRY = "getPluginCreators";
Creator* const* allCreators(nvinfer1::IPluginRegistry* registry, int32_t* n)
{
    return registry->getPluginCreatorList(n);
}
Creator* identity(Creator* creator)
{
    return creator;
}
#endif

int count(nvinfer1::IPluginRegistry* registry)
{
    int32_t n = 0;
    Creator* const* all = allCreators(registry, &n);
    int found = 0;
    for (int32_t i = 0; i < n; ++i)
    {
        auto* id = identity(all[i]);
        found += std::strcmp(id->getPluginName(), kNAME) == 0 && std::strcmp(id->getPluginVersion(), kVERSION) == 0
            && std::strcmp(id->getPluginNamespace(), kNAMESPACE) == 0;
    }
    return found;
}

std::string status(void* plugin)
{
    using StatusFn = char const* (*) ();
    auto fn = reinterpret_cast<StatusFn>(dlsym(plugin, "edge_biformer_plugin_status"));
    return fn != nullptr ? fn() : std::string{"<no edge_biformer_plugin_status>"};
}

bool contains(std::string const& s, std::string const& part)
{
    return s.find(part) != std::string::npos;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 4)
    {
        std::cerr << "usage: registration_test MODE PLUGIN_LIBRARY FAKE_TRT_DIR [SECOND_COPY]\n";
        return 2;
    }
    std::string const mode{argv[1]};
    std::string const plugin{argv[2]};
    std::string const fakeDir{argv[3]};
    int constexpr kLocal = RTLD_LAZY | RTLD_LOCAL;

    if (mode == "dlopen")
    {
        // Python: import tensorrt (libnvinfer loaded RTLD_LOCAL), then ctypes.CDLL(plugin).
        Runtime full = openRuntime(fakeDir + "/" + kFULL, kLocal);
        void* lib = dlopen(plugin.c_str(), kLocal);
        expect(lib != nullptr, "dlopen(plugin)");
        expect(count(full.registry) == 1, "one creator registered at load time");
        expect(contains(status(lib), "registered into the plugin registry of " + fakeDir + "/" + kFULL),
            "status names the registry: " + status(lib));
#if EB_TRT_HAS_PLUGIN_V3
        auto* creator = full.registry->getCreator(kNAME, kVERSION, kNAMESPACE);
        expect(creator != nullptr && std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
            "getCreator finds an IPluginCreatorV3One");
#else
        expect(full.registry->getPluginCreator(kNAME, kVERSION, kNAMESPACE) != nullptr,
            "getPluginCreator finds the IPluginCreator");
#endif
    }
#if EB_TRT_HAS_LOAD_LIBRARY
    else if (mode == "loadLibrary")
    {
        // trtexec --dynamicPlugins / registry.load_library: the load-time registrar and getCreators meet.
        Runtime full = openRuntime(fakeDir + "/" + kFULL, kLocal);
        expect(full.registry->loadLibrary(plugin.c_str()) != nullptr, "loadLibrary succeeds");
        expect(count(full.registry) == 1, "exactly one creator after loadLibrary");
    }
    else if (mode == "dlopen+loadLibrary")
    {
        Runtime full = openRuntime(fakeDir + "/" + kFULL, kLocal);
        void* lib = dlopen(plugin.c_str(), kLocal);
        expect(lib != nullptr, "dlopen(plugin)");
        expect(full.registry->loadLibrary(plugin.c_str()) != nullptr, "loadLibrary after dlopen succeeds");
        expect(full.registry->loadLibrary(plugin.c_str()) != nullptr, "a second loadLibrary succeeds");
        expect(count(full.registry) == 1, "exactly one creator");
    }
    else if (mode == "lean")
    {
        // A version-compatible plan: the lean runtime inside the plan loads the plugin with loadLibrary
        // while the application's full runtime is loaded too. Each registry gets the creator once.
        Runtime full = openRuntime(fakeDir + "/" + kFULL, kLocal);
        Runtime lean = openRuntime(fakeDir + "/" + kLEAN, kLocal);
        expect(lean.registry != nullptr && lean.registry != full.registry, "two registries");
        expect(lean.registry->loadLibrary(plugin.c_str()) != nullptr, "lean loadLibrary succeeds");
        expect(count(lean.registry) == 1, "the lean registry holds the creator");
        expect(count(full.registry) == 1, "the full registry holds it once (load-time registration)");
    }
    else if (mode == "lean-only")
    {
        // The dispatch/lean runtime alone: no load-time registration, getCreators provides the creator.
        Runtime lean = openRuntime(fakeDir + "/" + kLEAN, kLocal);
        expect(lean.registry->loadLibrary(plugin.c_str()) != nullptr, "lean loadLibrary succeeds");
        expect(count(lean.registry) == 1, "the lean registry holds the creator");
        void* lib = dlopen(plugin.c_str(), kLocal | RTLD_NOLOAD);
        expect(lib != nullptr && contains(status(lib), "the process runs the lean TensorRT runtime"),
            "status: " + (lib ? status(lib) : std::string{}));
        expect(dlopen(kFULL.c_str(), kLocal | RTLD_NOLOAD) == nullptr, "the full runtime was not loaded");
    }
    else if (mode == "loadLibrary-major-mismatch")
    {
        // Run with EB_FAKE_TRT_MAJOR set to another major and EDGE_BIFORMER_PLUGIN_STATIC_REGISTRATION=0: the
        // loadLibrary entry points themselves refuse a TensorRT of another major (no creator, no finder kept).
        Runtime full = openRuntime(fakeDir + "/" + kFULL, kLocal);
        expect(full.registry->loadLibrary(plugin.c_str()) != nullptr, "loadLibrary returns (with no creators)");
        expect(count(full.registry) == 0, "nothing registered into a TensorRT of another major version");
        void* lib = dlopen(plugin.c_str(), kLocal | RTLD_NOLOAD);
        std::string const text = lib != nullptr ? status(lib) : std::string{};
        expect(contains(text, "setLoggerFinder refused: that TensorRT is version")
                && contains(text, "rebuild it with TENSORRT_ROOT pointing at TensorRT"),
            "status: " + text);
    }
#endif
    else if (mode == "search-path")
    {
        // polygraphy --plugins: the plugin library is loaded before TensorRT; it loads libnvinfer from the
        // library search path (LD_LIBRARY_PATH holds FAKE_TRT_DIR) and registers there.
        void* lib = dlopen(plugin.c_str(), kLocal);
        expect(lib != nullptr, "dlopen(plugin)");
        Runtime full = openRuntime(kFULL, kLocal | RTLD_NOLOAD);
        expect(full.registry != nullptr, "the plugin loaded " + kFULL);
        expect(full.registry != nullptr && count(full.registry) == 1, "one creator registered");
    }
    else if (mode == "no-tensorrt")
    {
        void* lib = dlopen(plugin.c_str(), kLocal);
        expect(lib != nullptr, "dlopen(plugin)");
        expect(contains(status(lib), "is not on the library search path"), "status: " + status(lib));
        using GetCreatorsFn = Creator* const* (*) (int32_t&);
        auto getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(lib, kCREATORS_ENTRY));
        int32_t n = -1;
        expect(getCreators != nullptr && getCreators(n) != nullptr && n == 1, "getCreators returns the creator");
    }
    else if (mode == "major-mismatch")
    {
        // Run with EB_FAKE_TRT_MAJOR set to another major version.
        Runtime full = openRuntime(fakeDir + "/" + kFULL, kLocal);
        void* lib = dlopen(plugin.c_str(), kLocal);
        expect(lib != nullptr, "dlopen(plugin)");
        expect(count(full.registry) == 0, "nothing registered into a TensorRT of another major version");
        expect(contains(status(lib), "rebuild it with TENSORRT_ROOT pointing at TensorRT"), "status: " + status(lib));
    }
    else if (mode == "opt-out")
    {
        // Run with EDGE_BIFORMER_PLUGIN_STATIC_REGISTRATION=0: only loadLibrary registers.
        Runtime full = openRuntime(fakeDir + "/" + kFULL, kLocal);
        void* lib = dlopen(plugin.c_str(), kLocal);
        expect(lib != nullptr && count(full.registry) == 0, "no load-time registration");
        expect(contains(status(lib), "EDGE_BIFORMER_PLUGIN_STATIC_REGISTRATION=0"), "status: " + status(lib));
#if EB_TRT_HAS_LOAD_LIBRARY
        expect(full.registry->loadLibrary(plugin.c_str()) != nullptr, "loadLibrary succeeds");
        expect(count(full.registry) == 1, "loadLibrary registered the creator");
#endif
    }
    else if (mode == "second-copy" && argc == 5)
    {
        Runtime full = openRuntime(fakeDir + "/" + kFULL, kLocal);
        void* first = dlopen(plugin.c_str(), kLocal);
        void* second = dlopen(argv[4], kLocal);
        expect(first != nullptr && second != nullptr && first != second, "two copies loaded");
        expect(count(full.registry) == 1, "one creator");
        expect(contains(status(second), "another copy of the library already registered"), "status: " + status(second));
    }
    else
    {
        std::cerr << "registration_test: unknown mode '" << mode << "'\n";
        return 2;
    }
    std::cout << "registration_test " << mode << ": " << (gFailures == 0 ? "passed" : "FAILED") << "\n";
    return gFailures == 0 ? 0 : 1;
}
