#include "tensorrt_runtime.h"

#include <dlfcn.h>

#include <cctype>
#include <cstdlib>

namespace edge_biformer
{
namespace plugin
{
namespace
{

using VersionFn = int32_t (*)() noexcept;

VersionFn versionFunction(void* handle, char const* name) noexcept
{
    // POSIX guarantees that a dlsym() result for a function can be converted to a function pointer.
    return reinterpret_cast<VersionFn>(dlsym(handle, name));
}

//! N of ".../libnvinfer.so.N[.x.y]", ".../libnvinfer_lean.so.N", ...; -1 for other names.
int32_t majorFromName(std::string const& path) noexcept
{
    std::string::size_type const slash = path.rfind('/');
    std::string const name = path.substr(slash == std::string::npos ? 0 : slash + 1);
    std::string::size_type const so = name.find(".so.");
    if (name.rfind("libnvinfer", 0) != 0 || so == std::string::npos)
    {
        return -1;
    }
    char const* digits = name.c_str() + so + 4;
    if (std::isdigit(static_cast<unsigned char>(*digits)) == 0)
    {
        return -1;
    }
    return static_cast<int32_t>(std::strtol(digits, nullptr, 10));
}

} // namespace

int32_t tensorrtMajorOf(void* handle) noexcept
{
    if (VersionFn major = versionFunction(handle, "getInferLibMajorVersion"))
    {
        return major();
    }
    if (VersionFn version = versionFunction(handle, "getInferLibVersion"))
    {
        int32_t const value = version();
        return value >= 100000 ? value / 10000 : value / 1000;
    }
    return -1;
}

LoadedLibrary libraryAt(void const* address) noexcept
{
    LoadedLibrary library;
    try
    {
        Dl_info info{};
        if (address == nullptr || dladdr(address, &info) == 0 || info.dli_fname == nullptr)
        {
            return library;
        }
        library.path = info.dli_fname;
        library.base = info.dli_fbase;
        // RTLD_NOLOAD: a handle of the already loaded object (its path may be relative to the search path).
        if (void* handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD))
        {
            library.tensorrtMajor = tensorrtMajorOf(handle);
            dlclose(handle);
        }
        if (library.tensorrtMajor < 0)
        {
            library.tensorrtMajor = majorFromName(library.path);
        }
    }
    catch (...)
    {
        library = LoadedLibrary{};
    }
    return library;
}

} // namespace plugin
} // namespace edge_biformer
