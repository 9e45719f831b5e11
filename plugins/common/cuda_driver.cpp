#include "cuda_driver.h"

namespace edge_biformer
{
namespace plugin
{

int32_t currentDeviceSm(CUcontext* ctxOut) noexcept
{
    CUcontext ctx{nullptr};
    if (cuCtxGetCurrent(&ctx) != CUDA_SUCCESS || ctx == nullptr)
    {
        return -1;
    }
    CUdevice device{};
    int major{0};
    int minor{0};
    if (cuCtxGetDevice(&device) != CUDA_SUCCESS
        || cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device) != CUDA_SUCCESS
        || cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device) != CUDA_SUCCESS)
    {
        return -1;
    }
    if (ctxOut != nullptr)
    {
        *ctxOut = ctx;
    }
    return major * 10 + minor;
}

std::string cudaErrorText(CUresult result)
{
    char const* name = nullptr;
    char const* text = nullptr;
    if (cuGetErrorName(result, &name) != CUDA_SUCCESS || name == nullptr)
    {
        return "CUresult " + std::to_string(static_cast<int>(result));
    }
    std::string out{name};
    if (cuGetErrorString(result, &text) == CUDA_SUCCESS && text != nullptr)
    {
        out += std::string{" ("} + text + ")";
    }
    return out;
}

std::string imageLoadHint(CUresult result)
{
    if (result != CUDA_ERROR_UNSUPPORTED_PTX_VERSION && result != CUDA_ERROR_INVALID_IMAGE
        && result != CUDA_ERROR_NO_BINARY_FOR_GPU && result != CUDA_ERROR_INVALID_PTX)
    {
        return {};
    }
    int version{0};
    std::string driver = cuDriverGetVersion(&version) == CUDA_SUCCESS
        ? "CUDA " + std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10)
        : std::string{"an unknown CUDA version"};
    return "; this driver (" + driver
        + ") cannot use the kernel images of the library: they were assembled by a newer ptxas (see the "
          "ptxas_versions and ptx_versions of the kernels' manifest.json). Regenerate the kernels with this "
          "machine's toolkit (TRITON_PTXAS_PATH=/usr/local/cuda/bin/ptxas python -m edge_biformer.kernels.aot ...) "
          "and rebuild the library, or update the driver (docs/jetson.md, Kernel images and drivers)";
}

} // namespace plugin
} // namespace edge_biformer
