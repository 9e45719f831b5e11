/*
 * Test double of the few CUDA driver API calls the plugin makes itself, for the host-side unit test
 * (bra_plugin_host_test.cpp). Never linked into libedge_biformer_plugins.so.
 */
#include "fake_cuda_driver.h"

#include <cuda.h>

int eb_fake_context_current = 1;
int eb_fake_sm = 87;
CUstream eb_fake_stream_context_mismatch = NULL;

static int s_context_token;
static int s_other_context_token;

CUresult CUDAAPI cuCtxGetCurrent(CUcontext* pctx)
{
    *pctx = eb_fake_context_current ? (CUcontext)&s_context_token : NULL;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetDevice(CUdevice* device)
{
    if (!eb_fake_context_current)
    {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice dev)
{
    (void)dev;
    if (attrib == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
    {
        *pi = eb_fake_sm / 10;
        return CUDA_SUCCESS;
    }
    if (attrib == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
    {
        *pi = eb_fake_sm % 10;
        return CUDA_SUCCESS;
    }
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuStreamGetCtx(CUstream hStream, CUcontext* pctx)
{
    *pctx = (hStream != NULL && hStream == eb_fake_stream_context_mismatch) ? (CUcontext)&s_other_context_token
                                                                              : (CUcontext)&s_context_token;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorName(CUresult error, const char** pStr)
{
    *pStr = error == CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES ? "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES" : "CUDA_ERROR_UNKNOWN";
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorString(CUresult error, const char** pStr)
{
    (void)error;
    *pStr = "fake driver error text";
    return CUDA_SUCCESS;
}
