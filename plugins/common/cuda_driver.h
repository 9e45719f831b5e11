/*
 * The few CUDA driver API queries the plugins make themselves (the kernels are loaded and launched by
 * their launchers). Driver API only: the library never uses the CUDA runtime.
 */
#ifndef EDGE_BIFORMER_CUDA_DRIVER_H
#define EDGE_BIFORMER_CUDA_DRIVER_H

#include <cuda.h>

#include <cstdint>
#include <string>

namespace edge_biformer
{
namespace plugin
{

//! major*10 + minor of the device of the current CUDA context, or -1 (no context, driver error). When
//! `ctxOut` is not null it receives the current context on success.
int32_t currentDeviceSm(CUcontext* ctxOut) noexcept;

//! "CUDA_ERROR_NAME (description)" of a CUresult, or "CUresult <n>" if the driver does not know it.
std::string cudaErrorText(CUresult result);

//! For a module load that failed with `result`: when the error says the driver cannot use the kernel
//! images (their PTX ISA or cubin toolchain is newer than the driver, e.g. a JetPack 5 driver of CUDA
//! 11.4), the driver's CUDA version and how to regenerate the images for it; else an empty string.
std::string imageLoadHint(CUresult result);

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_CUDA_DRIVER_H
