/*
 * Link stub of libnvinfer for machines without TensorRT's libraries (CI): the two entry points the
 * classify sample reaches. createInferRuntime fails (returns null), so the linked sample runs up to
 * its first TensorRT call and reports the failure. Never installed, never part of a deployment.
 */
#include <NvInferRuntime.h>

extern "C" TENSORRTAPI void* createInferRuntime_INTERNAL(void* /*logger*/, int32_t /*version*/) noexcept
{
    return nullptr;
}

extern "C" TENSORRTAPI int32_t getInferLibVersion() noexcept
{
    return NV_TENSORRT_VERSION;
}
