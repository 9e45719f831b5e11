/*
 * The mock CUDA driver of every test without a GPU; see mock_cuda_driver.h for what it plays and the
 * knobs. Implements the driver calls of the kernel launcher (plugins/bra/kernels/bra_launch.c) and of
 * the plugin itself (plugins/common/cuda_driver.cpp, the enqueue error path).
 *
 * Build: cc -std=c11 -fPIC -shared -I$CUDA/include mock_cuda_driver.c <launcher sources> -o libmock.so
 */
#include "mock_cuda_driver.h"

#include <string.h>

#define MOCK_MAX_MODULES 4096

static int s_context_tokens[MOCK_CUDA_MAX_CONTEXTS];
static int s_other_context_token;

static struct {
    int initialized; /* 0 until the first call: the defaults are set then */
    int major, minor, shared_optin;
    int no_context;
    CUstream foreign_stream;
    int fail_cubin, fail_ptx;
    CUresult fail_launch;
    char layout[MOCK_CUDA_MAX_PARAMS + 1];
    const void* module_image[MOCK_MAX_MODULES];
    const char* module_function[MOCK_MAX_MODULES];
    int module_live[MOCK_MAX_MODULES];
    int module_context[MOCK_MAX_MODULES];
    int current;                              /* index of the current context */
    int stack[MOCK_CUDA_MAX_CONTEXTS * 4];    /* cuCtxPushCurrent: the contexts pushed over */
    int depth;
    int destroyed[MOCK_CUDA_MAX_CONTEXTS];
    unsigned long long context_id[MOCK_CUDA_MAX_CONTEXTS];
    unsigned long long next_id;
    int no_context_ids;
    int driver_version;
    int wrong_context_unloads;
    int n_modules, live_modules, total_loads, failed_loads;
    int n_launches;
    int n_set_shared;
    int last_set_shared;
    mock_cuda_launch_t last;
} mock;

void mock_cuda_reset(void) {
    memset(&mock, 0, sizeof(mock));
    mock.initialized = 1;
    mock.major = 8;
    mock.minor = 7;
    mock.shared_optin = 166912;
    mock.driver_version = 13000;
    for (int i = 0; i < MOCK_CUDA_MAX_CONTEXTS; ++i) {
        mock.context_id[i] = (unsigned long long)(i + 1);
    }
    mock.next_id = MOCK_CUDA_MAX_CONTEXTS + 1;
}

/* Every knob and driver call starts here, so that a test that never resets gets the defaults. */
static void mock_init(void) {
    if (!mock.initialized) {
        mock_cuda_reset();
    }
}

void mock_cuda_set_device(int major, int minor, int shared_optin) {
    mock_init();
    mock.major = major;
    mock.minor = minor;
    mock.shared_optin = shared_optin;
}

void mock_cuda_set_no_context(int no_context) {
    mock_init();
    mock.no_context = no_context;
}

void mock_cuda_set_foreign_stream(CUstream stream) {
    mock_init();
    mock.foreign_stream = stream;
}

void mock_cuda_set_load_failures(int fail_cubin, int fail_ptx) {
    mock_init();
    mock.fail_cubin = fail_cubin;
    mock.fail_ptx = fail_ptx;
}

void mock_cuda_set_launch_failure(CUresult result) {
    mock_init();
    mock.fail_launch = result;
}

int mock_cuda_set_param_layout(const char* layout) {
    mock_init();
    size_t n = strlen(layout);
    if (n > MOCK_CUDA_MAX_PARAMS) {
        return -1;
    }
    memcpy(mock.layout, layout, n + 1);
    return 0;
}

static int mock_valid_index(int index) { return index >= 0 && index < MOCK_CUDA_MAX_CONTEXTS; }

void mock_cuda_select_context(int index) {
    mock_init();
    if (mock_valid_index(index)) {
        mock.current = index;
        mock.depth = 0;
    }
}

void mock_cuda_destroy_context(int index) {
    mock_init();
    if (!mock_valid_index(index) || mock.destroyed[index]) {
        return;
    }
    mock.destroyed[index] = 1;
    for (int m = 0; m < mock.n_modules; ++m) {
        if (mock.module_live[m] && mock.module_context[m] == index) {
            mock.module_live[m] = 0;
            mock.live_modules--;
        }
    }
}

void mock_cuda_recreate_context(int index) {
    mock_init();
    if (mock_valid_index(index)) {
        mock.destroyed[index] = 0;
        mock.context_id[index] = mock.next_id++;
    }
}

void mock_cuda_set_context_ids(int available) {
    mock_init();
    mock.no_context_ids = !available;
}

void mock_cuda_set_driver_version(int version) {
    mock_init();
    mock.driver_version = version;
}

CUcontext mock_cuda_context(int index) {
    return mock_valid_index(index) ? (CUcontext)&s_context_tokens[index] : NULL;
}

/* The index of a context handle, or -1. */
static int mock_context_index(CUcontext ctx) {
    for (int i = 0; i < MOCK_CUDA_MAX_CONTEXTS; ++i) {
        if (ctx == (CUcontext)&s_context_tokens[i]) {
            return i;
        }
    }
    return -1;
}

int mock_cuda_wrong_context_unloads(void) { return mock.wrong_context_unloads; }
int mock_cuda_live_modules(void) { return mock.live_modules; }
int mock_cuda_total_loads(void) { return mock.total_loads; }
int mock_cuda_failed_loads(void) { return mock.failed_loads; }
int mock_cuda_launch_count(void) { return mock.n_launches; }
int mock_cuda_set_shared_count(void) { return mock.n_set_shared; }

int mock_cuda_last_launch(mock_cuda_launch_t* out) {
    if (mock.n_launches == 0) {
        return -1;
    }
    *out = mock.last;
    return 0;
}

/* ---- the driver API ---------------------------------------------------------------------- */

CUresult CUDAAPI cuCtxGetCurrent(CUcontext* pctx) {
    mock_init();
    *pctx = mock.no_context && mock.depth == 0 ? NULL : mock_cuda_context(mock.current);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPushCurrent(CUcontext ctx) {
    mock_init();
    const int index = mock_context_index(ctx);
    if (index < 0 || mock.destroyed[index]) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (mock.depth >= (int)(sizeof(mock.stack) / sizeof(mock.stack[0]))) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    mock.stack[mock.depth++] = mock.no_context ? -1 : mock.current;
    mock.current = index;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPopCurrent(CUcontext* pctx) {
    mock_init();
    if (mock.depth == 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (pctx != NULL) {
        *pctx = mock_cuda_context(mock.current);
    }
    const int previous = mock.stack[--mock.depth];
    mock.current = previous < 0 ? 0 : previous;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetId(CUcontext ctx, unsigned long long* ctxId) {
    mock_init();
    const int index = mock_context_index(ctx);
    if (mock.no_context_ids) {
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (index < 0 || mock.destroyed[index]) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    *ctxId = mock.context_id[index];
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDriverGetVersion(int* version) {
    mock_init();
    *version = mock.driver_version;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamGetCtx(CUstream hStream, CUcontext* pctx) {
    mock_init();
    const int foreign = hStream != NULL && hStream == mock.foreign_stream;
    *pctx = foreign ? (CUcontext)&s_other_context_token : mock_cuda_context(mock.current);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetDevice(CUdevice* device) {
    mock_init();
    if ((mock.no_context && mock.depth == 0) || mock.destroyed[mock.current]) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice dev) {
    mock_init();
    (void)dev;
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
        *pi = mock.major;
        break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
        *pi = mock.minor;
        break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN:
        *pi = mock.shared_optin;
        break;
    default:
        *pi = 0;
        break;
    }
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleLoadData(CUmodule* module, const void* image) {
    mock_init();
    const unsigned char* bytes = (const unsigned char*)image;
    const int is_elf = bytes[0] == 0x7f && bytes[1] == 'E' && bytes[2] == 'L' && bytes[3] == 'F';
    mock.total_loads++;
    if ((is_elf && mock.fail_cubin) || (!is_elf && mock.fail_ptx)) {
        mock.failed_loads++;
        return is_elf ? CUDA_ERROR_NO_BINARY_FOR_GPU : CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
    }
    if (mock.n_modules >= MOCK_MAX_MODULES) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    const int index = mock.n_modules++;
    mock.module_image[index] = image;
    mock.module_live[index] = 1;
    mock.module_context[index] = mock.current;
    mock.live_modules++;
    *module = (CUmodule)(uintptr_t)(index + 1);
    return CUDA_SUCCESS;
}

static int mock_module_index(const void* handle) {
    const int index = (int)(uintptr_t)handle - 1;
    if (index < 0 || index >= mock.n_modules || !mock.module_live[index]) {
        return -1;
    }
    return index;
}

CUresult CUDAAPI cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
    mock_init();
    const int index = mock_module_index(module);
    if (index < 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    mock.module_function[index] = name;
    *function = (CUfunction)(uintptr_t)(index + 1);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleUnload(CUmodule module) {
    mock_init();
    const int index = mock_module_index(module);
    if (index < 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (mock.module_context[index] != mock.current) {
        mock.wrong_context_unloads++;
    }
    mock.module_live[index] = 0;
    mock.live_modules--;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuFuncSetAttribute(CUfunction function, CUfunction_attribute attrib, int value) {
    mock_init();
    if (mock_module_index(function) < 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (attrib == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
        mock.n_set_shared++;
        mock.last_set_shared = value;
    }
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                                void** kernelParams, void** extra) {
    const int index = mock_module_index(f);
    if (index < 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (extra != NULL || kernelParams == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (mock.fail_launch != CUDA_SUCCESS) {
        return mock.fail_launch;
    }
    mock_cuda_launch_t* rec = &mock.last;
    memset(rec, 0, sizeof(*rec));
    rec->image = mock.module_image[index];
    rec->function_name = mock.module_function[index];
    rec->grid[0] = gridDimX;
    rec->grid[1] = gridDimY;
    rec->grid[2] = gridDimZ;
    rec->block[0] = blockDimX;
    rec->block[1] = blockDimY;
    rec->block[2] = blockDimZ;
    rec->shared = sharedMemBytes;
    rec->stream = (uint64_t)(uintptr_t)hStream;
    const int n = (int)strlen(mock.layout);
    rec->n_params = n;
    for (int i = 0; i < n; ++i) {
        const size_t size = mock.layout[i] == 'p' ? 8 : 4;
        memcpy(&rec->params[i], kernelParams[i], size);
    }
    mock.n_launches++;
    return CUDA_SUCCESS;
}

/* Names of the results the tests provoke; like the driver, an unknown value is CUDA_ERROR_INVALID_VALUE. */
CUresult CUDAAPI cuGetErrorName(CUresult error, const char** pStr) {
    switch (error) {
    case CUDA_SUCCESS: *pStr = "CUDA_SUCCESS"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_VALUE: *pStr = "CUDA_ERROR_INVALID_VALUE"; return CUDA_SUCCESS;
    case CUDA_ERROR_OUT_OF_MEMORY: *pStr = "CUDA_ERROR_OUT_OF_MEMORY"; return CUDA_SUCCESS;
    case CUDA_ERROR_NO_BINARY_FOR_GPU: *pStr = "CUDA_ERROR_NO_BINARY_FOR_GPU"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_CONTEXT: *pStr = "CUDA_ERROR_INVALID_CONTEXT"; return CUDA_SUCCESS;
    case CUDA_ERROR_UNSUPPORTED_PTX_VERSION: *pStr = "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_HANDLE: *pStr = "CUDA_ERROR_INVALID_HANDLE"; return CUDA_SUCCESS;
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *pStr = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; return CUDA_SUCCESS;
    case CUDA_ERROR_NOT_SUPPORTED: *pStr = "CUDA_ERROR_NOT_SUPPORTED"; return CUDA_SUCCESS;
    default: *pStr = NULL; return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult CUDAAPI cuGetErrorString(CUresult error, const char** pStr) {
    const char* name = NULL;
    if (cuGetErrorName(error, &name) != CUDA_SUCCESS) {
        *pStr = NULL;
        return CUDA_ERROR_INVALID_VALUE;
    }
    *pStr = "mock CUDA driver";
    return CUDA_SUCCESS;
}
