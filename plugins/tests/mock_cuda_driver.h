/*
 * Knobs and records of the mock CUDA driver (mock_cuda_driver.c), the one test double of libcuda that
 * every test without a GPU links instead of the driver: the Python tests of the kernel launcher
 * (through ctypes, tests/kernels/launcher_mock.py), the plugin's host unit test, registration test and
 * integration test, and the C harness. Never linked into libedge_biformer_plugins.so.
 *
 * The mock plays one device of a chosen compute capability with a current context, "loads" any image
 * (recording which one), and records every cuLaunchKernel: function, grid, block, shared memory,
 * stream and the raw bytes of each kernel parameter (layout set with mock_cuda_set_param_layout).
 * Nothing runs. It also plays a few CUDA contexts (MOCK_CUDA_MAX_CONTEXTS, context 0 current at start),
 * each with an ID (cuCtxGetId) that a destroyed and re-created context does not keep although its handle
 * does, cuCtxPushCurrent/cuCtxPopCurrent, and it counts module unloads made in another context than the
 * module's. mock_cuda_reset() restores the defaults the driver starts with: sm_87 (166912 bytes of opt-in
 * shared memory), context 0 current, context IDs available, a CUDA 13.0 driver, no failures, nothing
 * recorded.
 */
#ifndef EDGE_BIFORMER_MOCK_CUDA_DRIVER_H
#define EDGE_BIFORMER_MOCK_CUDA_DRIVER_H

#include <cuda.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOCK_CUDA_MAX_PARAMS 64
#define MOCK_CUDA_MAX_CONTEXTS 4

typedef struct mock_cuda_launch {
    const void* image;         /* image of the module the launched function came from */
    const char* function_name; /* name given to cuModuleGetFunction */
    unsigned int grid[3];
    unsigned int block[3];
    unsigned int shared;
    uint64_t stream;
    int n_params;
    uint64_t params[MOCK_CUDA_MAX_PARAMS]; /* raw bytes of each parameter, zero-extended */
} mock_cuda_launch_t;

/* ---- knobs ---- */
void mock_cuda_reset(void);
/* The device of the context: compute capability and opt-in shared memory per block. */
void mock_cuda_set_device(int major, int minor, int shared_optin);
/* 1: no context is current (cuCtxGetCurrent gives NULL, cuCtxGetDevice fails). */
void mock_cuda_set_no_context(int no_context);
/* A stream that cuStreamGetCtx reports as belonging to another context (NULL: none). */
void mock_cuda_set_foreign_stream(CUstream stream);
/* Make cuModuleLoadData fail for cubins (ELF images) and/or PTX text. */
void mock_cuda_set_load_failures(int fail_cubin, int fail_ptx);
/* What cuLaunchKernel returns (CUDA_SUCCESS: records the launch). */
void mock_cuda_set_launch_failure(CUresult result);
/* One character per kernel parameter: 'p' (8 bytes), 'i' (4-byte int), 'f' (4-byte float). */
int mock_cuda_set_param_layout(const char* layout);
/* Make context `index` current (the push/pop stack is cleared). */
void mock_cuda_select_context(int index);
/* Destroy context `index` (its modules go with it; pushing it fails), or create it again: the same handle
 * with a new ID, as a driver may reuse a destroyed context's handle. */
void mock_cuda_destroy_context(int index);
void mock_cuda_recreate_context(int index);
/* 0: cuCtxGetId answers CUDA_ERROR_NOT_SUPPORTED, as a driver older than CUDA 12 has no such call. */
void mock_cuda_set_context_ids(int available);
/* What cuDriverGetVersion reports (1000*major + 10*minor; default 13000). */
void mock_cuda_set_driver_version(int version);
/* The handle of context `index`. */
CUcontext mock_cuda_context(int index);

/* ---- records ---- */
int mock_cuda_live_modules(void);
int mock_cuda_total_loads(void);
int mock_cuda_failed_loads(void);
int mock_cuda_launch_count(void);
int mock_cuda_set_shared_count(void);
/* Modules unloaded while another context than the one they were loaded in was current. */
int mock_cuda_wrong_context_unloads(void);
/* The last recorded launch; -1 if there was none. */
int mock_cuda_last_launch(mock_cuda_launch_t* out);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_BIFORMER_MOCK_CUDA_DRIVER_H */
