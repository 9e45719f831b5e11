/* Knobs of the test doubles (fake_cuda_driver.c, fake_bra_launch.c) used by bra_plugin_host_test.cpp. */
#ifndef EDGE_BIFORMER_FAKE_CUDA_DRIVER_H
#define EDGE_BIFORMER_FAKE_CUDA_DRIVER_H

#include "bra_launch.h"

#include <cuda.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Driver: whether a context is current, its device's compute capability (major*10+minor), and a
 * stream that cuStreamGetCtx reports as belonging to another context. */
extern int eb_fake_context_current;
extern int eb_fake_sm;
extern CUstream eb_fake_stream_context_mismatch;

/* Kernels: what eb_bra_module_load/eb_bra_launch return, and what the last launch received. */
extern eb_bra_status_t eb_fake_load_status;
extern eb_bra_status_t eb_fake_launch_status;
extern int eb_fake_modules_loaded; /* live modules: load - unload */
extern int eb_fake_launches;
extern eb_bra_params_t eb_fake_last_params;
extern CUstream eb_fake_last_stream;
extern CUdeviceptr eb_fake_last_ptrs[5];

#ifdef __cplusplus
}
#endif

#endif /* EDGE_BIFORMER_FAKE_CUDA_DRIVER_H */
