/*
 * Which TensorRT runtime a call comes from, found at run time (the library links no TensorRT library).
 * The plugin ABI (ILogger, ILoggerFinder, the plugin and creator interfaces) differs between TensorRT
 * majors, so every entry point that TensorRT calls checks the major of the calling runtime first.
 */
#ifndef EDGE_BIFORMER_TENSORRT_RUNTIME_H
#define EDGE_BIFORMER_TENSORRT_RUNTIME_H

#include <cstdint>
#include <string>

namespace edge_biformer
{
namespace plugin
{

//! A loaded shared object and the TensorRT major it reports.
struct LoadedLibrary
{
    std::string path;            //!< as the dynamic loader knows it; empty if `address` is in no shared object
    void const* base{nullptr};   //!< where it is mapped
    int32_t tensorrtMajor{-1};   //!< its TensorRT major, or -1 if it exports no version and its name has none
};

//! The TensorRT major that the library behind `handle` (a dlopen handle, or RTLD_DEFAULT) reports:
//! getInferLibMajorVersion() (TensorRT >= 10), else getInferLibVersion() (major*1000+... in TensorRT 8,
//! major*10000+... from 10); -1 if it exports neither.
int32_t tensorrtMajorOf(void* handle) noexcept;

//! The shared object that holds `address` (e.g. the return address of an entry point: its caller), with its
//! TensorRT major (tensorrtMajorOf, else the N of a "libnvinfer*.so.N" file name).
LoadedLibrary libraryAt(void const* address) noexcept;

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_TENSORRT_RUNTIME_H
