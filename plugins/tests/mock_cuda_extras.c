/*
 * The driver calls the plugin makes itself that plugins/bra/aot/mock_cuda.c (the kernel step's mock
 * driver) does not provide, for bra_plugin_integration_test.cpp. Never linked into the library.
 */
#include <cuda.h>

#include <stddef.h>

static int s_context_token;
int eb_mock_extras_no_context = 0;

CUresult CUDAAPI cuCtxGetCurrent(CUcontext* pctx)
{
    *pctx = eb_mock_extras_no_context ? NULL : (CUcontext)&s_context_token;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamGetCtx(CUstream hStream, CUcontext* pctx)
{
    (void)hStream;
    *pctx = (CUcontext)&s_context_token;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorName(CUresult error, const char** pStr)
{
    switch (error)
    {
    case CUDA_SUCCESS: *pStr = "CUDA_SUCCESS"; return CUDA_SUCCESS;
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *pStr = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_CONTEXT: *pStr = "CUDA_ERROR_INVALID_CONTEXT"; return CUDA_SUCCESS;
    default: *pStr = NULL; return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult CUDAAPI cuGetErrorString(CUresult error, const char** pStr)
{
    (void)error;
    *pStr = "mock driver";
    return CUDA_SUCCESS;
}
