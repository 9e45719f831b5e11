/* Knobs and records of fake_bra_launch.c, the test double of the kernel library (bra_launch.h) that the
 * host unit test and the registration test plugin link instead of the AOT kernels. */
#ifndef EDGE_BIFORMER_FAKE_BRA_LAUNCH_H
#define EDGE_BIFORMER_FAKE_BRA_LAUNCH_H

#include "bra_launch.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What eb_bra_module_load/eb_bra_launch return, and what the last launch received. */
extern eb_bra_status_t eb_fake_load_status;
extern eb_bra_status_t eb_fake_launch_status;
extern int eb_fake_modules_loaded; /* live modules: load - unload */
extern int eb_fake_launches;
extern int eb_fake_wrong_context_unloads; /* unloads while another context than the module's was current */
extern eb_bra_params_t eb_fake_last_params;
extern CUstream eb_fake_last_stream;
extern CUdeviceptr eb_fake_last_ptrs[5];

#ifdef __cplusplus
}
#endif

#endif /* EDGE_BIFORMER_FAKE_BRA_LAUNCH_H */
