/*
 * Logging of the plugin library without a link-time dependency on libnvinfer.
 *
 * Where a message goes, first match wins:
 *   1. the logger of the engine/context that called the plugin, found through the ILoggerFinder
 *      that TensorRT passes to setLoggerFinder() when it loads the library with loadLibrary()
 *      (TensorRT >= 8.6; the first non-null finder is kept, as TensorRT's own plugin libraries do);
 *   2. the process-wide logger of the TensorRT that the library registered itself into at load
 *      time (its exported getLogger(), resolved at run time);
 *   3. stderr, for warnings and errors only.
 */
#ifndef EDGE_BIFORMER_PLUGIN_LOGGING_H
#define EDGE_BIFORMER_PLUGIN_LOGGING_H

#include "tensorrt_compat.h"

#include <NvInferRuntime.h>

#include <string>

namespace edge_biformer
{
namespace plugin
{

using Severity = nvinfer1::ILogger::Severity;

//! Signature of TensorRT's exported `getLogger()`.
using GetLoggerFn = nvinfer1::ILogger* (*) () noexcept;

//! What every message of the library starts with ("<namespace> <plugin name>: "). Defined once by the
//! library, next to its registration (bra_registration.cpp); constant-initialised, so usable from the
//! static initialisers of other translation units.
extern char const kLOG_PREFIX[];

#if EB_TRT_HAS_LOAD_LIBRARY
//! Remember the finder TensorRT passed to setLoggerFinder(): the first non-null one is kept (a later
//! loadLibrary of another registry, e.g. a lean runtime, does not replace it; null is ignored).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
#endif

//! Remember the getLogger() of the TensorRT instance the library registered itself into.
void setProcessLoggerGetter(GetLoggerFn getter) noexcept;

//! Emit one message, prefixed with kLOG_PREFIX.
void logMessage(Severity severity, std::string const& message) noexcept;

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_PLUGIN_LOGGING_H
