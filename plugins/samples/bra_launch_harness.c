/*
 * Tiny C harness of the kernel launcher: links it like the plugin does (plugins/bra/kernels/bra_launch.c
 * with the tables and images of the AOT step, against libcuda, the CUDA stubs library, or the mock
 * driver plugins/tests/mock_cuda_driver.c) and checks the BiFormer-T stage shapes at 224x224 with
 * eb_bra_check, which makes no CUDA call.
 *
 *   cc -std=c11 -I plugins/bra -I plugins/bra/kernels -I $AOT -I $CUDA/include \
 *      plugins/samples/bra_launch_harness.c plugins/bra/kernels/bra_launch.c $AOT/bra_kernels.c \
 *      $AOT/bra_images_*.c -L $CUDA/lib64/stubs -lcuda -o harness
 *   ./harness 87        # compute capability to check for (0: shapes only)
 *
 * Exit status 0 when every stage is accepted.
 */
#include "bra_launch.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
    const int sm = argc > 1 ? atoi(argv[1]) : 0;
    /* batch, hq, wq, hk, wk, c_qk, c_v, n_win, num_heads, topk, scale, dtype */
    const eb_bra_params_t stages[3] = {
        {1, 56, 56, 56, 56, 64, 64, 7, 2, 1, 0.125f, EB_BRA_FLOAT16},
        {1, 28, 28, 28, 28, 128, 128, 7, 4, 4, 0.08838835f, EB_BRA_FLOAT16},
        {1, 14, 14, 14, 14, 256, 256, 7, 8, 16, 0.0625f, EB_BRA_FLOAT16},
    };
    int failures = 0;
    for (int i = 0; i < 3; ++i) {
        const eb_bra_status_t status = eb_bra_check(&stages[i], sm);
        printf("stage%d sm_%d: %s\n", i, sm, eb_bra_status_string(status));
        failures += status != EB_BRA_SUCCESS;
    }
    return failures == 0 ? 0 : 1;
}
