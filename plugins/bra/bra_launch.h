/*
 * C launch interface of the ahead-of-time compiled routed-attention kernels.
 *
 * The implementation is the hand-written launcher kernels/bra_launch.c with the tables and embedded
 * cubin/PTX images that the AOT step generates from the Triton kernel source (see
 * kernels/bra_kernel_tables.h); the TensorRT plugin links it and calls only these functions.
 * CUDA driver API only: no CUDA runtime, no Python at run time.
 *
 * Lifecycle:
 *   - eb_bra_module_load() loads the images for the device of the current CUDA context (the best
 *     cubin for its compute capability, else the newest PTX that JIT-compiles on it). Call it once
 *     per context outside the hot path (the plugin does it when it is attached to an execution
 *     context), and eb_bra_module_unload() when done.
 *   - eb_bra_launch() only selects a variant and calls cuLaunchKernel on the given stream: it does
 *     not allocate, does not synchronise and needs no workspace.
 */
#ifndef EDGE_BIFORMER_BRA_LAUNCH_H
#define EDGE_BIFORMER_BRA_LAUNCH_H

#include <cuda.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum eb_bra_status {
    EB_BRA_SUCCESS = 0,
    EB_BRA_ERR_INVALID_ARGUMENT = 1, /* shapes or attributes break the op contract */
    EB_BRA_ERR_NO_KERNEL_FOR_ARCH = 2, /* no cubin or PTX was built for this GPU */
    EB_BRA_ERR_UNSUPPORTED = 3, /* contract-valid but outside the compiled variants (e.g. head dim) */
    EB_BRA_ERR_CUDA = 4 /* a CUDA driver call failed; see eb_bra_last_cuda_error() */
} eb_bra_status_t;

typedef enum eb_bra_dtype { EB_BRA_FLOAT32 = 0, EB_BRA_FLOAT16 = 1 } eb_bra_dtype_t;

/* Shapes and attributes of one call (see plugins/bra/README.md for their meaning). */
typedef struct eb_bra_params {
    int32_t batch;     /* N */
    int32_t hq, wq;    /* query map height/width */
    int32_t hk, wk;    /* key/value map height/width */
    int32_t c_qk;      /* channels of q and k */
    int32_t c_v;       /* channels of v and o */
    int32_t n_win;     /* S */
    int32_t num_heads; /* M */
    int32_t topk;      /* K */
    float scale;
    eb_bra_dtype_t dtype; /* q, k, v and o */
} eb_bra_params_t;

typedef struct eb_bra_module* eb_bra_module_t;

/* Check the params against the contract and the compiled variants for compute capability
 * sm = major*10 + minor (no CUDA call; usable at network build time without a GPU context). */
eb_bra_status_t eb_bra_check(const eb_bra_params_t* params, int sm);

/* Load the kernel images for the device of the current context. */
eb_bra_status_t eb_bra_module_load(eb_bra_module_t* module);

/* Unload; safe on NULL. */
void eb_bra_module_unload(eb_bra_module_t module);

/* o = BiLevelRoutingAttention(q, k, v, r_idx) on `stream`. Pointers are device pointers to dense
 * NHWC tensors (r_idx: dense [N, S*S, K] int32). */
eb_bra_status_t eb_bra_launch(eb_bra_module_t module, CUstream stream, const eb_bra_params_t* params,
                              CUdeviceptr q, CUdeviceptr k, CUdeviceptr v, CUdeviceptr r_idx,
                              CUdeviceptr o);

/* A static string for a status code. */
const char* eb_bra_status_string(eb_bra_status_t status);

/* The CUresult of the last failed driver call in this thread (CUDA_SUCCESS if none). */
CUresult eb_bra_last_cuda_error(void);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_BIFORMER_BRA_LAUNCH_H */
