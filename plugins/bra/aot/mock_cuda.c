/*
 * A mock of the few CUDA driver API calls the generated launcher (bra_launch.c) makes, for testing
 * it on machines without a GPU: link the generated sources against this file instead of libcuda.
 *
 * The mock plays a device of a chosen compute capability, "loads" any image (recording which one),
 * and records every cuLaunchKernel: function, grid, block, shared memory, stream and the raw bytes
 * of each kernel parameter (the layout is set with mock_cuda_set_param_layout). Nothing runs.
 * tests/test_aot.py drives it through ctypes; it is also usable from a C harness.
 *
 * Build: cc -std=c11 -fPIC -shared -I$CUDA/include mock_cuda.c <generated .c files> -o libmock.so
 */
#include <cuda.h>
#include <stdint.h>
#include <string.h>

#define MOCK_MAX_MODULES 4096
#define MOCK_MAX_PARAMS 64

typedef struct mock_cuda_launch {
    const void* image;         /* image of the module the launched function came from */
    const char* function_name; /* name given to cuModuleGetFunction */
    unsigned int grid[3];
    unsigned int block[3];
    unsigned int shared;
    uint64_t stream;
    int n_params;
    uint64_t params[MOCK_MAX_PARAMS]; /* raw bytes of each parameter, zero-extended */
} mock_cuda_launch_t;

static struct {
    int major, minor, shared_optin;
    int no_context;
    int fail_cubin, fail_ptx;
    CUresult fail_launch;
    char layout[MOCK_MAX_PARAMS + 1];
    const void* module_image[MOCK_MAX_MODULES];
    const char* module_function[MOCK_MAX_MODULES];
    int module_live[MOCK_MAX_MODULES];
    int n_modules, live_modules, total_loads, failed_loads;
    int n_launches;
    int n_set_shared;
    int last_set_shared;
    mock_cuda_launch_t last;
} mock;

void mock_cuda_reset(void) {
    memset(&mock, 0, sizeof(mock));
    mock.major = 8;
    mock.minor = 7;
    mock.shared_optin = 166912;
}

void mock_cuda_set_device(int major, int minor, int shared_optin) {
    mock.major = major;
    mock.minor = minor;
    mock.shared_optin = shared_optin;
}

void mock_cuda_set_no_context(int no_context) { mock.no_context = no_context; }

/* Make cuModuleLoadData fail for cubins (ELF images) and/or PTX text. */
void mock_cuda_set_load_failures(int fail_cubin, int fail_ptx) {
    mock.fail_cubin = fail_cubin;
    mock.fail_ptx = fail_ptx;
}

void mock_cuda_set_launch_failure(CUresult result) { mock.fail_launch = result; }

/* One character per kernel parameter: 'p' (8 bytes), 'i' (4-byte int), 'f' (4-byte float). */
int mock_cuda_set_param_layout(const char* layout) {
    size_t n = strlen(layout);
    if (n > MOCK_MAX_PARAMS) {
        return -1;
    }
    memcpy(mock.layout, layout, n + 1);
    return 0;
}

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

CUresult CUDAAPI cuCtxGetDevice(CUdevice* device) {
    if (mock.no_context) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice dev) {
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
    const int index = mock_module_index(module);
    if (index < 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    mock.module_function[index] = name;
    *function = (CUfunction)(uintptr_t)(index + 1);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleUnload(CUmodule module) {
    const int index = mock_module_index(module);
    if (index < 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    mock.module_live[index] = 0;
    mock.live_modules--;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuFuncSetAttribute(CUfunction function, CUfunction_attribute attrib, int value) {
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
