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

} // namespace plugin
} // namespace edge_biformer
