#include "plugin_logging.h"

#include <atomic>
#include <cstdio>

namespace edge_biformer
{
namespace plugin
{
namespace
{
// Constant-initialised, so usable from static initialisers of other translation units.
#if EB_TRT_HAS_LOAD_LIBRARY
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};
#endif
std::atomic<GetLoggerFn> gProcessLoggerGetter{nullptr};

char const* severityName(Severity severity) noexcept
{
    switch (severity)
    {
    case Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case Severity::kERROR: return "ERROR";
    case Severity::kWARNING: return "WARNING";
    case Severity::kINFO: return "INFO";
    case Severity::kVERBOSE: return "VERBOSE";
    }
    return "UNKNOWN";
}

nvinfer1::ILogger* findLogger() noexcept
{
#if EB_TRT_HAS_LOAD_LIBRARY
    if (nvinfer1::ILoggerFinder* finder = gLoggerFinder.load(std::memory_order_acquire))
    {
        if (nvinfer1::ILogger* logger = finder->findLogger())
        {
            return logger;
        }
    }
#endif
    if (GetLoggerFn getter = gProcessLoggerGetter.load(std::memory_order_acquire))
    {
        return getter();
    }
    return nullptr;
}
} // namespace

#if EB_TRT_HAS_LOAD_LIBRARY
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    nvinfer1::ILoggerFinder* expected = nullptr;
    if (finder != nullptr)
    {
        gLoggerFinder.compare_exchange_strong(expected, finder, std::memory_order_acq_rel);
    }
}
#endif

void setProcessLoggerGetter(GetLoggerFn getter) noexcept
{
    gProcessLoggerGetter.store(getter, std::memory_order_release);
}

void logMessage(Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const line = std::string{kLOG_PREFIX} + message;
        if (nvinfer1::ILogger* logger = findLogger())
        {
            logger->log(severity, line.c_str());
            return;
        }
        if (severity == Severity::kINTERNAL_ERROR || severity == Severity::kERROR || severity == Severity::kWARNING)
        {
            std::fprintf(stderr, "[%s] %s\n", severityName(severity), line.c_str());
        }
    }
    catch (...)
    {
        // Out of memory while formatting: nothing sensible left to report to.
    }
}

} // namespace plugin
} // namespace edge_biformer
